"""Admin: auth, retraining jobs end to end, quality gate, rollback, recovery, replicas."""

from __future__ import annotations

import socket
from datetime import datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, update
from sqlalchemy.orm import Session

from app.config import Settings
from app.db import create_session_factory, transaction
from app.jobs import queue as jobs
from app.jobs import runner
from app.main import create_app
from app.ml.config import config_from
from app.ml.train import EpochReport
from app.models import ModelVersion, TrainingJob, utcnow
from app.services import registry
from tests.factories import LENIENT_GATE, TINY_TRAINING, WEAK_TRAINING, seed_synthetic
from tests.reliability_helpers import wait_for
from tests.test_recommendations_api import train_tiny

RETRAIN_BODY = {"preset": "fast", **TINY_TRAINING}


@pytest.fixture
def seeded(settings: Settings, engine: Engine) -> Settings:
    seed_synthetic(engine)
    return settings.model_copy(update={"model_poll_seconds": 0.2})


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("post", "/admin/retrain"),
        ("get", "/admin/jobs/abc"),
        ("get", "/admin/jobs"),
        ("get", "/admin/stats"),
        ("get", "/admin/models"),
        ("post", "/admin/models/v1/activate"),
    ],
)
def test_admin_routes_need_the_token(seeded: Settings, method: str, path: str) -> None:
    with TestClient(create_app(seeded)) as client:
        assert client.request(method, path).status_code == 401
        bad = client.request(method, path, headers={"Authorization": "Bearer wrong-token"})
        assert bad.status_code == 401
        assert bad.json()["detail"] == "missing or invalid admin token"
    disabled = seeded.model_copy(update={"admin_token": None})
    with TestClient(create_app(disabled)) as client:
        assert client.request(method, path).status_code == 503


def test_retrain_rejects_unknown_or_bad_overrides(seeded: Settings, admin_headers: dict) -> None:
    quiet = seeded.model_copy(update={"run_worker_in_api": False})
    with TestClient(create_app(quiet)) as client:
        for body in ({"epochz": 3}, {"epochs": 0}, {"preset": "nope"}, {"lr": "fast"}):
            response = client.post("/admin/retrain", json=body, headers=admin_headers)
            assert response.status_code == 422, body
            assert response.json()["detail"]


def test_second_retrain_while_one_is_open_is_409(seeded: Settings, admin_headers: dict) -> None:
    quiet = seeded.model_copy(update={"run_worker_in_api": False})
    with TestClient(create_app(quiet)) as client:
        first = client.post("/admin/retrain", json=RETRAIN_BODY, headers=admin_headers)
        assert first.status_code == 202
        assert first.json()["status"] == "queued"
        second = client.post("/admin/retrain", headers=admin_headers)
        assert second.status_code == 409
        assert second.json()["detail"]["job_id"] == first.json()["job_id"]
        job = client.get(f"/admin/jobs/{first.json()['job_id']}", headers=admin_headers).json()
        assert job["status"] == "queued" and job["progress"] == 0
        assert job["overrides"] == RETRAIN_BODY and job["started_at"] is None
        assert datetime.fromisoformat(job["created_at"]).utcoffset() is not None
        schema = client.get("/openapi.json").json()["components"]["schemas"]["JobOut"]
        assert {"type": "string", "format": "date-time"} in schema["properties"]["created_at"][
            "anyOf"
        ]
        assert client.get("/admin/jobs/nope", headers=admin_headers).status_code == 404


def test_a_job_trains_the_config_resolved_when_queued(seeded: Settings, engine: Engine) -> None:
    """The job process's own TRAIN_PRESET does not change what the API queued."""
    factory = create_session_factory(engine)
    api = seeded.model_copy(update={"train_preset": "fast"})
    with transaction(factory) as session:
        queued = jobs.enqueue(session, api, dict(TINY_TRAINING))
        job_id, config = queued.id, queued.config
    assert config == config_from("fast", **TINY_TRAINING).model_dump(mode="json")
    assert jobs.claim_next(factory, "test") == job_id
    runner.run_job(seeded.model_copy(update={"train_preset": "default"}), engine, job_id)
    with factory() as session:
        job = jobs.get_job(session, job_id)
        assert job.status == "succeeded", job.error
        assert job.model_version is not None
        assert registry.get_version(session, job.model_version).config == config


