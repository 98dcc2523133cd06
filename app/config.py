"""All runtime configuration, read once from the environment (and an optional .env file)."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
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


class Settings(BaseSettings):
    """The one settings class of the server, the CLI and the worker: each field is read from
    its name in upper case and holds its only default and bounds. Figures only a benchmark
    would move are constants beside the code they tune."""

    # hide_input_in_errors: a rejected setting must not print secrets (token, DB password).
    model_config = SettingsConfigDict(
        env_file=".env",
        extra="ignore",
        protected_namespaces=(),
        hide_input_in_errors=True,
        use_attribute_docstrings=True,
    )

    # -- the API -------------------------------------------------------------------------
    admin_token: SecretStr | None = None
    """bearer token of the admin routes (none: they answer 503)."""
    environment: Literal["development", "production"] = "development"
    """production refuses to start with a guessable ADMIN_TOKEN."""
    log_level: str = "INFO"
    log_json: bool = False
    """one JSON object per log line (for a log collector)."""
    max_batch_items: int = Field(default=10_000, ge=1)
    """most ratings in one POST /ratings/batch."""
    max_body_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    max_query_bytes: int = Field(default=8 * 1024, ge=256)
    cors_origins: list[str] = Field(default_factory=list)
    """origins allowed to call the API from a browser (none: no CORS headers)."""

    # -- the database --------------------------------------------------------------------
    database_url: str = DEFAULT_DATABASE_URL
    """``sqlite:///path`` or ``postgresql+psycopg://...`` (normalised)."""
    db_pool_size: int = Field(default=10, ge=1, le=200)
    """PostgreSQL pool size per process (and as much overflow)."""
    auto_migrate: bool = True
    """`serve`, `import-movielens`, `train` and `worker` migrate first."""

    # -- serving -------------------------------------------------------------------------
    model_dir: Path = Path("./var/models")
    """each host's cache of the artifacts (the database holds the stored copy): may be
    deleted at any time."""
    artifact_chunk_bytes: int = Field(default=64 * 2**20, ge=1024, le=512 * 2**20)
    """size of the pieces a model artifact is stored in (one is held in memory at a time)."""
    answer_cache_size: int = Field(default=20_000, ge=0)
    """answers kept per model version (0 = no answer cache): memory against repeat hits."""
    trending_cache_seconds: float = Field(default=10.0, ge=0)
    """how long a process reuses a trending list (0 = every request reads the window)."""
    model_poll_seconds: float = Field(default=2.0, gt=0)
    """how often an idle process looks for a new version to preload."""
    new_movies_refresh_seconds: float = Field(default=60.0, gt=0, le=180)
    """how often a process re-reads the movies added since its model was trained."""
    record_impressions: bool = True
    """record every recommendation answer as an impression (false: nothing is written)."""
    impression_queue_size: int = Field(default=10_000, ge=1, le=1_000_000)
    """impressions a process holds for its writer; past it they are dropped and counted."""
    impression_retention_days: float | None = Field(default=90.0, gt=0)
    """impressions older than this are deleted by each process's writer (None: kept)."""
    attribution_window_seconds: int = Field(default=7 * 86_400, ge=1)
    """how long after an impression a rating of a movie it showed counts for it."""
    experiment_min_impressions: int = Field(default=500, ge=1)
    """impressions each arm needs before an experiment's report gives a verdict."""
    metrics_dir: Path | None = None
    """where `serve --workers N` puts each start's metrics folder (None = the temp dir)."""

    # -- training ------------------------------------------------------------------------
    train_preset: str = "default"
    """the model preset of `saerec train` and of queued retrains."""
    train_budget_seconds: float = Field(default=0.0, ge=0.0)
    """seconds for a hyper-parameter search before each training (0 = train the preset)."""
    train_max_seconds: float = Field(default=1440.0, gt=0.0)
    """the most the networks of a training without a search may take (each stops at its
    best epochs so far)."""
    torch_threads: int | None = Field(default=None, ge=1)
    """torch/BLAS threads of a training process (None = the core count)."""
    device: str | None = None
    """``cuda`` or ``cpu`` for training (None = cuda when available)."""
    quality_gate_margin: float = Field(default=0.02, ge=0.0)
    """how much higher a candidate's validation RMSE may be than the active model's."""
    quality_gate_ndcg_margin: float = Field(default=0.02, ge=0.0, lt=1.0)
    """how much lower (as a share) its validation NDCG@10 may be than the active model's."""
    keep_model_versions: int = Field(default=5, ge=1)
    """model versions kept (the active one always) for rollback."""
    run_worker_in_api: bool = True
    """API processes launch queued training jobs themselves (false: only `saerec worker`)."""
    retrain_interval_seconds: float | None = Field(default=None, gt=0)
    """a retrain is due this long after the newest job (any trigger) was queued."""
    retrain_min_new_ratings: int | None = Field(default=None, ge=1)
    """a retrain is due once the ratings exceed the newest model's training data by this
    many (with both RETRAIN_* set, when both hold)."""

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: str) -> str:
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
