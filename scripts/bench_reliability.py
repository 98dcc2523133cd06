#!/usr/bin/env python
"""Reliability benchmark: the CI reliability scenarios at a larger size. Prints JSON.

- concurrency: many writers upserting overlapping (user, movie) pairs through the API,
  batches and a MovieLens-format import beside single writes; rows lost, duplicates,
  final values that no writer wrote.
- faults: the database cut (through a localhost proxy; the server itself is never
  stopped) under load; the training process killed with SIGKILL mid-epoch (PostgreSQL
  and SQLite); the active artifact corrupted on disk and in the database. Recovery
  seconds for each.
- fuzz: schemathesis over every operation with more examples than CI.

Needs a PostgreSQL server we may create databases on (default: the local one the
tests use); each run works in its own throwaway database and drops it. A few minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fastapi.testclient import TestClient  # noqa: E402
from sqlalchemy import Engine, create_engine, text, update  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402
from sqlalchemy.orm import Session  # noqa: E402

from app.config import Settings  # noqa: E402
from app.db import create_db_engine, upgrade_schema  # noqa: E402
from app.main import create_app  # noqa: E402
from app.models import ModelVersion  # noqa: E402
from app.movielens.importer import import_movielens  # noqa: E402
from tests.reliability_helpers import (  # noqa: E402
    duplicate_rating_pairs,
    ratings_snapshot,
    run_together,
)

TOKEN = "bench-reliability-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
HALF_STARS = [x / 2 for x in range(1, 11)]
DEFAULT_SERVER = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


class Counter:
    """Requests and 5xx answers across threads (503 during an outage is counted apart)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests = 0
        self.server_errors = 0
        self.unavailable = 0

    def add(self, status: int) -> None:
        with self.lock:
            self.requests += 1
            if status == 503:
                self.unavailable += 1
            elif status >= 500:
                self.server_errors += 1


COUNT = Counter()


def call(client: TestClient, method: str, url: str, **kwargs: Any) -> Any:
    response = client.request(method, url, **kwargs)
    COUNT.add(response.status_code)
    return response


# -- databases -----------------------------------------------------------------------------
@contextmanager
def postgres_database(server_url: str) -> Iterator[str]:
    admin = make_url(Settings(database_url=server_url, _env_file=None).database_url)
    name = f"bench_reliability_{uuid.uuid4().hex[:8]}"
    server = create_engine(admin, isolation_level="AUTOCOMMIT")
    with server.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield admin.set(database=name).render_as_string(hide_password=False)
    finally:
        with server.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        server.dispose()


def fresh_settings(url: str, work: Path, **extra: Any) -> tuple[Settings, Engine]:
    values: dict[str, Any] = {
        "database_url": url,
        "model_dir": work / f"models-{uuid.uuid4().hex[:6]}",
        "admin_token": TOKEN,
        "auto_migrate": False,
        "log_level": "CRITICAL",
        "run_worker_in_api": False,
        **extra,
    }
    settings = Settings(_env_file=None, **values)
    engine = create_db_engine(settings)
    upgrade_schema(engine)
    if not settings.is_sqlite:
        from tests.conftest import _truncate_all

        _truncate_all(url)
    return settings, engine


