"""Time the MovieLens import on a fresh SQLite file and a fresh PostgreSQL database.

Usage: .venv/bin/python scripts/bench_import.py [PATH] [--pg-url URL] [--skip-postgres]

PATH defaults to $MOVIELENS_DIR, then ../shared/data/ml-100k beside the checkout. The
PostgreSQL database is created on the server at --pg-url under a random name, migrated,
and dropped afterwards. Prints one JSON object; exit status 1 if a backend failed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from sqlalchemy import create_engine, func, select, text  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

from app.config import Settings  # noqa: E402
from app.db import create_db_engine, upgrade_schema  # noqa: E402
from app.models import Rating  # noqa: E402
from app.movielens.importer import import_movielens  # noqa: E402

DEFAULT_PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


def default_dataset() -> Path:
    """Same lookup as the tests: MOVIELENS_DIR, else the shared copy beside the repo."""
    env = os.environ.get("MOVIELENS_DIR")
    return Path(env) if env else REPO.parent / "shared" / "data" / "ml-100k"


def timed_import(database_url: str, dataset: Path) -> dict[str, Any]:
    """Migrate (untimed), then time one import and check the rows really landed."""
    engine = create_db_engine(Settings(database_url=database_url, _env_file=None))
    try:
        upgrade_schema(engine)
        started = time.perf_counter()
        report = import_movielens(engine, dataset)
        seconds = time.perf_counter() - started
        with engine.connect() as conn:
            stored = conn.scalar(select(func.count()).select_from(Rating)) or 0
    finally:
        engine.dispose()
    return {
        "seconds": round(seconds, 3),
        "ratings_per_second": round(report.ratings_added / seconds) if seconds else None,
        "movies_imported": report.movies_added,
        "ratings_imported": report.ratings_added,
        "ratings_in_table": stored,
        "skipped": report.skipped,
    }


def bench_sqlite(dataset: Path) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="saerec-bench-") as folder:
        return timed_import(f"sqlite:///{Path(folder) / 'bench.db'}", dataset)


def bench_postgres(dataset: Path, server_url: str) -> dict[str, Any]:
    """A throwaway database, so the bench never touches real data and always starts empty."""
    admin = make_url(Settings(database_url=server_url, _env_file=None).database_url)
    name = f"saerec_bench_{uuid.uuid4().hex[:10]}"
    server = create_engine(admin, isolation_level="AUTOCOMMIT")
    try:
        with server.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        try:
            url = admin.set(database=name).render_as_string(hide_password=False)
            return timed_import(url, dataset)
        finally:
            with server.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        server.dispose()


def run_backend(bench: Any, *args: Any) -> dict[str, Any]:
    """One backend failing (say, no PostgreSQL server) must not hide the other's numbers."""
    try:
        return bench(*args)
    except Exception as exc:  # reported in the JSON, not swallowed
        return {"error": f"{type(exc).__name__}: {exc}"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", nargs="?", type=Path, default=None, help="MovieLens folder/zip")
    parser.add_argument("--pg-url", default=DEFAULT_PG_URL, help="server to create the db on")
    parser.add_argument("--skip-postgres", action="store_true")
    args = parser.parse_args(argv)
    dataset = args.path or default_dataset()

    results: dict[str, Any] = {"dataset": str(dataset), "sqlite": {}, "postgresql": None}
    results["sqlite"] = run_backend(bench_sqlite, dataset)
    if not args.skip_postgres:
        results["postgresql"] = run_backend(bench_postgres, dataset, args.pg_url)
    sqlite_s = results["sqlite"].get("seconds")
    pg_s = (results["postgresql"] or {}).get("seconds")
    results["ratio_postgres_to_sqlite"] = round(pg_s / sqlite_s, 2) if pg_s and sqlite_s else None
    print(json.dumps(results, indent=2))
    failed = any("error" in (r or {}) for r in (results["sqlite"], results["postgresql"]))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
