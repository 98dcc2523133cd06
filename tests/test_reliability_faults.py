"""Injected faults: a training process killed with SIGKILL, a half-written artifact, and a
corrupted or missing artifact for the active version. Serving must carry on untouched."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, update
from sqlalchemy.orm import Session

from app.config import Settings
from app.jobs.training import TrainingOutcome
from app.main import create_app
from app.ml.artifacts import ArtifactStore
from app.models import ModelVersion
from tests.factories import TINY_TRAINING, WEAK_TRAINING, damage_stored_artifact, seed_synthetic
from tests.reliability_helpers import wait_for
from tests.test_recommendations_api import train_tiny

ROOT = Path(__file__).resolve().parents[1]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def model_files(directory: Path) -> dict[str, str]:
    """Every file (hidden temp files included) under the model directory, with its hash."""
    return {
        str(p.relative_to(directory)): sha256(p)
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def trained(settings: Settings, engine: Engine) -> tuple[Settings, TrainingOutcome]:
    seed_synthetic(engine)
    fast = settings.model_copy(update={"model_poll_seconds": 0.1})
    outcome = train_tiny(fast, engine)
    assert outcome.activated
    return fast, outcome


def test_kill_9_mid_training_fails_the_job_and_leaves_serving_untouched(
    settings: Settings, engine: Engine, admin_headers: dict
) -> None:
    """PostgreSQL here (the job queue code is shared; bench_reliability.py runs SQLite too)."""
    if settings.is_sqlite:
        pytest.skip("kept to PostgreSQL in CI for time; scripts/bench_reliability.py covers both")
    seed_synthetic(engine)
    settings = settings.model_copy(update={"model_poll_seconds": 0.1})
    active = train_tiny(settings, engine)
    model_dir = Path(settings.model_dir)
    files_before = model_files(model_dir)
    endless = {"preset": "fast", **TINY_TRAINING, "epochs": 100_000, "patience": 100_000}
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        job_id = client.post("/admin/retrain", json=endless, headers=admin_headers).json()["job_id"]

        def training() -> dict | None:
            job = client.get(f"/admin/jobs/{job_id}", headers=admin_headers).json()
            return job if job["status"] == "running" and job["epoch"] >= 2 else None

        wait_for(training, timeout=90)
        child = client.app.state.launcher.child
        assert child is not None and child.poll() is None
        os.kill(child.pid, signal.SIGKILL)

        def finished() -> dict | None:
            job = client.get(f"/admin/jobs/{job_id}", headers=admin_headers).json()
            return job if job["status"] not in ("queued", "running") else None

        job = wait_for(finished, timeout=30)
        assert job["status"] == "failed"
        assert "SIGKILL" in job["error"]
        assert job["model_version"] is None and job["finished_at"]
        models = client.get("/admin/models", headers=admin_headers).json()
        assert [(m["version"], m["active"]) for m in models] == [(active.version, True)]
        body = client.get("/users/1/recommendations").json()
        assert body["strategy"] == "autoencoder" and body["model_version"] == active.version
        assert client.get("/readyz").json()["detail"] is None
        client.app.state.launcher.stop()  # no further jobs: the queue check needs no worker
        again = client.post("/admin/retrain", json=endless, headers=admin_headers)
        assert again.status_code == 202  # the dead job no longer blocks the queue
    assert model_files(model_dir) == files_before  # nothing new, nothing half-written


def test_a_writer_killed_mid_save_never_exposes_a_partial_artifact(tmp_path: Path) -> None:
    """The store writes a hidden temp file and renames it: kill -9 before the rename."""
    script = textwrap.dedent(
        f"""
        import sys, time, torch
        import numpy as np
        from app.ml import artifacts
        from app.ml.data import IdMap
        from app.ml.hybrid import BiasTerms, Blend, HybridModel
        from app.ml.config import config_from
        from app.ml.model import StackedAutoencoder

        def slow_fsync(fd):
            print("writing", flush=True)  # the bytes are in the temp file, not yet renamed
            time.sleep(60)

        artifacts.os.fsync = slow_fsync
        config = config_from("fast", hidden=[4])
        ids = IdMap(np.arange(1, 6))
        net = StackedAutoencoder(5, config)
        bias = BiasTerms(3.0, np.zeros(5, np.float32), 5.0)
        model = HybridModel(config, net, net, None, bias, Blend(), np.zeros(5), (1.0, 5.0))
        store = artifacts.ArtifactStore({str(tmp_path)!r})
        store.save(model, ids, artifacts.ArtifactMeta("v-killed"))
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "writing"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(30)
    store = ArtifactStore(tmp_path)
    assert not store.path("v-killed").exists()  # the one path a reader ever opens
    leftovers = list(store.folder("v-killed").iterdir())
    assert leftovers and all(p.name.startswith(".") and p.name.endswith(".tmp") for p in leftovers)