# -- concurrency ---------------------------------------------------------------------------
def bench_concurrency(url: str, work: Path, writers: int, per_writer: int) -> dict[str, Any]:
    from tests.factories import add_movies, synthetic_catalog

    settings, engine = fresh_settings(url, work)
    add_movies(engine, synthetic_catalog(200))
    pairs = [(u, m) for u in range(1, 6) for m in range(1, 11)]
    written: dict[tuple[int, int], set[tuple[float, int]]] = {p: set() for p in pairs}
    lock = threading.Lock()
    started = COUNT.requests
    with TestClient(create_app(settings), raise_server_exceptions=False) as main:

        def writer(index: int) -> Callable[[], None]:
            def run() -> None:
                rng = random.Random(index)
                client = TestClient(main.app, raise_server_exceptions=False)
                for step in range(per_writer):
                    user, movie = rng.choice(pairs)
                    value = (rng.choice(HALF_STARS), 1_000_000 + index * 100_000 + step)
                    body = {"user_id": user, "movie_id": movie, "rating": value[0]}
                    r = call(client, "POST", "/ratings", json={**body, "timestamp": value[1]})
                    if r.status_code in (200, 201):
                        with lock:
                            written[(user, movie)].add(value)

            return run

        t0 = time.perf_counter()
        run_together([writer(i) for i in range(writers)])
        upsert_seconds = time.perf_counter() - t0
        final = ratings_snapshot(engine)
        lost = sum(1 for p, v in written.items() if v and p not in final)
        foreign = sum(1 for p, v in final.items() if v not in written.get(p, set()))

        # batches + an import + single writes, all at once
        rng = random.Random(11)
        imported = [
            (u, m, rng.choice(HALF_STARS), 5_000 + u)
            for u in range(10_000, 12_000)
            for m in rng.sample(range(1, 201), 10)
        ]
        folder = work / f"ml-latest-small-{uuid.uuid4().hex[:6]}"
        folder.mkdir()
        movies = ["movieId,title,genres"]
        movies += [f"{m},{t},{'|'.join(g)}" for m, t, _y, g in synthetic_catalog(200)]
        (folder / "movies.csv").write_text("\n".join(movies) + "\n")
        lines = ["userId,movieId,rating,timestamp"]
        lines += [f"{u},{m},{r},{t}" for u, m, r, t in imported]
        (folder / "ratings.csv").write_text("\n".join(lines) + "\n")
        contested = [(u, m) for u, m, _r, _t in imported[::13]]
        batch_pairs = [(u, m) for u in range(20_000, 20_200) for m in range(1, 26)]
        singles: dict[tuple[int, int], tuple[float, int]] = {}
        batch_failures = 0

        def importer() -> None:
            import_movielens(engine, folder)

        def batcher(reverse: bool, rating: float) -> Callable[[], None]:
            def run() -> None:
                nonlocal batch_failures
                client = TestClient(main.app, raise_server_exceptions=False)
                order = list(reversed(batch_pairs)) if reverse else batch_pairs
                items = [
                    {"user_id": u, "movie_id": m, "rating": rating, "timestamp": int(rating * 2)}
                    for u, m in order
                ]
                for _ in range(3):
                    r = call(client, "POST", "/ratings/batch", json={"ratings": items})
                    if r.status_code != 200:
                        with lock:
                            batch_failures += 1

            return run

        def single(index: int) -> Callable[[], None]:
            def run() -> None:
                client = TestClient(main.app, raise_server_exceptions=False)
                own = [(30_000 + index, m) for m in range(1, 101)]
                for n, (user, movie) in enumerate(own + contested[index::8]):
                    value = (HALF_STARS[(n + index) % 10], 9_000 + n)
                    body = {"user_id": user, "movie_id": movie, "rating": value[0]}
                    r = call(client, "POST", "/ratings", json={**body, "timestamp": value[1]})
                    if r.status_code in (200, 201):
                        with lock:
                            singles[(user, movie)] = value

            return run

        t0 = time.perf_counter()
        run_together(
            [importer, batcher(False, 3.0), batcher(True, 4.0)] + [single(i) for i in range(8)]
        )
        mixed_seconds = time.perf_counter() - t0
    final = ratings_snapshot(engine)
    lost_mixed = sum(1 for p in singles if p not in final)
    lost_mixed += sum(1 for u, m, _r, _t in imported if (u, m) not in final)
    lost_mixed += sum(1 for p in batch_pairs if p not in final)
    wrong = sum(1 for p, v in singles.items() if final.get(p) != v)
    result = {
        "writers": writers,
        "upserts": writers * per_writer,
        "upsert_seconds": round(upsert_seconds, 2),
        "rows_lost": lost + lost_mixed,
        "duplicate_rows": duplicate_rating_pairs(engine),
        "final_values_nobody_wrote": foreign,
        "single_writes_overwritten": wrong,
        "batch_failures": batch_failures,
        "imported_ratings": len(imported),
        "mixed_seconds": round(mixed_seconds, 2),
        "requests": COUNT.requests - started,
    }
    engine.dispose()
    return result


