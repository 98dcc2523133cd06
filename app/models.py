"""ORM schema. Every change here needs an Alembic revision in migrations/versions."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

RATING_VALUES = tuple(step / 2 for step in range(1, 11))  # 0.5, 1.0, ... 5.0
RATING_CHECK = "rating IN (" + ", ".join(f"{v:.1f}" for v in RATING_VALUES) + ")"


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_aware(moment: datetime) -> datetime:
    """SQLite hands back naive datetimes; every stored one is UTC (`utcnow`)."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Movie(Base):
    __tablename__ = "movies"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    title: Mapped[str] = mapped_column(String(500))
    year: Mapped[int | None] = mapped_column(Integer)
    # Withdrawn, unlicensed or unreleased: kept with its ratings, never recommended.
    hidden: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))
    genres: Mapped[list[MovieGenre]] = relationship(
        back_populates="movie",
        cascade="all, delete-orphan",
        lazy="selectin",
        order_by="MovieGenre.genre",
    )

    @property
    def genre_names(self) -> list[str]:
        return [g.genre for g in self.genres]


class MovieGenre(Base):
    """A table, not a delimited string, so the genre filter is an indexed lookup."""

    __tablename__ = "movie_genres"

    movie_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("movies.id", ondelete="CASCADE"), primary_key=True
    )
    genre: Mapped[str] = mapped_column(String(64), primary_key=True)
    movie: Mapped[Movie] = relationship(back_populates="genres")

    __table_args__ = (Index("ix_movie_genres_genre", "genre", "movie_id"),)


# Every recommendation request reads the hidden ids: a partial index keeps that read the
# size of the hidden set, not of the catalog.
Index(
    "ix_movies_hidden",
    Movie.id,
    sqlite_where=text("hidden = 1"),
    postgresql_where=text("hidden"),
)


class Dismissal(Base):
    """A "not interested" (it does not feed the model), keyed like ratings for the read."""

    __tablename__ = "dismissals"

    user_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    movie_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("movies.id", ondelete="CASCADE"), primary_key=True
    )
    dismissed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Rating(Base):
    """One user's stars for one movie; (user_id, movie_id) is the key, so writes upsert."""

    __tablename__ = "ratings"

    user_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    movie_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("movies.id", ondelete="CASCADE"), primary_key=True
    )
    rating: Mapped[float] = mapped_column(Float)
    timestamp: Mapped[int] = mapped_column(BigInteger)

    __table_args__ = (
        CheckConstraint(RATING_CHECK, name="rating_half_stars"),
        Index("ix_ratings_movie_id", "movie_id"),
        # Trending reads the ratings of the last days only: a range of this index, which
        # holds what it aggregates (movie, stars), so no row is visited (migration 0008).
        Index("ix_ratings_timestamp", "timestamp", "movie_id", "rating"),
        # SQLite keeps the rows in key order: a user's ratings, the hot path's read, are
        # one contiguous range (migration 0006).
        {"sqlite_with_rowid": False},
    )


def unique_where(name: str, column: str, condition: str) -> Index:
    """A unique index over the rows that meet `condition`: "one of these at a time",
    whichever process or replica writes."""
    where = text(condition)
    return Index(name, column, unique=True, sqlite_where=where, postgresql_where=where)


JOB_STATUSES = ("queued", "running", "succeeded", "failed")
OPEN_JOB_STATUSES = ("queued", "running")
_OPEN_JOB = "status IN ('queued', 'running')"


class ModelVersion(Base):
    """The registry: every trained model, its metrics, and which one serves (exactly one)."""

    __tablename__ = "model_versions"

    version: Mapped[str] = mapped_column(String(64), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON)
    data_size: Mapped[dict[str, Any]] = mapped_column(JSON)
    data_fingerprint: Mapped[str] = mapped_column(String(128))
    # Where the training process wrote it; every process serves its own MODEL_DIR's copy.
    artifact_path: Mapped[str] = mapped_column(String(1000))
    # The artifact itself lives in model_artifact_chunks (the one stored copy, so replicas
    # on other hosts need no shared volume); these say what the chunks must add up to.
    artifact_sha256: Mapped[str | None] = mapped_column(String(64))
    artifact_bytes: Mapped[int | None] = mapped_column(BigInteger)
    is_active: Mapped[bool] = mapped_column(Boolean, default=False)
    activated_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        # A unique index over the active rows only: two active versions cannot exist,
        # whichever process or replica tries.
        Index(
            "uq_model_versions_single_active",
            "is_active",
            unique=True,
            sqlite_where=text("is_active = 1"),
            postgresql_where=text("is_active"),
        ),
    )


