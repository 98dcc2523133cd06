#!/usr/bin/env python
"""Trending benchmark: GET /movies/trending vs /healthz of the same server, on PostgreSQL.

In one run: generates the synthetic ml-25m at ``--scale`` (scripts/generate_ml25m.py),
imports it into a throwaway PostgreSQL database, and makes it recent: the ratings are moved
so the newest is now, and ``--recent-share`` of them (whole users, chosen by id) are spread
over the last week, a far busier week than ml-25m ever had (about 0.1 % of its ratings fall
in a week). Then `saerec serve` answers, one request at a time (no queueing in the figures),
trending (the default week, a month, and with a genre) interleaved with /healthz, so drift
hits both alike: p50/p99 of each and p99 over the baseline's, once with every request
reading the window (TRENDING_CACHE_SECONDS=0) and once with lists kept ``--cache-seconds``
(the default 10). It also prints the query plan, which should read `ix_ratings_timestamp`
(an index-only scan), never the whole table.

    .venv/bin/python scripts/bench_trending.py [--scale 0.05] [--requests 500]
        [--pg-url URL] [--data DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from bench_scale import DEFAULT_PG_URL, REPO, PostgresDatabase, dataset, migrate, timed_import
from bench_serving import free_port

TARGET_P99_MS = 20.0  # issue 30
WEEK = 7 * 86_400
QUERIES = {
    "week": "/movies/trending?n=10",
    "month": "/movies/trending?n=10&days=30",
    "week_drama": "/movies/trending?n=10&genre=Drama",
}


def make_recent(database_url: str, share: float) -> dict[str, Any]:
    """Shift every rating so the newest is now; then ``share`` of the users (by id) rated
    within the last week. VACUUM ANALYZE, as autovacuum would after such a change."""
    from sqlalchemy import create_engine, text

    now = int(time.time())
    every = max(1, round(1 / share))
    engine = create_engine(database_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(
            text(
                "UPDATE ratings SET timestamp = timestamp"
                " + (:now - (SELECT max(timestamp) FROM ratings))"
            ),
            {"now": now},
        )
        conn.execute(
            text(
                "UPDATE ratings SET timestamp ="
                " :now - ((user_id * 7919 + movie_id * 104729) % :week)"
                " WHERE user_id % :every = 0"
            ),
            {"now": now, "week": WEEK, "every": every},
        )
        conn.execute(text("VACUUM ANALYZE ratings"))
        week = conn.execute(
            text("SELECT count(*) FROM ratings WHERE timestamp >= :since"), {"since": now - WEEK}
        ).scalar_one()
        month = conn.execute(
            text("SELECT count(*) FROM ratings WHERE timestamp >= :since"),
            {"since": now - 30 * 86_400},
        ).scalar_one()
    engine.dispose()
    return {"ratings_last_week": week, "ratings_last_30_days": month}


def query_plan(database_url: str) -> list[str]:
    """EXPLAIN of the service's own trending statement for the default week."""
    from sqlalchemy import create_engine, text

    from app.services.trending import trending_query

    engine = create_engine(database_url)
    statement = trending_query(10, 7, [], time.time())
    compiled = statement.compile(engine, compile_kwargs={"literal_binds": True})
    with engine.connect() as conn:
        plan = [row[0] for row in conn.execute(text(f"EXPLAIN {compiled}"))]
    engine.dispose()
    return plan


def wait_ready(base: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError("server did not become ready")


def timings(base: str, requests: int) -> dict[str, Any]:
    rng = random.Random(5)
    times: dict[str, list[float]] = {name: [] for name in [*QUERIES, "healthz"]}
    paths = {**QUERIES, "healthz": "/healthz"}
    with httpx.Client(base_url=base, timeout=30) as client:
        for path in paths.values():  # warm-up
            client.get(path)
        for _ in range(requests):
            order = list(paths.items())
            rng.shuffle(order)
            for name, path in order:
                started = time.perf_counter()
                response = client.get(path)
                times[name].append(time.perf_counter() - started)
                if response.status_code != 200:
                    raise RuntimeError(f"{path}: {response.status_code} {response.text[:200]}")
        sample = client.get(QUERIES["week"]).json()["items"][:3]

    def pct(name: str, q: float) -> float:
        ordered = sorted(times[name])
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e3, 3)

    figures: dict[str, Any] = {
        name: {"p50_ms": pct(name, 0.5), "p99_ms": pct(name, 0.99)} for name in times
    }
    for name in QUERIES:
        figures[name]["p99_to_healthz_p99"] = round(pct(name, 0.99) / pct("healthz", 0.99), 2)
    figures["mean_ms_all_trending"] = round(
        statistics.mean(t for name in QUERIES for t in times[name]) * 1e3, 3
    )
    figures["top_of_the_week"] = [
        {k: item[k] for k in ("movie_id", "score", "recent_ratings", "recent_positive")}
        for item in sample
    ]
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scale", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--requests", type=int, default=500, help="rounds of each request")
    parser.add_argument("--recent-share", type=float, default=0.05)
    parser.add_argument(
        "--cache-seconds", type=float, default=10.0, help="TRENDING_CACHE_SECONDS of the 2nd run"
    )
    parser.add_argument("--pg-url", default=os.environ.get("BENCH_PG_URL", DEFAULT_PG_URL))
    parser.add_argument("--data", type=Path, default=None, help="keep the generated set here")
    args = parser.parse_args()
    data = args.data or Path(tempfile.mkdtemp(prefix="saerec-bench-trending-"))
    figures = dataset(data, args.scale, args.seed)
    with PostgresDatabase(args.pg_url) as url:
        migrate(url)
        imported = timed_import(url, data)
        recent = make_recent(url, args.recent_share)
        plan = query_plan(url)
        runs = {}
        for cache in (0.0, args.cache_seconds):
            runs[f"cache_{cache:g}s"] = serve_and_time(url, data, cache, args.requests)
    result = {
        "benchmark": "trending",
        "backend": "postgresql",
        "cpus": os.cpu_count(),
        "data": {
            "scale": args.scale,
            "ratings": figures.get("ratings"),
            "movies": figures.get("movies"),
            "users": figures.get("users"),
            "import_seconds": imported.get("seconds"),
            **recent,
        },
        "requests_per_figure": args.requests,
        "runs": runs,
        "plan": plan,
        "index_only_scan": any("Index Only Scan" in line for line in plan),
    }
    print(json.dumps(result, indent=2))


def serve_and_time(url: str, data: Path, cache_seconds: float, requests: int) -> dict[str, Any]:
    """`saerec serve` with TRENDING_CACHE_SECONDS=cache_seconds: the timings and the target."""
    port = free_port()
    env = {**os.environ, "DATABASE_URL": url, "LOG_LEVEL": "WARNING", "AUTO_MIGRATE": "false"}
    env["MODEL_DIR"] = str(data / "models")
    env["TRENDING_CACHE_SECONDS"] = str(cache_seconds)
    server = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "serve", "--port", str(port), "--workers", "1"],
        env=env,
        cwd=REPO,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_ready(base)
        measured = timings(base, requests)
    finally:
        server.terminate()
        server.wait(timeout=20)
    worst = max(measured[name]["p99_ms"] for name in QUERIES)
    measured["target"] = {
        "max_p99_ms": TARGET_P99_MS,
        "worst_p99_ms": worst,
        "met": worst <= TARGET_P99_MS,
    }
    return measured


if __name__ == "__main__":
    main()