def test_retrain_job_runs_in_a_child_process_and_activates(
    seeded: Settings, admin_headers: dict
) -> None:
    with TestClient(create_app(seeded)) as client:
        assert client.get("/users/1/recommendations").json()["strategy"] == "popular"
        job_id = client.post("/admin/retrain", json=RETRAIN_BODY, headers=admin_headers).json()[
            "job_id"
        ]

        def finished() -> dict | None:
            job = client.get(f"/admin/jobs/{job_id}", headers=admin_headers).json()
            return job if job["status"] in ("succeeded", "failed") else None

        job = wait_for(finished)
        assert job["status"] == "succeeded", job["error"]
        assert job["progress"] == 1.0 and job["epoch"] >= 1
        assert job["metrics"]["activated"] is True
        assert job["phase"] == "refit"  # the last phase, after the epochs
        for phase in ("network", "rating_network", "item_path", "blend", "refit"):
            assert job["metrics"][f"seconds_{phase}"] >= 0.0, phase
        models = client.get("/admin/models", headers=admin_headers).json()
        assert [m["version"] for m in models if m["active"]] == [job["model_version"]]
        wait_for(lambda: client.get("/readyz").json()["model_version"] == job["model_version"])
        body = client.get("/users/1/recommendations").json()
        assert body["strategy"] == "autoencoder"
        assert body["model_version"] == job["model_version"]


def test_retrain_job_searches_within_its_budget(seeded: Settings, admin_headers: dict) -> None:
    """TRAIN_BUDGET_SECONDS: the job shows its trials while running; the version keeps all."""
    searching = seeded.model_copy(update={"train_budget_seconds": 4.0})
    with TestClient(create_app(searching)) as client:
        job_id = client.post("/admin/retrain", json=RETRAIN_BODY, headers=admin_headers).json()[
            "job_id"
        ]
        seen_trials: set[int] = set()

        def finished() -> dict | None:
            job = client.get(f"/admin/jobs/{job_id}", headers=admin_headers).json()
            if job["status"] == "running" and "search" in (job["metrics"] or {}):
                seen_trials.add(job["metrics"]["search"]["trials"])
            return job if job["status"] in ("succeeded", "failed") else None

        job = wait_for(finished, timeout=120)
        assert job["status"] == "succeeded", job["error"]
        assert seen_trials, "a running search shows how many trials it has run"
        search = job["metrics"]["search"]
        assert search["budget_trials"] == len(search["trials"]) >= 1
        assert search["trials"][0]["defaults"] is True
        assert "winner" in search and job["metrics"]["valid_bias_rmse"] is not None
        models = client.get("/admin/models", headers=admin_headers).json()
        stored = next(m for m in models if m["version"] == job["model_version"])
        assert stored["metrics"]["search"]["trials"] == search["trials"]


def test_quality_gate_refuses_a_worse_model(seeded: Settings, engine: Engine) -> None:
    first = train_tiny(seeded, engine)
    weak = train_tiny(seeded, engine, **WEAK_TRAINING)
    assert not weak.activated
    assert "worse" in weak.gate
    verdict = weak.metrics["quality_gate"]
    assert verdict["passed"] is False and verdict["active"]["version"] == first.version
    assert verdict["candidate"]["ndcg@10"] < verdict["active"]["ndcg@10"]
    with TestClient(create_app(seeded.model_copy(update={"run_worker_in_api": False}))) as client:
        assert client.get("/readyz").json()["model_version"] == first.version


