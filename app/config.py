"""All runtime configuration, read once from the environment (and an optional .env file)."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

SUPPORTED_DRIVERS = {"sqlite", "sqlite+pysqlite", "postgresql+psycopg"}
DEFAULT_DATABASE_URL = "sqlite:///./var/saerec.db"
MIN_PRODUCTION_TOKEN_LENGTH = 16
PLACEHOLDER_TOKENS = {
    "admin", "adminadmin", "admintoken", "changeme", "changeit", "default", "example",
    "password", "placeholder", "replaceme", "secret", "test", "testtoken", "token",
    "yourtoken", "yoursecret", "xxxxxxxx",
}  # fmt: skip


class _Group(BaseModel):
    """A read-only view of some Settings fields, under names local to one component.

    Each field's alias is the flat Settings field it is read from, whose environment
    variable is that name in upper case (``threads`` <- ``serve_threads`` <- SERVE_THREADS).
    No field has a default: defaults, bounds and environment names live on `Settings`
    alone, so a group cannot drift from them (tests/test_settings.py checks both).
    """

    model_config = ConfigDict(
        frozen=True, extra="forbid", protected_namespaces=(), use_attribute_docstrings=True
    )

    @classmethod
    def sources(cls) -> dict[str, str]:
        """Each field's name -> the Settings field it is read from."""
        return {name: field.alias or name for name, field in cls.model_fields.items()}


class DatabaseSettings(_Group):
    """The database: the engine and session setup (app/db.py) and the CLI's migrations."""

    url: str = Field(alias="database_url")
    """DATABASE_URL: ``sqlite:///path`` or ``postgresql+psycopg://...`` (normalised)."""
    pool_size: int = Field(alias="db_pool_size")
    """DB_POOL_SIZE: PostgreSQL pool size per process (and as much overflow)."""
    auto_migrate: bool = Field(alias="auto_migrate")
    """AUTO_MIGRATE: `serve`, `import-movielens`, `train` and `worker` migrate first."""

    @property
    def is_sqlite(self) -> bool:
        return self.url.startswith("sqlite")


class ServingSettings(_Group):
    """An API process answering requests: the `Recommender` and the lifespan's timers.

    Two thread counts, for two pools: ``threads`` answers run at once (the executor),
    ``torch_threads`` torch/BLAS threads inside each of them. A training process has its
    own count, `TrainingSettings.torch_threads`.
    """

    model_dir: Path = Field(alias="model_dir")
    """MODEL_DIR: where artifacts are read (and cached, for a remote artifact) from."""
    threads: int = Field(alias="serve_threads")
    """SERVE_THREADS: inference threads per API process (the executor recommendations run
    on, off the event loop): how many batches of answers are computed at once. One is the
    fastest: a second thread only fights the event loop for the GIL."""
    torch_threads: int = Field(alias="serve_torch_threads")
    """SERVE_TORCH_THREADS: torch/BLAS threads *inside one inference*: requests already run
    in parallel on the serve threads, so more only oversubscribes the cores."""
    answer_cache_size: int = Field(alias="answer_cache_size")
    """ANSWER_CACHE_SIZE: answers kept per model version (0 = no answer cache)."""
    model_poll_seconds: float = Field(alias="model_poll_seconds")
    """MODEL_POLL_SECONDS: how often an idle process preloads the active version."""
    model_cache_versions: int = Field(alias="model_cache_versions")
    """MODEL_CACHE_VERSIONS: loaded model versions kept per process (a rollback to one is
    instant)."""
    model_retry_seconds: float = Field(alias="model_retry_seconds")
    """MODEL_RETRY_SECONDS: how soon a version that failed to load is tried again."""
    popular_refresh_seconds: float = Field(alias="popular_refresh_seconds")
    """POPULAR_REFRESH_SECONDS: the least time between rebuilds of the popular fallback list
    (slow rebuilds are spaced further: `Popularity.interval`)."""
    popular_prior_count: float = Field(alias="popular_prior_count")
    """POPULAR_PRIOR_COUNT: ``m`` of the popular list's damped mean."""
    metrics_dir: Path | None = Field(alias="metrics_dir")
    """METRICS_DIR: where `serve --workers N` (N > 1) creates each start's folder for
    prometheus-client's multiprocess mode; None = the system's temporary directory."""


