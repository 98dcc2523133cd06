"""Settings: the flat environment contract and the db / serving / training groups built
from it (app/config.py, README "Configuration")."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from pydantic_core import PydanticUndefined

from app.config import DatabaseSettings, ServingSettings, Settings, TrainingSettings

ROOT = Path(__file__).resolve().parents[1]
GROUPS: dict[str, type[DatabaseSettings | ServingSettings | TrainingSettings]] = {
    "db": DatabaseSettings,
    "serving": ServingSettings,
    "training": TrainingSettings,
}
# read by the API layer from Settings itself, in no group
UNGROUPED = {
    "admin_token",
    "environment",
    "log_level",
    "log_json",
    "max_batch_items",
    "max_body_bytes",
    "max_query_bytes",
    "cors_origins",
}
# every grouped variable, each with a valid value that is not its default
GROUPED_ENV = {
    "DATABASE_URL": "postgresql://saerec@db.example:5432/saerec",
    "DB_POOL_SIZE": "7",
    "AUTO_MIGRATE": "false",
    "MODEL_DIR": "/srv/saerec/models",
    "SERVE_THREADS": "5",
    "SERVE_TORCH_THREADS": "3",
    "ANSWER_CACHE_SIZE": "0",
    "MODEL_POLL_SECONDS": "0.5",
    "MODEL_CACHE_VERSIONS": "4",
    "MODEL_RETRY_SECONDS": "9",
    "POPULAR_REFRESH_SECONDS": "11",
    "POPULAR_PRIOR_COUNT": "3.5",
    "METRICS_DIR": "/run/saerec-metrics",
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
}
UNGROUPED_ENV = {
    "ADMIN_TOKEN": "k3Jd9-x_Qp2LmZ7vT0aRwY",
    "ENVIRONMENT": "production",
    "LOG_LEVEL": "DEBUG",
    "LOG_JSON": "true",
    "MAX_BATCH_ITEMS": "50",
    "MAX_BODY_BYTES": "2048",
    "MAX_QUERY_BYTES": "512",
    "CORS_ORIGINS": '["https://a.example", "https://b.example"]',
}
GROUP_FIELDS = [
    (group, name, source) for group, cls in GROUPS.items() for name, source in cls.sources().items()
]


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


def test_every_setting_is_in_a_group_or_deliberately_in_none() -> None:
    grouped = {source for _, _, source in GROUP_FIELDS}
    assert grouped.isdisjoint(UNGROUPED)
    assert grouped | UNGROUPED == set(Settings.model_fields)
    assert {name.lower() for name in GROUPED_ENV} == grouped  # the fixtures below cover all
    assert {name.lower() for name in UNGROUPED_ENV} == UNGROUPED


@pytest.mark.parametrize("cls", GROUPS.values(), ids=GROUPS.keys())
def test_groups_have_no_defaults_of_their_own(cls: type[Any]) -> None:
    """A default belongs on Settings alone: one on a group field could drift from it."""
    for name, field in cls.model_fields.items():
        assert field.is_required(), f"{cls.__name__}.{name} has a default"
        assert field.default is PydanticUndefined and field.default_factory is None


@pytest.mark.parametrize(("group", "name", "source"), GROUP_FIELDS)
def test_group_fields_name_their_setting_and_variable(group: str, name: str, source: str) -> None:
    field = GROUPS[group].model_fields[name]
    assert source in Settings.model_fields, f"{group}.{name} reads an unknown setting"
    assert field.description and field.description.startswith(f"{source.upper()}: "), (
        f"{group}.{name}'s docstring should begin with its variable, {source.upper()}"
    )


def test_documented_variables_populate_the_groups(clean_env: pytest.MonkeyPatch) -> None:
    settings = from_env(clean_env, GROUPED_ENV)
    assert settings.db == DatabaseSettings.model_validate(
        {
            "database_url": "postgresql+psycopg://saerec@db.example:5432/saerec",
            "db_pool_size": 7,
            "auto_migrate": False,
        }
    )
    assert settings.db.pool_size == 7 and not settings.db.is_sqlite
    serving = settings.serving
    assert (serving.threads, serving.torch_threads, serving.answer_cache_size) == (5, 3, 0)
    assert serving.model_dir == Path("/srv/saerec/models")
    assert serving.metrics_dir == Path("/run/saerec-metrics")
    assert (serving.model_poll_seconds, serving.model_cache_versions) == (0.5, 4)
    assert serving.model_retry_seconds == 9.0
    assert (serving.popular_refresh_seconds, serving.popular_prior_count) == (11.0, 3.5)
    training = settings.training
    assert (training.preset, training.budget_seconds, training.torch_threads) == ("fast", 60, 6)
    assert training.max_seconds == 900.0
    assert (training.device, training.model_dir) == ("cpu", Path("/srv/saerec/models"))
    assert (training.gate_rmse_margin, training.gate_ndcg_margin) == (0.1, 0.05)
    assert (training.keep_versions, training.run_worker_in_api) == (8, False)
    assert (training.retrain_interval_seconds, training.retrain_min_new_ratings) == (3600, 1000)


@pytest.mark.parametrize(("group", "name", "source"), GROUP_FIELDS)
def test_each_variable_reaches_its_group_field(
    clean_env: pytest.MonkeyPatch, group: str, name: str, source: str
) -> None:
    defaults = getattr(Settings(_env_file=None), group)
    changed = getattr(from_env(clean_env, {source.upper(): GROUPED_ENV[source.upper()]}), group)
    assert getattr(changed, name) != getattr(defaults, name), f"{source.upper()} was ignored"
    others = [other for other in type(defaults).model_fields if other != name]
    assert [getattr(changed, o) for o in others] == [getattr(defaults, o) for o in others]


@pytest.mark.parametrize(("group", "name", "source"), GROUP_FIELDS)
def test_model_copy_of_a_flat_field_shows_in_its_group(
    clean_env: pytest.MonkeyPatch, group: str, name: str, source: str
) -> None:
    """Tests (and the benches) adjust settings with model_copy(update={flat name: ...})."""
    configured = from_env(clean_env, GROUPED_ENV)
    base = Settings(_env_file=None)
    before = getattr(getattr(base, group), name)
    copied = base.model_copy(update={source: getattr(configured, source)})
    assert getattr(getattr(copied, group), name) == getattr(getattr(configured, group), name)
    assert getattr(getattr(base, group), name) == before  # the original is untouched


def test_groups_are_read_only() -> None:
    settings = Settings(_env_file=None)
    with pytest.raises(ValidationError, match="frozen"):
        settings.serving.threads = 8  # type: ignore[misc]
    values = {source: getattr(settings, source) for source in ServingSettings.sources().values()}
    assert ServingSettings.model_validate(values) == settings.serving
    with pytest.raises(ValidationError, match="extra"):  # no unknown names, no typos
        ServingSettings.model_validate({**values, "serve_thread": 3})


def test_as_env_round_trips_to_the_same_groups(clean_env: pytest.MonkeyPatch) -> None:
    """Training jobs get their settings as environment variables (`JobLauncher`)."""
    original = from_env(clean_env, {**GROUPED_ENV, **UNGROUPED_ENV})
    env = original.as_env()
    for name in Settings.model_fields:
        clean_env.delenv(name.upper(), raising=False)
    copy = from_env(clean_env, env)
    assert (copy.db, copy.serving, copy.training) == (
        original.db,
        original.serving,
        original.training,
    )
    assert copy.model_dump() == original.model_dump()
    assert copy.admin_token_value() == UNGROUPED_ENV["ADMIN_TOKEN"]


def test_defaults_round_trip_through_as_env(clean_env: pytest.MonkeyPatch) -> None:
    original = Settings(_env_file=None)
    copy = from_env(clean_env, original.as_env())
    assert (copy.db, copy.serving, copy.training) == (
        original.db,
        original.serving,
        original.training,
    )


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
    """Every variable once, what reads it, and its default as app/config.py has it."""
    defaults = Settings.model_construct()  # defaults only: no environment, no .env
    read_as: dict[str, set[str]] = {name: set() for name in Settings.model_fields}
    for group, name, source in GROUP_FIELDS:
        read_as[source].add(f"{group}.{name}")
    for name in UNGROUPED:
        read_as[name].add(f"settings.{name}")
    documented: list[str] = []
    for variable_cell, read_as_cell, default_cell, _meaning in _readme_rows():
        variables = [v.lower() for v in re.findall(r"`([A-Z_]+)`", variable_cell)]
        documented += variables
        assert set(re.findall(r"`([a-z_.]+)`", read_as_cell)) == set().union(
            *(read_as[v] for v in variables)
        ), variable_cell
        cells = default_cell.split(" / ")
        assert len(cells) == len(variables), variable_cell
        for variable, cell in zip(variables, cells, strict=True):
            _readme_default(cell, getattr(defaults, variable))
    assert sorted(documented) == sorted(Settings.model_fields)
