"""Engine and session factory; the only place that knows how to talk to the database."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

from sqlalchemy import CursorResult, Engine, Executable, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings


def _ensure_sqlite_directory(url: str) -> None:
    database = make_url(url).database
    if database and database != ":memory:":
        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)


def _enable_sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    """WAL lets readers run beside the writer; SQLite ignores foreign keys unless asked."""
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def create_db_engine(settings: Settings) -> Engine:
    if settings.is_sqlite:
        _ensure_sqlite_directory(settings.database_url)
        engine = create_engine(
            settings.database_url,
            connect_args={"check_same_thread": False, "timeout": 10},
        )
        event.listen(engine, "connect", _enable_sqlite_pragmas)
        return engine
    return _postgres_engine(settings.database_url, settings.db_pool_size, pool_pre_ping=True)


def create_read_engine(engine: Engine, pool_size: int) -> Engine:
    """The hot path's engine for one read-only statement per checkout: on PostgreSQL
    autocommit, never pinged or rolled back, one round trip instead of three (its caller
    retries a dropped connection once). SQLite: the engine itself."""
    if engine.dialect.name != "postgresql":
        return engine
    return _postgres_engine(
        engine.url, pool_size, pool_reset_on_return=None, isolation_level="AUTOCOMMIT"
    )


def _postgres_engine(url: str | URL, pool_size: int, **options: Any) -> Engine:
    """A PostgreSQL pool of ``pool_size`` (as much overflow) that fails fast."""
    return create_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_timeout=10,
        connect_args={"connect_timeout": 5},
        **options,
    )


def create_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(bind=engine, expire_on_commit=False)


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    with factory() as session, session.begin():
        yield session


def _find_migrations() -> Path:
    """Beside the package in a checkout; in the working directory of an installed image."""
    beside_package = Path(__file__).resolve().parent.parent / "migrations"
    for candidate in (beside_package, Path.cwd() / "migrations"):
        if (candidate / "env.py").is_file():
            return candidate
    return beside_package


MIGRATIONS_DIR = _find_migrations()
PG_MIGRATION_LOCK_KEY = 0x5AE_4EC  # any constant shared by every replica


def upgrade_schema(engine: Engine, revision: str = "head") -> None:
    """Alembic `upgrade head`; on PostgreSQL an advisory lock keeps replicas from racing."""
    from alembic import command
    from alembic.config import Config
    from sqlalchemy import text

    config = Config(str(MIGRATIONS_DIR.parent / "alembic.ini"))
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(
                text("SELECT pg_advisory_xact_lock(:key)"), {"key": PG_MIGRATION_LOCK_KEY}
            )
        config.attributes["connection"] = connection
        command.upgrade(config, revision)


def updated(session: Session, statement: Executable) -> int:
    """How many rows an UPDATE or DELETE touched (typed: ``Result`` has no rowcount)."""
    return cast(CursorResult[Any], session.execute(statement)).rowcount
