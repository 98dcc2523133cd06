"""Time `saerec import-movielens` on the synthetic ml-25m, on fresh SQLite and PostgreSQL.

Usage: .venv/bin/python scripts/bench_scale.py [--scale 0.02] [--data DIR] [--seed 25]
           [--pg-url URL] [--skip-sqlite] [--skip-postgres] [--no-compare] [--no-second]
           [--train] [--train-epochs N] [--serve SECONDS]

The data set is written by scripts/generate_ml25m.py (full ml-25m shape by default, 25M
ratings; `--scale 0.02` for the 1/50 set) into --data, default /tmp/saerec-ml25m-SCALE-SEED,
and reused when already there. For each backend a fresh database is made (a temp file; a
randomly named PostgreSQL database on --pg-url, dropped afterwards) and migrated, untimed.
Then the whole command runs as a subprocess, timed from start to exit, peak RSS from the
kernel's rusage: `first` into the empty database (the bulk path), `second` the same data
again (must add nothing), and, unless --no-compare, `incremental`: the first import on
another fresh database with the bulk path switched off (BULK_EXISTING_MAX = -1), i.e. the
row-by-row path every import took before; `bulk_speedup` is its time over `first`'s.

With --train, `saerec train` then runs on the first import's database (the default preset
unless --train-epochs caps the epochs), timed the same way: wall seconds and peak RSS of
the whole command (ratings streamed from the database, training, artifact, registry),
epochs run, the networks' seconds, what followed them, the artifact's size, and the
validation figures against popularity and the bias model (EASE cannot run at this scale:
its dense item x item matrix alone would need 14 GB at 59,047 movies).
With --serve, a second model (one epoch, another seed) is trained too, and `saerec serve`
(one uvicorn worker, answer cache off) runs on the database: time to ready, model load
time, RSS, uncached recommendations for random users at 16 connections for SECONDS (p50,
p99, throughput beside /healthz), first as training left the page cache
(`recommendations_cold_cache`), then after reading the ratings table and its index
into it (`prewarm`: a database that has been serving), then a swap to the version not
served, through the admin API, under load: every request that failed (non-200, or no
answer within wrk's 2 s) is counted. Last, the EXPLAIN (ANALYZE) of the per-user read
for a batch of users. Prints one JSON object; exit status 1 if a run failed, added the
wrong number of rows, or a request failed during the swap.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
DEFAULT_PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
CLI = "from app.cli import main; main()"
INCREMENTAL = "import app.movielens.writers as m; m.BULK_EXISTING_MAX = -1; " + CLI
SUMMARY = re.compile(r"ratings: (\d+) added, (\d+) already present, (\d+) read")


def dataset(folder: Path, scale: float, seed: int) -> dict[str, Any]:
    """Generate into `folder` unless a finished set (its figures file) is already there."""
    figures_file = folder / "figures.json"
    if figures_file.is_file():
        return {**json.loads(figures_file.read_text()), "generated_now": False}
    started = time.perf_counter()
    run = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "generate_ml25m.py"),
            "--out",
            str(folder),
            "--scale",
            str(scale),
            "--seed",
            str(seed),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    figures = json.loads(run.stdout)
    figures["wall_seconds"] = round(time.perf_counter() - started, 1)
    figures_file.write_text(json.dumps(figures))
    return {**figures, "generated_now": True}


def saerec(database_url: str, code: str, *args: str) -> dict[str, Any]:
    """Run the CLI in a child process: wall seconds, peak RSS, exit status, output."""
    env = {**os.environ, "DATABASE_URL": database_url}
    with tempfile.TemporaryFile() as output:
        started = time.perf_counter()
        child = subprocess.Popen(
            [sys.executable, "-c", code, *args],
            cwd=REPO,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
        _, status, usage = os.wait4(child.pid, 0)
        seconds = time.perf_counter() - started
        child.returncode = os.waitstatus_to_exitcode(status)
        output.seek(0)
        text = output.read().decode("utf-8", errors="replace")
    return {
        "seconds": round(seconds, 2),
        "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),  # KiB on Linux
        "exit": child.returncode,
        "output": text,
    }


def timed_import(database_url: str, folder: Path, code: str = CLI) -> dict[str, Any]:
    run = saerec(database_url, code, "import-movielens", str(folder), "--no-progress")
    found = SUMMARY.search(run["output"])
    result = {"seconds": run["seconds"], "peak_rss_mib": run["peak_rss_mib"]}
    if run["exit"] != 0 or not found:
        return {**result, "error": run["output"][-2000:]}
    added, existing, read = (int(n) for n in found.groups())
    return {
        **result,
        "ratings_per_second": round(read / run["seconds"]),
        "added": added,
        "already_present": existing,
        "read": read,
    }


def timed_train(database_url: str, models: Path, epochs: int | None, *extra: str) -> dict[str, Any]:
    """`saerec train` on the imported ratings, in a child process, into the ``models`` folder."""
    os.environ["MODEL_DIR"] = str(models)
    try:
        args = ["train", "--no-progress", *(["--epochs", str(epochs)] if epochs else []), *extra]
        run = saerec(database_url, CLI, *args)
    finally:
        os.environ.pop("MODEL_DIR", None)
    outcome = _last_json(run["output"])
    result: dict[str, Any] = {"seconds": run["seconds"], "peak_rss_mib": run["peak_rss_mib"]}
    if run["exit"] != 0 or outcome is None:
        return {**result, "error": run["output"][-2000:]}
    version = outcome.get("version")
    sizes = [p.stat().st_size for p in models.rglob(f"{version}*.pt")]
    metrics = outcome.get("metrics", {})
    keys = (
        "epochs_run", "rank_epoch", "rating_network_epochs", "network_seconds",
        "train_seconds", "refit_seconds", "valid_ndcg@10", "valid_popularity_ndcg",
        "valid_rmse", "valid_bias_rmse", "valid_coverage@10", "time_limited",
        "item_weight", "popularity_penalty",  # the blend: what serving computes
    )  # fmt: skip
    return {
        **result,
        **{k: metrics.get(k) for k in keys},
        "after_network_seconds": _minus(
            metrics.get("train_seconds"), metrics.get("network_seconds")
        ),
        "artifact_mib": round(max(sizes, default=0) / 2**20, 1),
        "version": version,
        "activated": outcome.get("activated"),
    }


def _minus(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round(a - b, 2)


def _last_json(output: str) -> dict[str, Any] | None:
    """The CLI's result: the last top-level JSON object it printed (log lines come before)."""
    start = output.rfind("\n{\n")
    try:
        return json.loads(output[start + 1 :] if start >= 0 else output)
    except json.JSONDecodeError:
        return None