class ModelArtifactChunk(Base):
    """One checksummed piece of a version's artifact: PostgreSQL refuses a value over 1 GB,
    and a chunk is all a writer or reader holds in memory."""

    __tablename__ = "model_artifact_chunks"

    version: Mapped[str] = mapped_column(
        String(64), ForeignKey("model_versions.version", ondelete="CASCADE"), primary_key=True
    )
    chunk_index: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    data: Mapped[bytes] = mapped_column(LargeBinary)
    sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(BigInteger)


class TrainingJob(Base):
    """A retrain request and its progress; the row is the only coordination between processes."""

    __tablename__ = "training_jobs"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    queue: Mapped[str] = mapped_column(String(32), default="default")
    # who asked: "admin" (POST /admin/retrain, `saerec` commands) or "schedule"
    trigger: Mapped[str] = mapped_column(
        String(16), default="admin", server_default=text("'admin'")
    )
    status: Mapped[str] = mapped_column(String(16), default="queued")
    overrides: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # the model config resolved from the overrides when queued (null: queued before 0004)
    config: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    epoch: Mapped[int] = mapped_column(Integer, default=0)
    epochs: Mapped[int] = mapped_column(Integer, default=0)
    phase: Mapped[str | None] = mapped_column(String(32))
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    model_version: Mapped[str | None] = mapped_column(String(64))
    error: Mapped[str | None] = mapped_column(Text)
    worker: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        CheckConstraint(
            "status IN ('queued', 'running', 'succeeded', 'failed')", name="known_status"
        ),
        CheckConstraint("\"trigger\" IN ('admin', 'schedule')", name="known_trigger"),
        # One open (queued or running) job per queue, enforced by the database itself.
        unique_where("uq_training_jobs_single_open", "queue", _OPEN_JOB),
        Index("ix_training_jobs_status", "status", "created_at"),
    )


class Impression(Base):
    """One recommendation answer as shown (append-only, pruned by age). Its movies are one
    text column (``"12,7,301"``): a row per movie in a (user, movie) index took most of the
    writer's time. `shown_ms` is `shown_at` in unix milliseconds, an integer both databases
    compare with `ratings.timestamp`."""

    __tablename__ = "impressions"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)  # the recommendation_id
    user_id: Mapped[int | None] = mapped_column(BigInteger)  # None: a session, a movie list
    model_version: Mapped[str | None] = mapped_column(String(64))
    strategy: Mapped[str] = mapped_column(String(16))
    experiment_id: Mapped[str | None] = mapped_column(String(36))
    arm: Mapped[str | None] = mapped_column(String(16))
    shown_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    shown_ms: Mapped[int] = mapped_column(BigInteger)
    movie_ids: Mapped[str] = mapped_column(Text)  # comma-separated, in the order shown

    __table_args__ = (
        # the online figures of a version since a time; the retention prune (a range)
        Index("ix_impressions_version_shown", "model_version", "shown_at"),
        Index("ix_impressions_experiment", "experiment_id", "arm"),
        Index("ix_impressions_shown_at", "shown_at"),
        # attribution: a user's impressions around a rating
        Index("ix_impressions_user_shown", "user_id", "shown_ms"),
    )


_RUNNING = "status = 'running'"


class Experiment(Base):
    """A candidate version served to a share of the users beside the active one. No foreign
    keys: a finished experiment keeps naming versions pruned since."""

    __tablename__ = "experiments"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    control: Mapped[str] = mapped_column(String(64))
    candidate: Mapped[str] = mapped_column(String(64))
    share: Mapped[float] = mapped_column(Float)
    status: Mapped[str] = mapped_column(String(16), default="running")
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    stopped_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        CheckConstraint("status IN ('running', 'stopped', 'promoted')", name="known_status"),
        CheckConstraint("share > 0 AND share < 1", name="share_between_0_and_1"),
        # One running experiment, whichever process or replica starts one.
        unique_where("uq_experiments_single_running", "status", _RUNNING),
        Index("ix_experiments_started_at", "started_at"),
    )