class TrainingSettings(_Group):
    """Training and its jobs: the training use case, the job queue and launcher, the
    retrain schedule (app/jobs/) and `saerec train`."""

    model_dir: Path = Field(alias="model_dir")
    """MODEL_DIR: where artifacts are written (and the active one read, for the gate)."""
    preset: str = Field(alias="train_preset")
    """TRAIN_PRESET: the model preset of `saerec train` and of queued retrains."""
    budget_seconds: float = Field(alias="train_budget_seconds")
    """TRAIN_BUDGET_SECONDS: seconds for a hyper-parameter search before each training
    (0 = train the preset)."""
    max_seconds: float = Field(alias="train_max_seconds")
    """TRAIN_MAX_SECONDS: the most the networks of a training without a search may take:
    each stops at its best epochs so far when its share is spent (`train.STAGE_SHARES`).
    ml-100k needs seconds; the default keeps MovieLens-25M's whole `saerec train` within
    half an hour on 2 cores."""
    torch_threads: int | None = Field(alias="torch_threads")
    """TORCH_THREADS: torch/BLAS threads of a *training* process (None = torch's default,
    the core count); 1 is faster when training shares the cores with an API process."""
    device: str | None = Field(alias="device")
    """DEVICE: ``cuda`` or ``cpu`` (None = cuda when available)."""
    gate_rmse_margin: float = Field(alias="quality_gate_margin")
    """QUALITY_GATE_MARGIN: how much higher a candidate's validation RMSE may be than the
    active model's."""
    gate_ndcg_margin: float = Field(alias="quality_gate_ndcg_margin")
    """QUALITY_GATE_NDCG_MARGIN: how much lower (as a share) its validation NDCG@10 may be
    than the active model's."""
    keep_versions: int = Field(alias="keep_model_versions")
    """KEEP_MODEL_VERSIONS: model versions kept (the active one always) for rollback."""
    run_worker_in_api: bool = Field(alias="run_worker_in_api")
    """RUN_WORKER_IN_API: API processes launch queued training jobs (and check the retrain
    schedule) themselves; false = only `saerec worker` does."""
    retrain_interval_seconds: float | None = Field(alias="retrain_interval_seconds")
    """RETRAIN_INTERVAL_SECONDS: a retrain is due this long after the newest job (any
    trigger) was queued; with no job yet, this long after the launcher first saw ratings."""
    retrain_min_new_ratings: int | None = Field(alias="retrain_min_new_ratings")
    """RETRAIN_MIN_NEW_RATINGS: a retrain is due once the rating count exceeds the newest
    model version's training data (data_size["ratings"]) by this many; with no model, the
    count itself. With both RETRAIN_* set, a retrain is due only when both hold: the
    interval is the least time between retrains. Never while a job is open, nor within 10
    minutes of the end of a job that failed or activated nothing; checked at most once a
    minute (README, Retraining). Both unset = only admins queue retrains."""


GroupT = TypeVar("GroupT", bound=_Group)