def test_quality_gate_lets_an_equal_model_in(
    seeded: Settings, engine: Engine, admin_headers: dict
) -> None:
    """Both figures of the verdict go on the job and on the model version."""
    first = train_tiny(seeded, engine)
    again = train_tiny(seeded, engine)  # same data, same settings: the same model
    assert again.activated, again.gate
    verdict = again.metrics["quality_gate"]
    assert verdict["candidate"] == {k: verdict["active"][k] for k in ("ndcg@10", "rmse")}
    # scored as validated: the figures training chose the blend with, never the refit's
    assert verdict["candidate"]["rmse"] == pytest.approx(again.metrics["valid_rmse"], abs=1e-4)
    assert verdict["active"]["version"] == first.version
    with TestClient(create_app(seeded.model_copy(update={"run_worker_in_api": False}))) as client:
        models = client.get("/admin/models", headers=admin_headers).json()
        stored = next(m for m in models if m["version"] == again.version)
        assert stored["active"] and stored["metrics"]["quality_gate"]["passed"] is True


def test_rollback_by_activating_an_older_version(
    seeded: Settings, engine: Engine, admin_headers: dict
) -> None:
    lenient = seeded.model_copy(update={**LENIENT_GATE, "run_worker_in_api": False})
    old = train_tiny(lenient, engine)
    new = train_tiny(lenient, engine, seed=5)
    with TestClient(create_app(lenient)) as client:
        assert client.get("/users/1/recommendations").json()["model_version"] == new.version
        response = client.post(f"/admin/models/{old.version}/activate", headers=admin_headers)
        assert response.status_code == 200
        assert response.json()["active"] is True
        assert client.get("/users/1/recommendations").json()["model_version"] == old.version
        models = client.get("/admin/models", headers=admin_headers).json()
        assert {m["version"]: m["active"] for m in models} == {
            old.version: True,
            new.version: False,
        }
        assert client.post("/admin/models/nope/activate", headers=admin_headers).status_code == 404


