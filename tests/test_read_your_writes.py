"""Read your writes for model activation (API.md): once a retrain job reports its model
active, or an activate call has answered 200, every later answer from every worker comes
from that version; the same for the first model after "no model yet".

Real `saerec serve` subprocesses: one worker on SQLite, two on PostgreSQL. The registry
poll is set to five minutes, so only the per-request read of the active version can pass.
"""

from __future__ import annotations

import itertools
import shutil
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.config import Settings
from app.db import create_db_engine
from app.serving.reader import RunningExperiment
from tests.conftest import ADMIN_TOKEN, _truncate_all
from tests.factories import LENIENT_GATE, TINY_TRAINING, seed_synthetic
from tests.test_multiprocess import pid_of, pinned, running_server

pytestmark = pytest.mark.slow
HEADERS = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
ANSWERS = 200
USERS = 60  # seed_synthetic's users, all with ratings: the model answers each of them
SERVER_ENV = {
    "MODEL_POLL_SECONDS": "300",  # never within a test: requests must find the version
    **{name.upper(): str(value) for name, value in LENIENT_GATE.items()},  # all activate
}


@pytest.fixture(params=[("sqlite", 1), ("postgresql", 2)], ids=["sqlite-1", "postgresql-2"])
def deployment(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, int]:
    """A seeded database and the number of workers to serve it with."""
    backend, workers = request.param
    if backend == "sqlite":
        path = tmp_path / "saerec.db"
        shutil.copy(request.getfixturevalue("sqlite_template"), path)
        url = f"sqlite:///{path}"
    else:
        url = request.getfixturevalue("postgres_url")
        _truncate_all(url)
    engine = create_db_engine(Settings(database_url=url, _env_file=None))
    seed_synthetic(engine)
    engine.dispose()
    return url, workers


def _retrain(admin: httpx.Client, seed: int, clients: dict[int, httpx.Client]) -> tuple[str, float]:
    """Queue a tiny retrain and poll its job until it reports the model active.

    Returns the version and the moment the job said so (monotonic clock). While waiting,
    the pinned connections are kept busy: an idle one would be closed by the server."""
    queued = admin.post("/admin/retrain", json={"preset": "fast", **TINY_TRAINING, "seed": seed})
    assert queued.status_code == 202, queued.text
    url = f"/admin/jobs/{queued.json()['job_id']}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        job = admin.get(url).json()
        if job["status"] == "succeeded":
            assert job["metrics"]["activated"] is True, job["metrics"]
            return job["model_version"], time.monotonic()
        assert job["status"] != "failed", job["error"]
        for client in clients.values():
            client.get("/healthz")
        time.sleep(0.02)
    raise AssertionError(f"job {url} did not finish")


def _answers(
    clients: dict[int, httpx.Client], count: int, predictions: bool = True
) -> list[tuple[int, float, Any]]:
    """`count` answers, round robin over the workers, every tenth one a prediction.

    Each is (worker pid, when it arrived, body)."""
    answers = []
    order = itertools.cycle(sorted(clients))
    for i in range(count):
        pid, user = next(order), 1 + i % USERS
        if predictions and i % 10 == 9:
            response = clients[pid].get(f"/users/{user}/predictions", params={"movie_id": [1, 2]})
        else:
            response = clients[pid].get(f"/users/{user}/recommendations", params={"n": 5})
        assert response.status_code == 200, response.text
        answers.append((pid, time.monotonic(), response.json()))
    for pid, client in clients.items():
        assert pid_of(client) == pid, "a connection moved to another worker"
    return answers


def _assert_all_from(answers: list[tuple[int, float, Any]], version: str, workers: int) -> None:
    wrong = [(pid, body) for pid, _, body in answers if body["model_version"] != version]
    assert not wrong, f"{len(wrong)} of {len(answers)} answers not from {version}: {wrong[:3]}"
    assert all(body.get("strategy", "autoencoder") == "autoencoder" for *_, body in answers)
    assert len({pid for pid, *_ in answers}) == workers


def _report(what: str, since: float, answers: list[tuple[int, float, Any]]) -> str:
    first = answers[0][1] - since
    per_worker: dict[int, float] = {}
    for pid, at, _ in answers:
        per_worker.setdefault(pid, at - since)
    workers = ", ".join(f"{ms * 1000:.0f} ms" for ms in per_worker.values())
    return f"{what}: first answer from it {first * 1000:.0f} ms later (per worker: {workers})"


def test_every_later_answer_comes_from_the_version_just_activated(
    deployment: tuple[str, int], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url, workers = deployment
    lines = [f"read your writes, {url.split(':')[0].split('+')[0]}, {workers} worker(s)"]
    with (
        running_server(url, tmp_path, workers, **SERVER_ENV) as base,
        pinned(base, workers) as clients,
        httpx.Client(base_url=base, headers=HEADERS, timeout=30) as admin,
    ):
        before = _answers(clients, 2 * workers, predictions=False)
        assert {(body["strategy"], body["model_version"]) for *_, body in before} == {
            ("popular", None)
        }

        first, active_at = _retrain(admin, 1, clients)  # the first model after "no model yet"
        answers = _answers(clients, ANSWERS)
        _assert_all_from(answers, first, workers)
        lines.append(_report("first model (job reports it active)", active_at, answers))

        second, active_at = _retrain(admin, 2, clients)  # a newer model replaces it
        assert second != first
        answers = _answers(clients, ANSWERS)
        _assert_all_from(answers, second, workers)
        lines.append(_report("retrained model (job reports it active)", active_at, answers))

        activated = admin.post(f"/admin/models/{first}/activate")  # rollback
        assert activated.status_code == 200, activated.text
        active_at = time.monotonic()
        answers = _answers(clients, ANSWERS)
        _assert_all_from(answers, first, workers)
        lines.append(_report("rollback (activate answered 200)", active_at, answers))
    with capsys.disabled():
        print("\n" + "\n  ".join(lines))


def test_experiment_arms_and_a_promotion_hold_in_every_worker(
    deployment: tuple[str, int], tmp_path: Path
) -> None:
    """Each user gets their arm's version from whichever worker answers (the experiment is
    read with the active version); once a promotion has answered 200 every later answer
    comes from the candidate."""
    url, workers = deployment
    with (
        running_server(url, tmp_path, workers, **SERVER_ENV) as base,
        pinned(base, workers) as clients,
        httpx.Client(base_url=base, headers=HEADERS, timeout=30) as admin,
    ):
        candidate, _ = _retrain(admin, 1, clients)
        control, _ = _retrain(admin, 2, clients)  # the active one
        started = admin.post("/admin/experiments", json={"candidate": candidate, "share": 0.5})
        assert started.status_code == 201, started.text
        experiment_id = started.json()["experiment_id"]
        arm = RunningExperiment(experiment_id, candidate, 0.5).arm_of
        answers = _answers(clients, ANSWERS, predictions=False)
        wrong = [
            body
            for *_, body in answers
            if body["model_version"]
            != (candidate if arm(body["user_id"]) == "candidate" else control)
        ]
        assert not wrong, wrong[:3]
        assert {body["model_version"] for *_, body in answers} == {candidate, control}
        assert len({pid for pid, *_ in answers}) == workers
        promoted = admin.post(f"/admin/experiments/{experiment_id}/stop", json={"promote": True})
        assert promoted.status_code == 200, promoted.text
        _assert_all_from(_answers(clients, ANSWERS), candidate, workers)
