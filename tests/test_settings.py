"""Settings: one flat class, the environment contract (app/config.py, README
"Configuration"): every variable reaches its field, survives the trip to a training job,
and is documented with its default."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from app.config import Settings

ROOT = Path(__file__).resolve().parents[1]
# every variable, each with a valid value that is not its default
ENV = {
    "DATABASE_URL": "postgresql://saerec@db.example:5432/saerec",
    "DB_POOL_SIZE": "7",
    "AUTO_MIGRATE": "false",
    "MODEL_DIR": "/srv/saerec/models",
    "ARTIFACT_CHUNK_BYTES": "1048576",
    "ANSWER_CACHE_SIZE": "0",
    "TRENDING_CACHE_SECONDS": "2.5",
    "MODEL_POLL_SECONDS": "0.5",
    "NEW_MOVIES_REFRESH_SECONDS": "90",
    "METRICS_DIR": "/run/saerec-metrics",
    "RECORD_IMPRESSIONS": "false",
    "IMPRESSION_QUEUE_SIZE": "500",
    "IMPRESSION_RETENTION_DAYS": "30",
    "ATTRIBUTION_WINDOW_SECONDS": "3600",
    "EXPERIMENT_MIN_IMPRESSIONS": "50",
    "TRAIN_PRESET": "fast",
    "TRAIN_BUDGET_SECONDS": "60",
    "TRAIN_MAX_SECONDS": "900",
    "TORCH_THREADS": "6",
    "DEVICE": "cpu",
    "QUALITY_GATE_MARGIN": "0.1",
    "QUALITY_GATE_NDCG_MARGIN": "0.05",
    "KEEP_MODEL_VERSIONS": "8",
    "RUN_WORKER_IN_API": "false",
    "RETRAIN_INTERVAL_SECONDS": "3600",
    "RETRAIN_MIN_NEW_RATINGS": "1000",
    "ADMIN_TOKEN": "k3Jd9-x_Qp2LmZ7vT0aRwY",
    "ENVIRONMENT": "production",
    "LOG_LEVEL": "DEBUG",
    "LOG_JSON": "true",
    "MAX_BATCH_ITEMS": "50",
    "MAX_BODY_BYTES": "2048",
    "MAX_QUERY_BYTES": "512",
    "CORS_ORIGINS": '["https://a.example", "https://b.example"]',
}


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No setting comes from the environment the tests run in (CI sets DATABASE_URL...)."""
    for name in Settings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)
    return monkeypatch


def from_env(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> Settings:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return Settings(_env_file=None)


def test_the_fixture_covers_every_setting() -> None:
    assert {name.lower() for name in ENV} == set(Settings.model_fields)


@pytest.mark.parametrize("variable", sorted(ENV))
def test_each_variable_reaches_its_field_alone(
    clean_env: pytest.MonkeyPatch, variable: str
) -> None:
    defaults = Settings(_env_file=None)
    changed = from_env(clean_env, {variable: ENV[variable]})
    name = variable.lower()
    assert getattr(changed, name) != getattr(defaults, name), f"{variable} was ignored"
    others = [other for other in Settings.model_fields if other != name]
    assert [getattr(changed, o) for o in others] == [getattr(defaults, o) for o in others]


def test_documented_variables_are_read(clean_env: pytest.MonkeyPatch) -> None:
    settings = from_env(clean_env, ENV)
    assert settings.database_url == "postgresql+psycopg://saerec@db.example:5432/saerec"
    assert settings.db_pool_size == 7 and not settings.is_sqlite
    assert settings.model_dir == Path("/srv/saerec/models")
    assert (settings.answer_cache_size, settings.model_poll_seconds) == (0, 0.5)
    assert settings.metrics_dir == Path("/run/saerec-metrics")
    assert (settings.train_preset, settings.train_budget_seconds) == ("fast", 60)
    assert (settings.torch_threads, settings.train_max_seconds) == (6, 900.0)
    assert (settings.quality_gate_margin, settings.quality_gate_ndcg_margin) == (0.1, 0.05)
    assert (settings.keep_model_versions, settings.run_worker_in_api) == (8, False)
    assert (settings.retrain_interval_seconds, settings.retrain_min_new_ratings) == (3600, 1000)


def test_every_setting_says_what_it_is_for_or_is_obvious() -> None:
    """Each field carries its meaning where it is declared (the one declaration)."""
    obvious = {"log_level", "max_body_bytes", "max_query_bytes"}
    for name, field in Settings.model_fields.items():
        assert field.description or name in obvious, f"{name} has no docstring"


def test_as_env_round_trips(clean_env: pytest.MonkeyPatch) -> None:
    """Training jobs get their settings as environment variables (`JobLauncher`)."""
    original = from_env(clean_env, ENV)
    env = original.as_env()
    for name in Settings.model_fields:
        clean_env.delenv(name.upper(), raising=False)
    copy = from_env(clean_env, env)
    assert copy.model_dump() == original.model_dump()
    assert copy.admin_token_value() == ENV["ADMIN_TOKEN"]


def test_defaults_round_trip_through_as_env(clean_env: pytest.MonkeyPatch) -> None:
    original = Settings(_env_file=None)
    assert from_env(clean_env, original.as_env()).model_dump() == original.model_dump()


def _readme_rows() -> list[list[str]]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    return [[cell.strip() for cell in row.strip("|").split(" | ")] for row in rows]


def _readme_default(cell: str, default: Any) -> None:
    literal = re.fullmatch(r"`([^`]*)`", cell)
    if literal is None:  # prose: "none", "auto", "torch's default", "system temp dir"
        assert default is None, f"README says {cell!r}; the default is {default!r}"
    elif isinstance(default, bool):
        assert literal.group(1) == json.dumps(default)
    elif isinstance(default, int | float):
        assert float(literal.group(1)) == default
    elif isinstance(default, Path):
        assert Path(literal.group(1)) == default
    elif isinstance(default, list):
        assert json.loads(literal.group(1)) == default
    else:
        assert literal.group(1) == default


def test_readme_table_matches_the_settings() -> None:
    """Every variable once, and its default as app/config.py has it."""
    defaults = Settings.model_construct()  # defaults only: no environment, no .env
    documented: list[str] = []
    for variable_cell, default_cell, _meaning in _readme_rows():
        variables = [v.lower() for v in re.findall(r"`([A-Z_]+)`", variable_cell)]
        documented += variables
        cells = default_cell.split(" / ")
        assert len(cells) == len(variables), variable_cell
        for variable, cell in zip(variables, cells, strict=True):
            _readme_default(cell, getattr(defaults, variable))
    assert sorted(documented) == sorted(Settings.model_fields)