def serve_at_scale(
    database_url: str, models: Path, versions: list[str], max_user: int, seconds: float
) -> dict[str, Any]:
    """`saerec serve` (one worker, answer cache off) on the trained models: start-up and
    model load time, RSS, uncached recommendations at 16 connections (p99) beside /healthz,
    then a swap to the other version under load, counting every failed request (non-200,
    or no answer within wrk's 2 s), and the plan of the per-user read."""
    import bench_serving as load  # the serving benchmark's load drivers (wrk, else httpx)

    tool = "wrk" if shutil.which("wrk") else "httpx"
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "MODEL_DIR": str(models),
        "ADMIN_TOKEN": load.TOKEN,
        "ANSWER_CACHE_SIZE": "0",
        "LOG_LEVEL": "INFO",
    }
    port = load.free_port()
    base = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryFile() as log:
        started = time.perf_counter()
        server = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve", "--port", str(port), "--workers", "1"],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            active = load.wait_ready(base, timeout=900)["model_version"]
            result: dict[str, Any] = {
                "tool": tool,
                "ready_seconds": round(time.perf_counter() - started, 1),
                "rss_mib_ready": _rss_mib(server.pid),
            }
            load.drive(base, "/recommendations", 3, 16, max_user, tool)  # warm-up
            cold = load.drive(base, "/recommendations", seconds, 16, max_user, tool)
            result["prewarm"] = _prewarm(database_url)
            recs = load.drive(base, "/recommendations", seconds, 16, max_user, tool)
            health = load.drive(base, "/healthz", seconds, 16, max_user, tool)
            result.update(
                recommendations_cold_cache=cold,
                recommendations=recs,
                healthz=health,
                ratio_recommendations_to_healthz=round(recs["req_per_s"] / health["req_per_s"], 3),
                rss_mib_after_load=_rss_mib(server.pid),
            )
            others = [v for v in versions if v != active]
            if others:
                result["swap"] = _swap_under_load(base, others[0], max_user, tool, load)
                result["rss_mib_two_models"] = _rss_mib(server.pid)
        finally:
            server.terminate()
            server.wait(timeout=60)
            log.seek(0)
            lines = log.read().decode(errors="replace").splitlines()
            loads = [
                int(m.group(1)) for x in lines if "model_loaded" in x and (m := LOAD_MS.search(x))
            ]
    result["model_load_ms"] = loads
    result["read_plan"] = _read_plan(database_url)
    return result