# -- faults ----------------------------------------------------------------------------------
def wait_until(predicate: Callable[[], object], timeout: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if predicate():
            return time.monotonic() - started
        time.sleep(0.02)
    raise TimeoutError("condition not met")


def bench_db_outage(url: str, work: Path, outage_seconds: float) -> dict[str, Any]:
    from tests.factories import add_catalog
    from tests.reliability_helpers import cuttable_proxy

    settings, engine = fresh_settings(url, work)
    add_catalog(engine)
    target = make_url(url)
    stop = threading.Event()
    local = Counter()
    with cuttable_proxy(target.host or "127.0.0.1", target.port or 5432) as proxy:
        through = target.set(host="127.0.0.1", port=proxy.port)
        proxied = settings.model_copy(
            update={"database_url": through.render_as_string(hide_password=False)}
        )
        with TestClient(create_app(proxied), raise_server_exceptions=False) as main:

            def load(index: int) -> None:
                client = TestClient(main.app, raise_server_exceptions=False)
                n = 0
                while not stop.is_set():
                    n += 1
                    body = {"user_id": 100 + index, "movie_id": 1 + n % 8, "rating": 3.0}
                    for method, path, kwargs in (
                        ("POST", "/ratings", {"json": body}),
                        ("GET", "/movies", {}),
                        ("GET", f"/users/{100 + index}/recommendations", {}),
                    ):
                        local.add(call(client, method, path, **kwargs).status_code)

            threads = [threading.Thread(target=load, args=(i,)) for i in range(4)]
            for thread in threads:
                thread.start()
            time.sleep(1.0)
            proxy.cut()
            cut_at = time.monotonic()
            detect = wait_until(lambda: main.get("/readyz").status_code == 503, 30)
            time.sleep(max(0.0, outage_seconds - (time.monotonic() - cut_at)))
            proxy.restore()
            recovery = wait_until(lambda: main.get("/readyz").status_code == 200, 60)
            first_write = wait_until(
                lambda: (
                    main.post(
                        "/ratings", json={"user_id": 99, "movie_id": 1, "rating": 4.0}
                    ).status_code
                    in (200, 201)
                ),
                60,
            )
            time.sleep(1.0)
            stop.set()
            for thread in threads:
                thread.join()
    engine.dispose()
    return {
        "requests": local.requests,
        "answers_503": local.unavailable,
        "other_5xx": local.server_errors,
        "seconds_to_readyz_503": round(detect, 3),
        "recovery_seconds": round(recovery, 3),
        "recovery_seconds_first_write": round(recovery + first_write, 3),
    }


def bench_kill_training(url: str, work: Path, label: str) -> dict[str, Any]:
    from tests.factories import TINY_TRAINING, seed_synthetic
    from tests.test_recommendations_api import train_tiny

    settings, engine = fresh_settings(url, work, run_worker_in_api=True, model_poll_seconds=0.2)
    seed_synthetic(engine, n_users=300, n_movies=200, per_user=20)
    active = train_tiny(settings, engine)
    files_before = sorted(p.name for p in Path(settings.model_dir).rglob("*"))
    endless = {"preset": "fast", **TINY_TRAINING, "epochs": 100_000, "patience": 100_000}
    served_5xx = 0
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        job_id = call(client, "POST", "/admin/retrain", json=endless, headers=AUTH).json()["job_id"]

        def job() -> dict[str, Any]:
            return call(client, "GET", f"/admin/jobs/{job_id}", headers=AUTH).json()

        wait_until(lambda: job()["status"] == "running" and job()["epoch"] >= 2, 120)
        child = client.app.state.launcher.child
        os.kill(child.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        while job()["status"] == "running":
            served_5xx += call(client, "GET", "/users/1/recommendations").status_code >= 500
            time.sleep(0.02)
        failed_after = time.monotonic() - killed_at
        final = job()
        client.app.state.launcher.stop()
        models = call(client, "GET", "/admin/models", headers=AUTH).json()
        serving = call(client, "GET", "/users/1/recommendations").json()
    files_after = sorted(p.name for p in Path(settings.model_dir).rglob("*"))
    engine.dispose()
    return {
        "backend": label,
        "job_status": final["status"],
        "job_error": final["error"],
        "recovery_seconds": round(failed_after, 3),
        "active_model_unchanged": [m["version"] for m in models if m["active"]] == [active.version]
        and serving["model_version"] == active.version,
        "new_files_in_model_dir": sorted(set(files_after) - set(files_before)),
        "5xx_while_recovering": served_5xx,
    }


def bench_corrupt_artifact(url: str, work: Path) -> dict[str, Any]:
    from tests.factories import LENIENT_GATE, damage_stored_artifact, seed_synthetic
    from tests.test_recommendations_api import train_tiny

    settings, engine = fresh_settings(url, work, model_poll_seconds=0.2)
    seed_synthetic(engine)
    lenient = settings.model_copy(update={**LENIENT_GATE})
    first = train_tiny(lenient, engine)
    with Session(engine) as session, session.begin():
        session.get(ModelVersion, first.version).metrics = {"valid_rmse": 0.0}
    second = train_tiny(settings, engine, seed=3)  # refused by the gate: stays inactive
    for path in Path(settings.model_dir).rglob(f"{second.version}*.pt"):
        path.write_bytes(os.urandom(2048))
    local = Counter()

    def activate(version: str) -> None:
        with Session(engine) as session, session.begin():
            session.execute(update(ModelVersion).values(is_active=False))
            session.execute(
                update(ModelVersion).where(ModelVersion.version == version).values(is_active=True)
            )

    damage_stored_artifact(engine, second.version, b"corrupt")
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:

        def ask() -> dict[str, Any]:
            response = call(client, "GET", f"/users/{random.randint(1, 60)}/recommendations")
            local.add(response.status_code)
            return call(client, "GET", "/readyz").json()

        activate(second.version)
        detect = wait_until(lambda: ask()["detail"], 30)
        kept = ask()["model_version"] == first.version
        for _ in range(200):
            ask()
        activate(first.version)
        recovery = wait_until(lambda: ask()["detail"] is None, 30)
    engine.dispose()
    return {
        "requests": local.requests,
        "5xx": local.server_errors + local.unavailable,
        "seconds_to_report_in_readyz": round(detect, 3),
        "kept_serving_previous_model": kept,
        "recovery_seconds_after_rollback": round(recovery, 3),
    }


# -- fuzz ------------------------------------------------------------------------------------
def bench_fuzz(url: str, work: Path, positive: int, negative: int) -> dict[str, Any]:
    import schemathesis
    from schemathesis import GenerationMode

    from tests import test_fuzz
    from tests.factories import seed_synthetic
    from tests.reliability_helpers import movies_snapshot
    from tests.test_recommendations_api import train_tiny

    settings, engine = fresh_settings(url, work)
    seed_synthetic(engine)
    train_tiny(settings, engine)
    test_fuzz.EXAMPLES = {GenerationMode.POSITIVE: positive, GenerationMode.NEGATIVE: negative}
    test_fuzz.AUTH = AUTH
    ratings_before, movies_before = ratings_snapshot(engine), movies_snapshot(engine)
    failures: list[str] = []
    writes = test_fuzz.WriteLog()
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        original = client.request
        statuses: list[int] = []

        def counted(*args: Any, **kwargs: Any) -> Any:
            response = original(*args, **kwargs)
            statuses.append(response.status_code)
            COUNT.add(response.status_code)
            return response

        client.request = counted  # type: ignore[method-assign]
        schema = schemathesis.openapi.from_dict(client.app.openapi())
        for result in schema.get_all_operations():
            operation = result.ok()
            raw = operation.definition.raw
            modes = [GenerationMode.POSITIVE]
            if raw.get("parameters") or raw.get("requestBody"):
                modes.append(GenerationMode.NEGATIVE)
            for mode in modes:
                try:
                    test_fuzz.fuzz_operation(client, operation, mode, writes)
                except (Exception, BaseExceptionGroup) as exc:
                    failures.append(f"{operation.label} [{mode.value}]: {str(exc)[:300]}")
    expected = dict(ratings_before)
    for action, key, rating, _stamp in writes.ratings:
        if action == "delete":
            expected.pop(key, None)
        else:
            expected[key] = (rating, 0)
    actual = ratings_snapshot(engine)
    unexplained = sum(1 for k in set(actual) ^ set(expected))
    unexplained += sum(1 for k, v in expected.items() if k in actual and actual[k][0] != v[0])
    movies_ok = movies_snapshot(engine) == {**movies_before, **writes.movies}
    engine.dispose()
    return {
        "requests": len(statuses),
        "5xx": sum(s >= 500 for s in statuses),
        "examples_per_operation": {"positive": positive, "negative": negative},
        "failures": failures,
        "unexplained_rating_changes": unexplained,
        "movies_unchanged_except_created": movies_ok,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", default=os.environ.get("TEST_DATABASE_URL", DEFAULT_SERVER))
    parser.add_argument("--writers", type=int, default=16)
    parser.add_argument("--per-writer", type=int, default=150)
    parser.add_argument("--outage-seconds", type=float, default=3.0)
    parser.add_argument("--fuzz-positive", type=int, default=60)
    parser.add_argument("--fuzz-negative", type=int, default=25)
    args = parser.parse_args()

    import logging

    logging.disable(logging.CRITICAL)  # the JSON is the output
    started = time.perf_counter()
    report: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-reliability-") as tmp:
        work = Path(tmp)
        with postgres_database(args.server) as url:
            report["concurrency_postgresql"] = bench_concurrency(
                url, work, args.writers, args.per_writer
            )
            report["fault_database_outage"] = bench_db_outage(url, work, args.outage_seconds)
            report["fault_kill_training"] = [bench_kill_training(url, work, "postgresql")]
            report["fault_kill_training"].append(
                bench_kill_training(f"sqlite:///{work / 'kill.db'}", work, "sqlite")
            )
            report["fault_corrupt_artifact"] = bench_corrupt_artifact(url, work)
            report["fuzz_postgresql"] = bench_fuzz(
                url, work, args.fuzz_positive, args.fuzz_negative
            )
    concurrency = report["concurrency_postgresql"]
    report["summary"] = {
        "requests_sent": COUNT.requests,
        "5xx_total": COUNT.server_errors + COUNT.unavailable,
        "5xx_other_than_503_during_outage": COUNT.server_errors
        + COUNT.unavailable
        - report["fault_database_outage"]["answers_503"],
        "503_during_database_outage": report["fault_database_outage"]["answers_503"],
        "rows_lost": concurrency["rows_lost"],
        "duplicate_rows": concurrency["duplicate_rows"],
        "recovery_seconds": {
            "database_outage": report["fault_database_outage"]["recovery_seconds"],
            "kill_training": {
                k["backend"]: k["recovery_seconds"] for k in report["fault_kill_training"]
            },
            "corrupt_artifact_after_rollback": report["fault_corrupt_artifact"][
                "recovery_seconds_after_rollback"
            ],
        },
        "seconds": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
