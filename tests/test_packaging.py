"""Dockerfile and compose checks that need no Docker engine (none runs in CI)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from app.cli import cli

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
DOCKERFILE = (ROOT / "Dockerfile").read_text()
SERVICES = COMPOSE["services"]


def _command(service: str) -> list[str]:
    command = SERVICES[service]["command"]
    return command if isinstance(command, list) else command.split()


def _saerec_subcommands(service: str) -> list[str]:
    words = " ".join(_command(service)).replace("&&", " ").split()
    return [words[i + 1] for i, word in enumerate(words[:-1]) if word == "saerec"]


def test_compose_has_the_deployment_roles() -> None:
    assert {"db", "migrate", "api", "worker", "seed"} <= set(SERVICES)
    assert _saerec_subcommands("migrate") == ["migrate"]
    assert _saerec_subcommands("api") == ["serve"]
    assert _saerec_subcommands("worker") == ["worker"]
    assert _saerec_subcommands("seed") == ["import-movielens", "train"]
    assert SERVICES["seed"]["profiles"] == ["seed"]


def test_every_saerec_command_in_compose_exists() -> None:
    for service in ("migrate", "api", "worker", "seed"):
        for name in _saerec_subcommands(service):
            assert name in cli.commands, f"{service} runs unknown `saerec {name}`"


def test_dependencies_point_at_real_services_with_sane_conditions() -> None:
    for name, service in SERVICES.items():
        for target, rule in (service.get("depends_on") or {}).items():
            assert target in SERVICES, f"{name} depends on missing {target}"
            assert rule["condition"] in {"service_healthy", "service_completed_successfully"}
    assert SERVICES["migrate"]["depends_on"]["db"]["condition"] == "service_healthy"
    for role in ("api", "worker", "seed"):
        assert SERVICES[role]["depends_on"]["migrate"]["condition"] == (
            "service_completed_successfully"
        )
    assert "healthcheck" in SERVICES["db"]


def test_named_volumes_are_declared() -> None:
    declared = set(COMPOSE.get("volumes") or {})
    for name, service in SERVICES.items():
        for mount in service.get("volumes", []):
            source = mount.split(":")[0]
            if not source.startswith(("/", ".", "$")):
                assert source in declared, f"{name} mounts undeclared volume {source}"


def test_secrets_have_no_default_and_migrations_run_once() -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    assert re.search(r"ADMIN_TOKEN: \$\{ADMIN_TOKEN:\?", text), "ADMIN_TOKEN must be required"
    assert re.search(r"POSTGRES_PASSWORD:\?", text)
    for role in ("api", "worker"):
        env = SERVICES[role]["environment"]
        assert env["AUTO_MIGRATE"] == "false"  # the migrate service owns the schema
        assert env["DATABASE_URL"].startswith("postgresql+psycopg://")
    assert SERVICES["api"]["environment"]["RUN_WORKER_IN_API"] == "false"


def test_dockerfile_is_multi_stage_cpu_only_and_non_root() -> None:
    stages = re.findall(r"^FROM (\S+)", DOCKERFILE, flags=re.M)
    assert len(stages) == 2 and all("slim" in s for s in stages)
    assert "download.pytorch.org/whl/cpu" in DOCKERFILE and "torch==2.13.0" in DOCKERFILE
    runtime = DOCKERFILE.split("AS runtime", 1)[1]
    assert re.search(r"^USER 10001", runtime, flags=re.M)
    assert "HEALTHCHECK" in runtime and "/healthz" in runtime
    assert not re.search(r"apt-get install|build-essential|gcc", runtime)
    assert re.search(r"^COPY .*migrations", runtime, flags=re.M)  # `saerec migrate` needs them


def test_dockerignore_keeps_data_and_state_out() -> None:
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".venv", "var", "*.pt", ".git", ".env", "u.data"} <= ignored


@pytest.mark.skipif(shutil.which("hadolint") is None, reason="hadolint is not installed")
def test_hadolint_finds_nothing() -> None:
    result = subprocess.run(
        ["hadolint", "--failure-threshold", "info", str(ROOT / "Dockerfile")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