class Settings(BaseSettings):
    """One settings class for the server, the CLI and the training worker alike.

    The flat fields are the environment contract: each is read from its name in upper
    case, and holds the only default and bounds. Components read a group, built from
    them on each access: `db` (DatabaseSettings), `serving` (ServingSettings) and
    `training` (TrainingSettings). What the API layer itself reads (the admin token,
    the environment, logging, request limits, CORS) stays here, on the flat fields.
    """

    # hide_input_in_errors: a rejected setting must not print secrets (token, DB password).
    model_config = SettingsConfigDict(
        env_file=".env", extra="ignore", protected_namespaces=(), hide_input_in_errors=True
    )

    # -- the API process and every command (read here, not through a group) --------------
    admin_token: SecretStr | None = None
    environment: Literal["development", "production"] = "development"
    log_level: str = "INFO"
    log_json: bool = False
    max_batch_items: int = Field(default=10_000, ge=1)
    max_body_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    max_query_bytes: int = Field(default=8 * 1024, ge=256)
    cors_origins: list[str] = Field(default_factory=list)

    # -- db: DatabaseSettings ------------------------------------------------------------
    database_url: str = DEFAULT_DATABASE_URL
    db_pool_size: int = Field(default=10, ge=1, le=200)
    auto_migrate: bool = True

    # -- serving and training: ServingSettings, TrainingSettings -------------------------
    model_dir: Path = Path("./var/models")

    # -- serving: ServingSettings (its docstrings say what each one means) -------------
    serve_threads: int = Field(default=1, ge=1, le=64)
    serve_torch_threads: int = Field(default=1, ge=1)
    answer_cache_size: int = Field(default=20_000, ge=0)
    model_poll_seconds: float = Field(default=2.0, gt=0)
    model_cache_versions: int = Field(default=3, ge=1, le=20)
    model_retry_seconds: float = Field(default=30.0, gt=0)
    popular_refresh_seconds: float = Field(default=30.0, gt=0)
    popular_prior_count: float = Field(default=20.0, ge=0)
    metrics_dir: Path | None = None

    # -- training: TrainingSettings (its docstrings say what each one means) ------------
    train_preset: str = "default"
    train_budget_seconds: float = Field(default=0.0, ge=0.0)
    train_max_seconds: float = Field(default=1440.0, gt=0.0)
    torch_threads: int | None = Field(default=None, ge=1)
    device: str | None = None
    quality_gate_margin: float = Field(default=0.02, ge=0.0)
    quality_gate_ndcg_margin: float = Field(default=0.02, ge=0.0, lt=1.0)
    keep_model_versions: int = Field(default=5, ge=1)
    run_worker_in_api: bool = True
    retrain_interval_seconds: float | None = Field(default=None, gt=0)
    retrain_min_new_ratings: int | None = Field(default=None, ge=1)

    @property
    def db(self) -> DatabaseSettings:
        return self._group(DatabaseSettings)

    @property
    def serving(self) -> ServingSettings:
        return self._group(ServingSettings)

    @property
    def training(self) -> TrainingSettings:
        return self._group(TrainingSettings)

    def _group(self, group: type[GroupT]) -> GroupT:
        """Built on each access (not cached): a `model_copy(update=...)` shows at once."""
        return group.model_validate(
            {source: getattr(self, source) for source in group.sources().values()}
        )

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: str) -> str:
        """Fail at start-up, not at the first query, on a URL we cannot serve."""
        try:
            url = make_url(value)
        except ArgumentError as exc:
            raise ValueError(f"DATABASE_URL is not a valid SQLAlchemy URL: {exc}") from None
        if url.drivername in {"postgresql", "postgres"}:
            url = url.set(drivername="postgresql+psycopg")
        if url.drivername not in SUPPORTED_DRIVERS:
            raise ValueError(
                f"DATABASE_URL driver {url.drivername!r} is not supported; "
                "use sqlite:///path or postgresql+psycopg://user@host/db"
            )
        return url.render_as_string(hide_password=False)

    @model_validator(mode="after")
    def _check_admin_token(self) -> Settings:
        """In production a guessable ADMIN_TOKEN is worse than none: refuse to start."""
        token = self.admin_token_value()
        if self.environment != "production" or token is None:
            return self
        normalized = "".join(ch for ch in token.lower() if ch.isalnum())
        if len(token) < MIN_PRODUCTION_TOKEN_LENGTH:
            problem = f"shorter than {MIN_PRODUCTION_TOKEN_LENGTH} characters"
        elif normalized in PLACEHOLDER_TOKENS or any(
            normalized.startswith(p) for p in ("changeme", "replaceme", "yourtoken")
        ):
            problem = "a placeholder value"
        elif len(set(token)) < 6:
            problem = "too repetitive"
        else:
            return self
        raise ValueError(  # never echo the token itself
            f"ADMIN_TOKEN is {problem}; with ENVIRONMENT=production use a long random secret, "
            "e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))'"
        )

    def as_env(self) -> dict[str, str]:
        """These settings as environment variables, for child processes (training jobs)."""
        env: dict[str, str] = {}
        for name, value in self.model_dump(mode="json").items():
            if value is None:
                continue
            if name == "admin_token":
                value = self.admin_token_value()
            env[name.upper()] = value if isinstance(value, str) else json.dumps(value)
        return env

    def admin_token_value(self) -> str | None:
        return self.admin_token.get_secret_value() if self.admin_token else None


@lru_cache
def get_settings() -> Settings:
    return Settings()
