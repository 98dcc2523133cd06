#!/usr/bin/env python
"""Serving benchmark: recommendations vs /healthz on one uvicorn worker, then under a swap.

In one run: imports ml-100k into a fresh SQLite database, trains (or reuses) a model,
starts `saerec serve` as a subprocess, and drives GET /users/{random}/recommendations
and GET /healthz at 16 connections for a fixed time each (wrk when installed, else an
async httpx generator). Then it drives recommendations again while a retrain job runs
and its model is swapped in, counting every non-200 answer. Prints JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "bench-admin-token-0123456789abcdef"
WRK_SCRIPT = """
local counter = 0
local threads = {}
function setup(thread)
  counter = counter + 1
  thread:set("id", counter)
  table.insert(threads, thread)
end
function init(args)
  non200 = 0
  math.randomseed(os.time() * 100 + id)
end
function request()
  if wrk.path == "/healthz" then return wrk.format("GET", "/healthz") end
  return wrk.format("GET", "/users/" .. math.random(1, MAX_USER) .. "/recommendations?n=10")
end
function response(status, headers, body) if status ~= 200 then non200 = non200 + 1 end end
function done(summary, latency, requests)
  local bad = 0
  for _, t in ipairs(threads) do bad = bad + t:get("non200") end
  io.write(string.format(
    'JSONRESULT {"requests": %d, "seconds": %.3f, "non_200": %d, "errors": %d, ' ..
    '"p50_ms": %.3f, "p90_ms": %.3f, "p99_ms": %.3f}\\n',
    summary.requests, summary.duration / 1e6, bad,
    summary.errors.connect + summary.errors.read + summary.errors.write +
    summary.errors.timeout + summary.errors.status,
    latency:percentile(50) / 1000, latency:percentile(90) / 1000,
    latency:percentile(99) / 1000))
