"""`saerec serve --workers 2` on PostgreSQL: a retrain run by one worker reaches both, and
/metrics adds up every worker's counts whichever worker answers the scrape.

The helpers here start real `saerec serve` subprocesses and pin HTTP connections to
worker processes (a keep-alive connection stays with the process that accepted it, and
/readyz names that process), so tests can address each worker on purpose.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
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


@contextlib.contextmanager
def running_server(database_url: str, workdir: Path, workers: int, **env: str) -> Iterator[str]:
    """`saerec serve` in a subprocess until the block ends; yields its base URL."""
    port = _free_port()
    environment = {
        **os.environ,
        "DATABASE_URL": database_url,
        "MODEL_DIR": str(workdir / "models"),
        "ADMIN_TOKEN": ADMIN_TOKEN,
        "MODEL_POLL_SECONDS": "0.5",
        "LOG_LEVEL": "WARNING",
        "AUTO_MIGRATE": "false",
        **env,
    }
    command = [sys.executable, "-m", "app.cli", "serve", "--port", str(port)]
    log = workdir / f"server-{port}.log"
    with log.open("wb") as stderr:
        process = subprocess.Popen(
            [*command, "--workers", str(workers)],
            env=environment,
            cwd=workdir,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        try:
            _wait(lambda: httpx.get(f"{base}/readyz", timeout=2).status_code == 200, 60)
        except AssertionError:
            raise AssertionError(f"server did not start:\n{log.read_text()[-3000:]}") from None
        yield base
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def pinned_clients(base: str, workers: int, tries: int = 60) -> dict[int, httpx.Client]:
    """One single-connection client per worker process, keyed by the worker's pid."""
    pinned: dict[int, httpx.Client] = {}
    for _ in range(tries):
        client = httpx.Client(
            base_url=base,
            timeout=30,
            limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
        )
        pid = pid_of(client)
        if pid in pinned:
            client.close()
        else:
            pinned[pid] = client
        if len(pinned) == workers:
            return pinned
    for client in pinned.values():
        client.close()
    raise AssertionError(f"reached {len(pinned)} of {workers} worker processes")


def pid_of(client: httpx.Client) -> int:
    """The process behind this client's (kept-alive) connection."""
    return int(client.get("/readyz").json()["pid"])


@contextlib.contextmanager
def pinned(base: str, workers: int) -> Iterator[dict[int, httpx.Client]]:
    clients = pinned_clients(base, workers)
    try:
        yield clients
    finally:
        for client in clients.values():
            client.close()


@pytest.fixture
def pg_engine(postgres_url: str) -> Iterator[Engine]:
    _truncate_all(postgres_url)
    engine = create_db_engine(Settings(database_url=postgres_url, _env_file=None))
    yield engine
    engine.dispose()


@pytest.fixture
def server(postgres_url: str, pg_engine: Engine, tmp_path: Path) -> Iterator[str]:
    seed_synthetic(pg_engine)
    with running_server(postgres_url, tmp_path, workers=2) as base:
        yield base


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


def _requests_counted(client: httpx.Client, route: str) -> float:
    """saerec_http_requests_total for GET `route` with status 200, as one scrape says."""
    text = client.get("/metrics").text
    for family in text_string_to_metric_families(text):
        if family.name != "saerec_http_requests":
            continue
        return sum(
            sample.value
            for sample in family.samples
            if sample.name == "saerec_http_requests_total"
            and sample.labels.get("route") == route
            and sample.labels.get("status") == "200"
        )
    return 0.0


def test_metrics_add_up_across_workers_in_a_fresh_folder_per_start(
    postgres_url: str, pg_engine: Engine, tmp_path: Path
) -> None:
    parent = tmp_path / "metrics"
    env = {"METRICS_DIR": str(parent)}
    with running_server(postgres_url, tmp_path, 2, **env) as base, pinned(base, 2) as clients:
        pids = sorted(clients)
        share = {pids[0]: 23, pids[1]: 14}  # uneven, so one worker's count cannot pass
        for pid, count in share.items():
            for _ in range(count):
                assert clients[pid].get("/healthz").status_code == 200
        assert [pid_of(clients[pid]) for pid in pids] == pids  # still one worker each
        for _ in range(3):  # every worker's scrape sees every worker's requests
            for pid in pids:
                assert _requests_counted(clients[pid], "/healthz") == sum(share.values())
        folders = list(parent.iterdir())
        assert len(folders) == 1 and list(folders[0].glob("*.db")), "one folder per start"
    assert list(parent.iterdir()) == [], "removed when the server stops"