def _damage_file(path: Path, how: str) -> None:
    if how == "truncate":
        path.write_bytes(path.read_bytes()[:200])
    elif how == "garbage":
        path.write_bytes(os.urandom(4096))
    else:
        path.unlink()


def test_damaged_artifact_heals_or_falls_back_to_popular_and_says_why(
    trained: tuple[Settings, TrainingOutcome], engine: Engine, capfd: pytest.CaptureFixture
) -> None:
    """A damaged file heals from the database copy; with both copies unusable (deleted or
    truncated file, corrupt or absent stored bytes) serving falls back to popular and
    /readyz and the log say why."""
    settings, active = trained
    quiet = settings.model_copy(update={"run_worker_in_api": False})
    artifact = next(Path(settings.model_dir).rglob(f"{active.version}*.pt"))
    good = sha256(artifact)
    _damage_file(artifact, "garbage")
    with TestClient(create_app(quiet), raise_server_exceptions=False) as client:
        body = client.get("/users/1/recommendations").json()
        assert body["strategy"] == "autoencoder" and body["model_version"] == active.version
        assert client.get("/readyz").json()["detail"] is None
    assert good in {sha256(p) for p in Path(settings.model_dir).rglob(f"{active.version}*.pt")}

    for file_damage, stored in (("delete", b"corrupt"), ("truncate", None)):
        for path in Path(settings.model_dir).rglob(f"{active.version}*.pt"):
            _damage_file(path, file_damage)
        damage_stored_artifact(engine, active.version, stored)
        with TestClient(create_app(quiet), raise_server_exceptions=False) as client:
            body = client.get("/users/1/recommendations", params={"n": 5})
            assert body.status_code == 200
            assert body.json()["strategy"] == "popular" and len(body.json()["items"]) == 5
            ready = client.get("/readyz")
            assert ready.status_code == 200 and ready.json()["database"] == "ok"
            assert active.version in ready.json()["detail"]
            predictions = client.get("/users/1/predictions", params={"movie_id": [1]})
            assert predictions.status_code == 503
            assert active.version in predictions.json()["detail"]
            assert client.get("/movies/1").status_code == 200
        captured = capfd.readouterr()
        assert "model_load_failed" in captured.out + captured.err


def _activate(engine: Engine, version: str) -> None:
    """What another replica's POST /admin/models/{version}/activate does to the registry."""
    with Session(engine) as session, session.begin():
        session.execute(update(ModelVersion).values(is_active=False))
        session.execute(
            update(ModelVersion).where(ModelVersion.version == version).values(is_active=True)
        )


def test_switching_to_a_broken_version_keeps_the_loaded_model(
    trained: tuple[Settings, TrainingOutcome], engine: Engine
) -> None:
    settings, first = trained
    quiet = settings.model_copy(update={"run_worker_in_api": False})
    second = train_tiny(quiet, engine, **WEAK_TRAINING)  # the gate keeps it inactive
    assert not second.activated
    next(Path(settings.model_dir).rglob(f"{second.version}*.pt")).write_bytes(b"corrupt")
    damage_stored_artifact(engine, second.version, b"corrupt")
    with TestClient(create_app(quiet), raise_server_exceptions=False) as client:
        assert client.get("/readyz").json()["model_version"] == first.version
        _activate(engine, second.version)
        wait_for(lambda: client.get("/readyz").json()["detail"], timeout=30)
        ready = client.get("/readyz").json()
        assert ready["model_version"] == first.version  # still serving the good one
        assert second.version in ready["detail"]
        body = client.get("/users/1/recommendations").json()
        assert body["strategy"] == "autoencoder" and body["model_version"] == first.version
        _activate(engine, first.version)  # roll back: the stale error must clear
        wait_for(lambda: client.get("/readyz").json()["detail"] is None, timeout=30)


def test_a_failed_commit_is_never_acknowledged(
    settings: Settings, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The commit runs before the response: if it fails the client hears 503, not 201."""
    from sqlalchemy import event
    from sqlalchemy.exc import OperationalError

    from tests.factories import add_catalog

    add_catalog(engine)
    quiet = settings.model_copy(update={"run_worker_in_api": False})
    with TestClient(create_app(quiet), raise_server_exceptions=False) as client:
        sessions = client.app.state.session_factory

        def lose_connection(_session: Session) -> None:
            raise OperationalError("COMMIT", {}, ConnectionError("server closed the connection"))

        event.listen(sessions, "before_commit", lose_connection)
        try:
            body = {"user_id": 1, "movie_id": 1, "rating": 4.0}
            response = client.post("/ratings", json=body)
            batch = client.post("/ratings/batch", json={"ratings": [body]})
        finally:
            event.remove(sessions, "before_commit", lose_connection)
        assert response.status_code == 503, response.text
        assert batch.status_code == 503, batch.text
        assert client.get("/users/1/ratings").json()["total"] == 0
        assert client.post("/ratings", json=body).status_code == 201
