"""Shared fixtures: every test gets an isolated, migrated database on each backend.

SQLite always runs. PostgreSQL runs when TEST_DATABASE_URL points at a server we may
create databases on (scripts/test.sh sets it); each pytest session creates its own
database there and drops it at the end, and each test starts from empty tables.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url

from app.config import Settings
from app.db import create_db_engine, upgrade_schema
from app.main import create_app
from app.models import Base

ADMIN_TOKEN = "test-admin-token-0123456789abcdef"
BACKENDS = ["sqlite", "postgresql"]


def movielens_dir() -> Path | None:
    """ml-100k from MOVIELENS_DIR or ../shared/data beside the checkout; None when absent."""
    candidates = [os.environ.get("MOVIELENS_DIR")]
    candidates.append(str(Path(__file__).resolve().parents[2] / "shared" / "data" / "ml-100k"))
    for candidate in candidates:
        if candidate and (Path(candidate) / "u.data").is_file():
            return Path(candidate)
    return None


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Migrate once, copy the file per test: isolation without paying Alembic each time."""
    path = tmp_path_factory.mktemp("sqlite-template") / "template.db"
    engine = create_db_engine(Settings(database_url=f"sqlite:///{path}"))
    upgrade_schema(engine)
    engine.dispose()
    return path


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    admin_url = os.environ.get("TEST_DATABASE_URL")
    if not admin_url:
        if os.environ.get("REQUIRE_POSTGRES"):
            pytest.fail("REQUIRE_POSTGRES is set but TEST_DATABASE_URL is not")
        pytest.skip("PostgreSQL tests need TEST_DATABASE_URL (scripts/test.sh sets it)")
    admin = make_url(Settings(database_url=admin_url).database_url)
    name = f"saerec_test_{uuid.uuid4().hex[:10]}"
    server = create_engine(admin, isolation_level="AUTOCOMMIT")
    with server.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = admin.set(database=name).render_as_string(hide_password=False)
    engine = create_db_engine(Settings(database_url=url))
    upgrade_schema(engine)
    engine.dispose()
    yield url
    with server.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    server.dispose()


def _truncate_all(url: str) -> None:
    engine = create_db_engine(Settings(database_url=url))
    tables = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    engine.dispose()


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        path = tmp_path / "saerec.db"
        shutil.copy(request.getfixturevalue("sqlite_template"), path)
        return f"sqlite:///{path}"
    url = request.getfixturevalue("postgres_url")
    _truncate_all(url)
    return url


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    return Settings(
        database_url=database_url,
        model_dir=tmp_path / "models",
        admin_token=ADMIN_TOKEN,
        auto_migrate=False,
        log_level="WARNING",
        _env_file=None,
    )


@pytest.fixture
def engine(settings: Settings) -> Iterator[Engine]:
    engine = create_db_engine(settings)
    yield engine
    engine.dispose()


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings), raise_server_exceptions=False) as test_client:
        yield test_client


@pytest.fixture
def admin_headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Say whether PostgreSQL was used: a run that silently skipped it looks green too."""
    outcomes: dict[str, int] = {}
    for outcome in ("passed", "failed", "error", "skipped"):
        for report in terminalreporter.stats.get(outcome, []):
            if getattr(report, "when", "call") in ("call", "setup") and "postgresql" in getattr(
                report, "nodeid", ""
            ):
                outcomes[outcome] = outcomes.get(outcome, 0) + 1
    ran = outcomes.get("passed", 0) + outcomes.get("failed", 0) + outcomes.get("error", 0)
    if ran:
        where = make_url(os.environ.get("TEST_DATABASE_URL", "")).render_as_string(
            hide_password=True
        )
        line = f"PostgreSQL: used ({where}), " + ", ".join(
            f"{n} {o}" for o, n in sorted(outcomes.items())
        )
    elif outcomes.get("skipped"):
        line = f"PostgreSQL: NOT used, {outcomes['skipped']} tests skipped (no TEST_DATABASE_URL)"
    else:
        line = "PostgreSQL: no database tests selected"
    terminalreporter.write_sep("-", line)