LOAD_MS = re.compile(r"\bms\W{1,3}(\d+)")  # key=value or JSON log lines


def _swap_under_load(
    base: str, version: str, max_user: int, tool: str, load: Any
) -> dict[str, Any]:
    """Activate ``version`` through the admin API while recommendations are driven."""
    driven: dict[str, Any] = {}
    driver = threading.Thread(
        target=lambda: driven.update(load.drive(base, "/recommendations", 40, 16, max_user, tool))
    )
    driver.start()
    time.sleep(5)
    started = time.perf_counter()
    answer = httpx.post(
        f"{base}/admin/models/{version}/activate",
        headers={"Authorization": f"Bearer {load.TOKEN}"},
        timeout=900,
    )
    activate_seconds = time.perf_counter() - started
    driver.join()
    served = httpx.get(f"{base}/readyz", timeout=10).json().get("model_version")
    return {
        "to_version": version,
        "activate_status": answer.status_code,
        "activate_seconds": round(activate_seconds, 2),
        "served_after": served,
        "swapped": served == version,
        **driven,
        "failed_requests": driven.get("non_200", 0) + driven.get("errors", 0),
    }


def _prewarm(database_url: str) -> dict[str, Any]:
    """Read the ratings table and its primary key into the OS page cache (pg_prewarm's
    'read' mode; for SQLite, the file): the state of a database that has been serving.

    Training takes most of half an hour, in which nothing reads the table; on this VM the
    kernel pages file pages out after about a minute unused, so the first requests after
    it read the index and heap from disk (`recommendations_cold_cache` measures that)."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    started = time.perf_counter()
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        with open(url.database or "", "rb") as db:
            mebibytes = sum(1 for _ in iter(lambda: db.read(1 << 20), b""))
        return {"mib_read": mebibytes, "seconds": round(time.perf_counter() - started, 2)}
    engine = create_engine(database_url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(text("CREATE EXTENSION IF NOT EXISTS pg_prewarm"))
            heap, index = conn.execute(
                text("SELECT pg_prewarm('ratings', 'read'), pg_prewarm('pk_ratings', 'read')")
            ).one()
    finally:
        engine.dispose()
    return {
        "ratings_pages": heap,
        "pk_ratings_pages": index,
        "seconds": round(time.perf_counter() - started, 2),
    }


def _rss_mib(pid: int) -> float | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    found = re.search(r"VmRSS:\s+(\d+) kB", status)
    return round(int(found.group(1)) / 1024, 1) if found else None


def _read_plan(database_url: str) -> list[str]:
    """EXPLAIN (ANALYZE) of the hot-path read for a batch of 8 users, as the server runs it."""
    from sqlalchemy import create_engine

    from app.serving.reader import UserReader

    engine = create_engine(database_url)
    try:
        raw = engine.raw_connection()
        try:
            cursor = raw.cursor()
            sql, params = UserReader(engine).statement([1, 2, 3, 5, 8, 13, 21, 34])
            if engine.dialect.name == "sqlite":
                cursor.execute("EXPLAIN QUERY PLAN " + sql, params)
                return [str(row[-1]) for row in cursor.fetchall()]
            cursor.execute("EXPLAIN (ANALYZE, BUFFERS) " + sql, params)
            return [row[0] for row in cursor.fetchall()]
        finally:
            raw.close()
    finally:
        engine.dispose()


def migrate(database_url: str) -> None:
    run = saerec(database_url, CLI, "migrate")
    if run["exit"] != 0:
        raise RuntimeError(f"migrate failed:\n{run['output']}")


def bench_backend(
    new_database: Any,
    folder: Path,
    expected: int,
    compare: bool,
    second: bool,
    train: tuple[bool, int | None] = (False, None),
    serve: tuple[float, int] | None = None,
) -> dict[str, Any]:
    """first (empty database), second (same data again), incremental (bulk path off), a
    training run on the first import's ratings when ``train[0]``, and with ``serve``
    (seconds, highest user id) a second, one-epoch model and the serving runs."""
    result: dict[str, Any] = {}
    with new_database() as url, tempfile.TemporaryDirectory(prefix="saerec-bench-") as models:
        migrate(url)
        result["first"] = timed_import(url, folder)
        if second:
            result["second"] = timed_import(url, folder)
        if train[0] or serve:
            result["train"] = timed_train(url, Path(models), train[1])
        if serve and "error" not in result["train"]:
            result["train_second"] = timed_train(url, Path(models), 1, "--set", "seed=2")
            trained = [result[k].get("version") for k in ("train", "train_second")]
            versions = [v for v in trained if v]
            result["serve"] = serve_at_scale(url, Path(models), versions, serve[1], serve[0])
    if compare:
        with new_database() as url:
            migrate(url)
            result["incremental"] = timed_import(url, folder, INCREMENTAL)
        bulk, slow = result["first"].get("seconds"), result["incremental"].get("seconds")
        if bulk and slow and "error" not in result["incremental"]:
            result["bulk_speedup"] = round(slow / bulk, 2)
    result["ok"] = (
        result["first"].get("added") == expected
        and result.get("second", {"added": 0}).get("added") == 0
        and result.get("incremental", {"added": expected}).get("added") == expected
        and "error" not in result.get("train", {})
        and "error" not in result.get("train_second", {})
        and result.get("serve", {}).get("swap", {}).get("failed_requests", 0) == 0
    )
    return result


class SqliteDatabase:
    def __init__(self) -> None:
        self.folder = tempfile.TemporaryDirectory(prefix="saerec-bench-scale-")

    def __enter__(self) -> str:
        return f"sqlite:///{Path(self.folder.name) / 'bench.db'}"

    def __exit__(self, *exc: object) -> None:
        self.folder.cleanup()


class PostgresDatabase:
    """A throwaway database on the server: never touches real data, always starts empty."""

    def __init__(self, server_url: str) -> None:
        from sqlalchemy import create_engine
        from sqlalchemy.engine import make_url

        self.admin = make_url(server_url)
        self.name = f"saerec_bench_{uuid.uuid4().hex[:10]}"
        self.server = create_engine(self.admin, isolation_level="AUTOCOMMIT")

    def _sql(self, statement: str) -> None:
        from sqlalchemy import text

        with self.server.connect() as conn:
            conn.execute(text(statement))

    def __enter__(self) -> str:
        self._sql(f'CREATE DATABASE "{self.name}"')
        return self.admin.set(database=self.name).render_as_string(hide_password=False)

    def __exit__(self, *exc: object) -> None:
        self._sql(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
        self.server.dispose()


def run_backend(bench: Any, *args: Any) -> dict[str, Any]:
    """One backend failing (say, no PostgreSQL server) must not hide the other's numbers."""
    try:
        return bench(*args)
    except Exception as exc:  # reported in the JSON, not swallowed
        return {"error": f"{type(exc).__name__}: {exc}", "ok": False}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0, help="of ml-25m's shape")
    parser.add_argument("--seed", type=int, default=25)
    parser.add_argument("--data", type=Path, default=None, help="folder for the data set")
    parser.add_argument("--pg-url", default=DEFAULT_PG_URL, help="server to create the db on")
    parser.add_argument("--skip-sqlite", action="store_true")
    parser.add_argument("--skip-postgres", action="store_true")
    parser.add_argument("--no-compare", action="store_true", help="skip the incremental run")
    parser.add_argument("--no-second", action="store_true", help="skip the second import")
    parser.add_argument("--train", action="store_true", help="then saerec train on it")
    parser.add_argument("--train-epochs", type=int, default=None, help="cap the epochs")
    parser.add_argument(
        "--serve",
        type=float,
        default=None,
        metavar="SECONDS",
        help="train (as --train) and a second one-epoch model, then serve them: uncached "
        "recommendations for SECONDS at 16 connections, and a swap under load",
    )
    args = parser.parse_args(argv)
    folder = args.data or Path(tempfile.gettempdir()) / f"saerec-ml25m-{args.scale}-{args.seed}"

    results: dict[str, Any] = {
        "host": {"cpus": os.cpu_count(), "load_average_at_start": os.getloadavg()},
        "dataset": dataset(folder, args.scale, args.seed),
    }
    expected = results["dataset"]["ratings"]
    compare, second = not args.no_compare, not args.no_second
    train = (args.train, args.train_epochs)
    serve = (args.serve, results["dataset"]["users"]) if args.serve else None
    if not args.skip_sqlite:
        results["sqlite"] = run_backend(
            bench_backend, SqliteDatabase, folder, expected, compare, second, train, serve
        )
    if not args.skip_postgres:
        results["postgresql"] = run_backend(
            bench_backend,
            lambda: PostgresDatabase(args.pg_url),
            folder,
            expected,
            compare,
            second,
            train,
            serve,
        )
    results["host"]["load_average_at_end"] = os.getloadavg()
    print(json.dumps(results, indent=2))
    failed = [r for key, r in results.items() if key in ("sqlite", "postgresql") and not r["ok"]]
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
