#!/usr/bin/env python
"""First answers after an activation, on PostgreSQL with a ~10k-movie catalog.

In one run: a fresh PostgreSQL database, a seeded synthetic data set (bench_serving's
generator, 9,742 movies by default), a first model, and `saerec serve --workers 2`. Then
one client asks for recommendations one request at a time while `saerec train` registers
a second model, waits for the servers' polls to preload it, and activates it. Printed: the
latency of the answers before the switch, and of the first answers from the new version
(the issue's target: within 0.2 s of the activation, i.e. no answer waits for a load).
With ``--cold`` the servers poll too rarely to preload (MODEL_POLL_SECONDS=300, the
activation then waits the capped 10 s), which shows the cost of loading on demand.

    .venv/bin/python scripts/bench_activation.py [--movies 9742] [--cold]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
from bench_serving import free_port, saerec, wait_ready, write_synthetic  # noqa: E402

ADMIN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--movies", type=int, default=9_742)
    parser.add_argument("--users", type=int, default=2_000)
    parser.add_argument("--ratings", type=int, default=200_000)
    parser.add_argument("--cold", action="store_true", help="servers that never preload")
    args = parser.parse_args()
    name = f"saerec_bench_activation_{os.getpid()}"
    work = Path(tempfile.mkdtemp(prefix="saerec-activation-"))
    with psycopg.connect(ADMIN, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    env = {
        **os.environ,
        "DATABASE_URL": f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}",
        "MODEL_DIR": str(work / "models"),
        "LOG_LEVEL": "WARNING",
        "TORCH_THREADS": "1",
        "RUN_WORKER_IN_API": "false",
        "ANSWER_CACHE_SIZE": "0",
        "QUALITY_GATE_MARGIN": "10",  # the second model is activated whatever its figures
        "QUALITY_GATE_NDCG_MARGIN": "0.99",
    }
    server = None
    try:
        write_synthetic(work / "data", args.users, args.movies, args.ratings)
        saerec(env, "import-movielens", str(work / "data"), "--no-progress")
        train = ["train", "--preset", "fast", "--no-progress"]
        first = json.loads(saerec(env, *train))
        port = free_port()
        serve_env = {**env, "MODEL_POLL_SECONDS": "300" if args.cold else "1"}
        server = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve", "--port", str(port), "--workers", "2"],
            env=serve_env,
            cwd=ROOT,
        )
        base = f"http://127.0.0.1:{port}"
        wait_ready(base)
        answers: list[tuple[float, str, float]] = []  # (sent at, version, seconds)
        stop = threading.Event()

        def client() -> None:
            with httpx.Client(base_url=base, timeout=30) as http:
                user = 0
                while not stop.is_set():
                    user = user % args.users + 1
                    sent = time.perf_counter()
                    body = http.get(f"/users/{user}/recommendations?n=10").json()
                    answers.append((sent, body["model_version"], time.perf_counter() - sent))

        thread = threading.Thread(target=client)
        thread.start()
        time.sleep(3)
        # the servers' polls preload it while `train` waits (`preload_seconds`)
        second = json.loads(saerec({**env, "MODEL_POLL_SECONDS": "1"}, *train))
        time.sleep(3)
        stop.set()
        thread.join()
        old = [s for _, v, s in answers if v == first["version"]]
        new = [s for _, v, s in answers if v == second["version"]]
        old.sort()
        result = {
            "benchmark": "activation",
            "database": "postgresql",
            "movies": args.movies,
            "workers": 2,
            "preload": not args.cold,
            "activated": second["activated"],
            "answers_before": len(old),
            "before_p50_ms": round(old[len(old) // 2] * 1e3, 2) if old else None,
            "before_max_ms": round(old[-1] * 1e3, 2) if old else None,
            "answers_after": len(new),
            "first_answers_after_ms": [round(s * 1e3, 2) for s in new[:10]],
            "first_20_after_max_ms": round(max(new[:20]) * 1e3, 2) if new else None,
            "target_ms": 200,
            "target_met": bool(new) and max(new[:20]) <= 0.2,
        }
        print(json.dumps(result, indent=2))
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)
        with psycopg.connect(ADMIN, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
