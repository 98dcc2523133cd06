"""`saerec serve --workers 2` on PostgreSQL: a retrain run by one worker reaches both."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Engine

from app.config import Settings
from app.db import create_db_engine
from tests.conftest import ADMIN_TOKEN, _truncate_all
from tests.factories import TINY_TRAINING, seed_synthetic

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def pg_engine(postgres_url: str) -> Iterator[Engine]:
    _truncate_all(postgres_url)
    engine = create_db_engine(Settings(database_url=postgres_url, _env_file=None))
    yield engine
    engine.dispose()


@pytest.fixture
def server(postgres_url: str, pg_engine: Engine, tmp_path: Path) -> Iterator[str]:
    seed_synthetic(pg_engine)
    port = _free_port()
    env = {
        **os.environ,
        "DATABASE_URL": postgres_url,
        "MODEL_DIR": str(tmp_path / "models"),
        "ADMIN_TOKEN": ADMIN_TOKEN,
        "MODEL_POLL_SECONDS": "0.5",
        "LOG_LEVEL": "WARNING",
        "AUTO_MIGRATE": "false",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "serve", "--port", str(port), "--workers", "2"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        _wait(lambda: httpx.get(f"{base}/readyz", timeout=2).status_code == 200, 60)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()


def _wait(predicate, timeout: float) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError("timed out")


def _versions_by_pid(base: str, tries: int = 60) -> dict[int, str | None]:
    seen: dict[int, str | None] = {}
    for _ in range(tries):  # a fresh connection each time, so both workers get some
        body = httpx.get(f"{base}/readyz", headers={"Connection": "close"}, timeout=5).json()
        seen[body["pid"]] = body["model_version"]
    return seen


def test_two_workers_both_serve_the_model_one_of_them_trained(server: str) -> None:
    before = _versions_by_pid(server)
    assert len(before) == 2, f"expected answers from two worker processes, got {before}"
    assert set(before.values()) == {None}

    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    job = httpx.post(
        f"{server}/admin/retrain", json={"preset": "fast", **TINY_TRAINING}, headers=headers
    )
    assert job.status_code == 202
    second = httpx.post(f"{server}/admin/retrain", headers=headers)
    assert second.status_code == 409  # the other worker process sees the same open job

    job_url = f"{server}/admin/jobs/{job.json()['job_id']}"
    _wait(lambda: httpx.get(job_url, headers=headers).json()["status"] == "succeeded", 120)
    version = httpx.get(job_url, headers=headers).json()["model_version"]

    def both_swapped() -> bool:
        seen = _versions_by_pid(server, tries=20)
        return len(seen) == 2 and set(seen.values()) == {version}

    _wait(both_swapped, 30)
    body = httpx.get(f"{server}/users/1/recommendations").json()
    assert body["strategy"] == "autoencoder" and body["model_version"] == version