end
"""


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def saerec(env: dict[str, str], *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        env=env,
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    )
    return result.stdout


def wait_ready(base: str, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            body = httpx.get(f"{base}/readyz", timeout=2).json()
            if body.get("model_version"):
                return body
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(0.3)
    raise RuntimeError("server did not become ready with a model")


def run_wrk(base: str, path: str, seconds: float, connections: int, max_user: int) -> dict:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(WRK_SCRIPT.replace("MAX_USER", str(max_user)))
    proc = subprocess.run(
        [
            "wrk",
            "-t2",
            f"-c{connections}",
            f"-d{max(1, round(seconds))}s",
            "--latency",
            "-s",
            script.name,
            f"{base}{path}",
        ],
        capture_output=True,
        text=True,
    )
    os.unlink(script.name)
    if proc.returncode != 0:
        raise RuntimeError(f"wrk failed: {proc.stderr or proc.stdout}")
    out = proc.stdout
    line = next(x for x in out.splitlines() if x.startswith("JSONRESULT "))
    result = json.loads(line.removeprefix("JSONRESULT "))
    result["req_per_s"] = round(result["requests"] / result["seconds"], 1)
    return result


async def _httpx_load(
    base: str, path: str, seconds: float, connections: int, max_user: int
) -> dict:
    latencies: list[float] = []
    non200 = 0
    errors = 0
    stop = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=10) as client:

        async def worker() -> None:
            nonlocal non200, errors
            while time.perf_counter() < stop:
                url = (
                    path
                    if path == "/healthz"
                    else (f"/users/{random.randint(1, max_user)}/recommendations?n=10")
                )
                started = time.perf_counter()
                try:
                    response = await client.get(url)
                    if response.status_code != 200:
                        non200 += 1
                except httpx.HTTPError:
                    errors += 1
                latencies.append(time.perf_counter() - started)

        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(connections)))
        elapsed = time.perf_counter() - began
    latencies.sort()

    def pct(q: float) -> float:
        return round(latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000, 3)

    return {
        "requests": len(latencies),
        "seconds": round(elapsed, 3),
        "non_200": non200,
        "errors": errors,
        "p50_ms": pct(0.5),
        "p90_ms": pct(0.9),
        "p99_ms": pct(0.99),
        "req_per_s": round(len(latencies) / elapsed, 1),
    }


def drive(base: str, path: str, seconds: float, connections: int, max_user: int, tool: str) -> dict:
    if tool == "wrk":
        return run_wrk(base, path, seconds, connections, max_user)
    return asyncio.run(_httpx_load(base, path, seconds, connections, max_user))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=None, help="ml-100k folder")
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--preset", default="default")
    parser.add_argument("--retrain-epochs", type=int, default=15)
    parser.add_argument("--tool", choices=["auto", "wrk", "httpx"], default="auto")
    parser.add_argument(
        "--answer-cache",
        type=int,
        default=None,
        help="ANSWER_CACHE_SIZE for the server (0 = every request runs the model)",
    )
    args = parser.parse_args()
    data = args.data or Path(
        os.environ.get("MOVIELENS_DIR") or ROOT.parent / "shared" / "data" / "ml-100k"
    )
    tool = args.tool if args.tool != "auto" else ("wrk" if shutil.which("wrk") else "httpx")
    work = Path(tempfile.mkdtemp(prefix="saerec-bench-"))
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{work}/bench.db",
        "MODEL_DIR": str(work / "models"),
        "ADMIN_TOKEN": TOKEN,
        "LOG_LEVEL": "WARNING",
        "MODEL_POLL_SECONDS": "1",
        **({"ANSWER_CACHE_SIZE": str(args.answer_cache)} if args.answer_cache is not None else {}),
        "TORCH_THREADS": "1",
    }
    server = None
    try:
        log(f"importing {data} ...")
        saerec(env, "import-movielens", str(data), "--no-progress")
        log(f"training preset {args.preset} ...")
        started = time.perf_counter()
        trained = json.loads(saerec(env, "train", "--preset", args.preset, "--no-progress"))
        train_seconds = time.perf_counter() - started
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        server = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve", "--port", str(port), "--workers", "1"],
            env=env,
            cwd=ROOT,
        )
        first = wait_ready(base)
        max_user = 943
        log(f"driving {tool} for {args.seconds}s per route ...")
        drive(base, "/healthz", 2, args.connections, max_user, tool)  # warm-up
        drive(base, "/recommendations", 2, args.connections, max_user, tool)
        recs = drive(base, "/recommendations", args.seconds, args.connections, max_user, tool)
        health = drive(base, "/healthz", args.seconds, args.connections, max_user, tool)

        log("retraining under load ...")
        headers = {"Authorization": f"Bearer {TOKEN}"}
        job = httpx.post(
            f"{base}/admin/retrain",
            headers=headers,
            timeout=10,
            json={
                "preset": args.preset,
                "epochs": args.retrain_epochs,
                "seed": 1,
            },
        ).json()
        swap_load: list[dict] = []
        deadline = time.monotonic() + 600
        status: dict[str, Any] = {}
        while time.monotonic() < deadline:
            swap_load.append(drive(base, "/recommendations", 5, args.connections, max_user, tool))
            status = httpx.get(f"{base}/admin/jobs/{job['job_id']}", headers=headers).json()
            if status["status"] in ("succeeded", "failed"):
                break
        swap_load.append(drive(base, "/recommendations", 3, args.connections, max_user, tool))
        served = httpx.get(f"{base}/readyz").json().get("model_version")
        result = {
            "benchmark": "serving",
            "tool": tool,
            "connections": args.connections,
            "seconds_per_route": args.seconds,
            "answer_cache_size": args.answer_cache if args.answer_cache is not None else "default",
            "model": {
                "preset": args.preset,
                "version": first["model_version"],
                "train_seconds": round(train_seconds, 1),
                "ndcg@10_valid": trained["metrics"].get("valid_ndcg@10"),
            },
            "recommendations": recs,
            "healthz": health,
            "ratio_recommendations_to_healthz": round(recs["req_per_s"] / health["req_per_s"], 3),
            "swap": {
                "job_status": status.get("status"),
                "job_error": status.get("error"),
                "new_version": status.get("model_version"),
                "activated": status.get("metrics", {}).get("activated"),
                "served_after": served,
                "requests": sum(x["requests"] for x in swap_load),
                "non_200": sum(x["non_200"] for x in swap_load),
                "errors": sum(x["errors"] for x in swap_load),
                "p99_ms_max": max(x["p99_ms"] for x in swap_load),
            },
        }
        print(json.dumps(result, indent=2))
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=20)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