def test_activation_loads_the_version_before_it_commits(
    seeded: Settings, engine: Engine, admin_headers: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A large model takes seconds to load: the activating process loads it while the old
    one still answers, so when the commit lands its requests find it loaded, not a stall.
    An unknown version loads nothing and leaves no load error behind."""
    lenient = seeded.model_copy(update={**LENIENT_GATE, "run_worker_in_api": False})
    old = train_tiny(lenient, engine)
    new = train_tiny(lenient, engine, seed=5)
    loaded_at_commit: list[bool] = []
    commit = registry.activate

    with TestClient(create_app(lenient)) as client:
        recommender = client.app.state.recommender

        def watched_activate(session: Session, version: str) -> ModelVersion:
            loaded_at_commit.append(version in recommender.models.loaded_versions)
            assert recommender.version == new.version  # still serving the old active one
            return commit(session, version)

        monkeypatch.setattr(registry, "activate", watched_activate)
        assert client.post("/admin/models/nope/activate", headers=admin_headers).status_code == 404
        assert recommender.model_error is None
        response = client.post(f"/admin/models/{old.version}/activate", headers=admin_headers)
        assert response.status_code == 200
        assert recommender.version == old.version
    assert loaded_at_commit == [True]


def test_each_epoch_puts_progress_and_an_eta_on_the_job(
    seeded: Settings, engine: Engine, admin_headers: dict
) -> None:
    """The ETA is the remaining epochs at the mean epoch time so far (early stopping may end
    sooner); the API shows it with the epoch's figures."""
    factory = create_session_factory(engine)
    with transaction(factory) as session:
        job_id = jobs.enqueue(session, seeded, {"preset": "fast"}).id
    report = runner.epoch_reporter(factory, job_id)
    report(EpochReport(1, 10, 1.5, 0.95, 0.20, 2.0))
    report(EpochReport(2, 10, 1.2, 0.93, 0.25, 4.0))
    with TestClient(create_app(seeded.model_copy(update={"run_worker_in_api": False}))) as client:
        job = client.get(f"/admin/jobs/{job_id}", headers=admin_headers).json()
        assert (job["epoch"], job["epochs"], job["phase"]) == (2, 10, "network")
        assert job["progress"] == runner.overall_progress("network", 2, 10) == 0.11
        assert job["metrics"]["eta_seconds"] == 24.0  # 8 epochs left at 3 s
        assert job["metrics"]["valid_rmse"] == 0.93
        assert job["metrics"]["valid_mae"] is None  # not measured: null, never NaN
        report(EpochReport(10, 10, 1.0, 0.9, 0.3, 3.0))
        job = client.get(f"/admin/jobs/{job_id}", headers=admin_headers).json()
        assert job["progress"] == 0.55 and job["metrics"]["eta_seconds"] == 0.0


def test_the_job_progress_moves_through_every_named_phase(
    seeded: Settings, engine: Engine, admin_headers: dict
) -> None:
    """After the epochs, the rating network, the item path, the blend and the refit each
    say their name on the job, and the progress only grows, up to 1 at the refit's end."""
    from app.ml.train import PHASES, PhaseReport

    factory = create_session_factory(engine)
    with transaction(factory) as session:
        job_id = jobs.enqueue(session, seeded, {"preset": "fast"}).id
    report = runner.phase_reporter(factory, job_id)
    seen: list[tuple[str, float]] = []
    with TestClient(create_app(seeded.model_copy(update={"run_worker_in_api": False}))) as client:
        for phase in PHASES[1:]:
            for step in (0, 1, 3):
                report(PhaseReport(phase, step, 3))
                job = client.get(f"/admin/jobs/{job_id}", headers=admin_headers).json()
                seen.append((job["phase"], job["progress"]))
    assert [phase for phase, _ in seen[::3]] == list(PHASES[1:])
    progress = [value for _, value in seen]
    assert progress == sorted(progress) and progress[0] == 0.55 and progress[-1] == 1.0


def test_stale_running_job_is_failed_on_start(seeded: Settings, engine: Engine) -> None:
    with Session(engine) as session, session.begin():
        session.add(
            TrainingJob(
                id="stale-job",
                status="running",
                overrides={},
                started_at=utcnow(),
                heartbeat_at=utcnow(),
                worker=f"{socket.gethostname()}:2147483646",
            )
        )
    with TestClient(create_app(seeded)) as client:

        def failed() -> dict | None:
            job = client.get(
                "/admin/jobs/stale-job",
                headers={"Authorization": f"Bearer {seeded.admin_token_value()}"},
            )
            return job.json() if job.json()["status"] == "failed" else None

        job = wait_for(failed, timeout=20)
        assert "gone" in job["error"]
        fresh = client.post(
            "/admin/retrain",
            json=RETRAIN_BODY,
            headers={"Authorization": f"Bearer {seeded.admin_token_value()}"},
        )
        assert fresh.status_code == 202  # the dead job no longer blocks the queue


def test_two_app_instances_both_see_an_activation(
    seeded: Settings, engine: Engine, admin_headers: dict
) -> None:
    lenient = seeded.model_copy(update={**LENIENT_GATE, "run_worker_in_api": False})
    old = train_tiny(lenient, engine)
    new = train_tiny(lenient, engine, seed=9)
    with TestClient(create_app(lenient)) as one, TestClient(create_app(lenient)) as two:
        assert one.get("/readyz").json()["model_version"] == new.version
        assert two.get("/readyz").json()["model_version"] == new.version
        assert (
            one.post(f"/admin/models/{old.version}/activate", headers=admin_headers).status_code
            == 200
        )
        wait_for(lambda: two.get("/readyz").json()["model_version"] == old.version, timeout=10)
        assert two.get("/users/2/recommendations").json()["model_version"] == old.version


def test_only_one_active_version_even_when_forced(seeded: Settings, engine: Engine) -> None:
    lenient = seeded.model_copy(update={**LENIENT_GATE})
    train_tiny(lenient, engine)
    other = train_tiny(lenient, engine, seed=2)
    from sqlalchemy.exc import IntegrityError

    with pytest.raises(IntegrityError), Session(engine) as session, session.begin():
        session.execute(update(ModelVersion).values(is_active=True))
    with Session(engine) as session:
        active = [v.version for v in session.query(ModelVersion).filter_by(is_active=True)]
    assert active == [other.version]


def test_jobs_are_listed_newest_first(
    seeded: Settings, engine: Engine, admin_headers: dict
) -> None:
    """GET /admin/jobs: the dashboard's list of recent jobs, whatever their status."""
    quiet = seeded.model_copy(update={"run_worker_in_api": False})
    factory = create_session_factory(engine)
    ids: list[str] = []
    for n in range(3):
        with transaction(factory) as session:
            ids.append(jobs.enqueue(session, quiet, {"epochs": n + 1}).id)
        jobs.fail_job(factory, ids[-1], "made room for the next one")
    start = utcnow()
    with transaction(factory) as session:  # distinct times, whatever the clock's resolution
        for n, job_id in enumerate(ids):
            at = start + timedelta(seconds=n)
            session.execute(
                update(TrainingJob).where(TrainingJob.id == job_id).values(created_at=at)
            )
    with TestClient(create_app(quiet)) as client:
        listed = client.get("/admin/jobs", headers=admin_headers)
        assert listed.status_code == 200
        assert [job["job_id"] for job in listed.json()] == ids[::-1]
        newest = listed.json()[0]
        assert newest["status"] == "failed" and newest["epochs"] == 3
        assert newest["error"] == "made room for the next one"
        two = client.get("/admin/jobs", params={"limit": 2}, headers=admin_headers)
        assert [job["job_id"] for job in two.json()] == ids[:0:-1]
        for bad in ("0", "101", "x"):
            answer = client.get("/admin/jobs", params={"limit": bad}, headers=admin_headers)
            assert answer.status_code == 422, bad


def test_stats_count_the_data_and_the_requests(seeded: Settings, admin_headers: dict) -> None:
    """GET /admin/stats: table counts, and request figures from this process's registry."""
    quiet = seeded.model_copy(update={"run_worker_in_api": False})

    def served(stats: dict, template: str) -> int:
        routes = stats["requests"]["routes"]
        return next((r["requests"] for r in routes if r["route"] == template), 0)

    with TestClient(create_app(quiet)) as client:
        before = client.get("/admin/stats", headers=admin_headers).json()
        for _ in range(3):
            assert client.get("/users/1/ratings").status_code == 200
        assert client.get("/users/0/ratings").status_code == 422
        after = client.get("/admin/stats", headers=admin_headers).json()
    assert (after["ratings"], after["users"], after["movies"]) == (480, 60, 40)
    assert after["counts_estimated"] is False
    assert after["active_version"] is None and after["served_version"] is None
    assert after["jobs"] == {"queued": 0, "running": 0, "succeeded": 0, "failed": 0}
    requests, earlier = after["requests"], before["requests"]
    assert requests["scope"] == "process"
    assert (
        served(after, "/users/{user_id}/ratings") - served(before, "/users/{user_id}/ratings") == 4
    )
    assert requests["total"] - earlier["total"] == 5  # the four, and the first stats call
    assert requests["client_errors"] - earlier["client_errors"] == 1
    assert requests["mean_ms"] > 0
    assert 0 < requests["p50_ms"] <= requests["p95_ms"] <= requests["p99_ms"]
    counts = [r["requests"] for r in requests["routes"]]
    assert counts == sorted(counts, reverse=True)


def test_each_version_keeps_its_learning_curve(
    seeded: Settings, engine: Engine, admin_headers: dict
) -> None:
    """The registry row holds each epoch's figures: the dashboard draws them from there."""
    outcome = train_tiny(seeded, engine)
    assert "history" not in outcome.metrics  # `saerec train` prints the summary only
    quiet = seeded.model_copy(update={"run_worker_in_api": False})
    with TestClient(create_app(quiet)) as client:
        (model,) = client.get("/admin/models", headers=admin_headers).json()
    metrics = model["metrics"]
    history = metrics["history"]
    assert [epoch["epoch"] for epoch in history] == list(range(1, metrics["epochs_run"] + 1))
    for epoch in history:
        assert set(epoch) == {"epoch", "train_loss", "valid_ndcg", "valid_rmse", "valid_mae"}
        assert all(isinstance(epoch[k], float) for k in ("train_loss", "valid_ndcg", "valid_rmse"))
        assert 0 <= epoch["valid_ndcg"] <= 1 and epoch["valid_rmse"] > 0
