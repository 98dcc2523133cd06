"""Scheduled retraining: RETRAIN_INTERVAL_SECONDS / RETRAIN_MIN_NEW_RATINGS queue jobs with
trigger "schedule" from the job launchers, one open job at most, through the same gate."""

from __future__ import annotations

import io
import json
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY
from pydantic import ValidationError
from sqlalchemy import Engine, func, select, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.db import create_session_factory, transaction
from app.jobs import queue as jobs
from app.jobs import schedule
from app.jobs.launcher import JobLauncher
from app.jobs.schedule import RetrainSchedule
from app.jobs.training import resolve_config
from app.main import create_app
from app.models import ModelVersion, TrainingJob, utcnow
from app.observability import configure_logging, get_logger
from app.services import ratings as ratings_service
from app.services.ratings import count_ratings, upsert_ratings_batch
from tests.factories import LENIENT_GATE, seed_synthetic
from tests.reliability_helpers import wait_for
from tests.test_recommendations_api import train_tiny

SEEDED_RATINGS = 60 * 8  # seed_synthetic's defaults: 60 users, 8 ratings each


@pytest.fixture
def seeded(settings: Settings, engine: Engine) -> Settings:
    seed_synthetic(engine)
    return settings.model_copy(update={"run_worker_in_api": False, "model_poll_seconds": 0.2})


@pytest.fixture
def factory(engine: Engine) -> sessionmaker[Session]:
    return create_session_factory(engine)


class Clock:
    """The real UTC time moved by `offset`: the schedule's "now" without any waiting."""

    def __init__(self) -> None:
        self.offset = timedelta()

    def __call__(self) -> datetime:
        return utcnow() + self.offset


def scheduled(settings: Settings, clock: Clock | None = None, **update: object) -> RetrainSchedule:
    """A schedule that checks on every poll (the launcher's default waits up to a minute)."""
    return RetrainSchedule(settings.model_copy(update=update), 0, clock or utcnow)


def add_ratings(engine: Engine, count: int, first_user: int = 1000) -> None:
    """`count` new ratings by new users, 8 each (movies 1..8, 9..16, ...)."""
    rows = [
        {"user_id": first_user + i // 8, "movie_id": 1 + i % 40, "rating": 4.0, "timestamp": i + 1}
        for i in range(count)
    ]
    with Session(engine) as session, session.begin():
        upsert_ratings_batch(session, rows, 100_000)


def add_version(engine: Engine, name: str, ratings: int, active: bool, age_s: float) -> None:
    """A registry row only (no artifact): all the schedule reads is data_size."""
    with Session(engine) as session, session.begin():
        session.add(
            ModelVersion(
                version=name,
                created_at=utcnow() - timedelta(seconds=age_s),
                config={},
                metrics={},
                data_size={"users": 60, "movies": 40, "ratings": ratings},
                data_fingerprint="test",
                artifact_path="unused",
                is_active=active,
            )
        )


def all_jobs(factory: sessionmaker[Session]) -> list[TrainingJob]:
    with factory() as session:
        return list(session.scalars(select(TrainingJob).order_by(TrainingJob.created_at)))


def finish(
    factory: sessionmaker[Session],
    job_id: str,
    status: str,
    activated: bool,
    at: datetime | None = None,
) -> None:
    """End a job as its process would have (at `at`, by default now)."""
    with transaction(factory) as session:
        session.execute(
            update(TrainingJob)
            .where(TrainingJob.id == job_id)
            .values(status=status, metrics={"activated": activated}, finished_at=at or utcnow())
        )


def test_settings_are_read_from_the_environment_and_checked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RETRAIN_INTERVAL_SECONDS", "3600")
    monkeypatch.setenv("RETRAIN_MIN_NEW_RATINGS", "5000")
    settings = Settings(_env_file=None)
    assert (settings.retrain_interval_seconds, settings.retrain_min_new_ratings) == (3600, 5000)
    assert RetrainSchedule(settings).check_seconds == 60  # a long interval: once a minute
    short = settings.model_copy(update={"retrain_interval_seconds": 0.5})
    assert RetrainSchedule(short).check_seconds == 0.5
    for bad in ({"retrain_interval_seconds": 0}, {"retrain_min_new_ratings": 0}):
        with pytest.raises(ValidationError):
            Settings(_env_file=None, **bad)
    monkeypatch.delenv("RETRAIN_INTERVAL_SECONDS")
    monkeypatch.delenv("RETRAIN_MIN_NEW_RATINGS")
    assert not RetrainSchedule(Settings(_env_file=None)).enabled


def test_nothing_is_scheduled_without_the_settings(
    seeded: Settings, engine: Engine, factory: sessionmaker[Session]
) -> None:
    assert scheduled(seeded).poll(factory) is None
    launcher = JobLauncher(seeded, engine, child_env=seeded.as_env())
    assert not launcher.schedule.enabled
    assert launcher.run_once() is False  # the launcher's own poll queues nothing either
    assert all_jobs(factory) == []


def test_an_interval_queues_a_job_with_trigger_schedule(
    seeded: Settings, factory: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    stream = io.StringIO()
    configure_logging("INFO", json_logs=True, stream=stream)
    monkeypatch.setattr(schedule, "log", get_logger("saerec.schedule"))  # not the cached one
    before = REGISTRY.get_sample_value("saerec_scheduled_retrains_total") or 0.0
    plan = scheduled(seeded, retrain_interval_seconds=0.3)
    try:
        assert plan.poll(factory) is None  # no job yet: the first check starts the clock
        time.sleep(0.4)
        job_id = plan.poll(factory)
    finally:
        configure_logging("WARNING")
    assert job_id is not None
    [job] = all_jobs(factory)
    assert (job.id, job.trigger, job.status, job.overrides) == (job_id, "schedule", "queued", {})
    assert job.config == resolve_config(seeded, {}).model_dump(mode="json")  # TRAIN_PRESET
    assert REGISTRY.get_sample_value("saerec_scheduled_retrains_total") == before + 1
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    [logged] = [line for line in lines if line["event"] == "retrain_scheduled"]
    assert logged["job_id"] == job_id and logged["reason"] == "interval"


def test_the_interval_runs_from_the_newest_job_of_any_trigger(
    seeded: Settings, factory: sessionmaker[Session]
) -> None:
    clock = Clock()
    plan = scheduled(seeded, clock, retrain_interval_seconds=60)
    with transaction(factory) as session:
        admin_job = jobs.enqueue(session, seeded, {})
    assert plan.poll(factory) is None  # open
    finish(factory, admin_job.id, "succeeded", activated=True)
    clock.offset = timedelta(seconds=30)
    assert plan.poll(factory) is None  # 30 s after the admin's job was queued
    clock.offset = timedelta(seconds=61)
    job_id = plan.poll(factory)
    assert job_id is not None
    assert [(j.trigger, j.status) for j in all_jobs(factory)] == [
        ("admin", "succeeded"),
        ("schedule", "queued"),
    ]


def test_min_new_ratings_is_due_at_the_threshold(
    seeded: Settings, engine: Engine, factory: sessionmaker[Session]
) -> None:
    with factory() as session:  # no model yet: the rating count itself
        assert scheduled(seeded, retrain_min_new_ratings=SEEDED_RATINGS + 1).due(session) is None
        due = scheduled(seeded, retrain_min_new_ratings=SEEDED_RATINGS).due(session)
        assert due is not None and due.new_ratings == SEEDED_RATINGS
    add_version(engine, "active", SEEDED_RATINGS, active=True, age_s=60)
    plan = scheduled(seeded, retrain_min_new_ratings=10)
    with factory() as session:
        assert plan.due(session) is None  # the model saw every rating
    add_ratings(engine, 9)
    with factory() as session:
        assert plan.due(session) is None
    add_ratings(engine, 1, first_user=2000)
    with factory() as session:
        due = plan.due(session)
        assert due is not None and (due.reason, due.new_ratings) == ("new_ratings", 10)
    # a newer version the gate refused saw those ratings too: retraining would repeat it
    add_version(engine, "refused", SEEDED_RATINGS + 10, active=False, age_s=0)
    with factory() as session:
        assert plan.due(session) is None
    add_ratings(engine, 10, first_user=3000)
    job_id = plan.poll(factory)
    assert job_id is not None
    assert [j.trigger for j in all_jobs(factory)] == ["schedule"]


def test_with_both_settings_both_must_hold(
    seeded: Settings, engine: Engine, factory: sessionmaker[Session]
) -> None:
    clock = Clock()
    plan = scheduled(seeded, clock, retrain_interval_seconds=60, retrain_min_new_ratings=5)
    add_version(engine, "active", SEEDED_RATINGS, active=True, age_s=600)
    with factory() as session:
        assert plan.due(session) is None  # starts the clock
        clock.offset = timedelta(seconds=120)
        assert plan.due(session) is None  # the interval passed but nothing new arrived
    add_ratings(engine, 5)
    clock.offset = timedelta(seconds=30)
    with factory() as session:
        assert plan.due(session) is None  # new ratings, but within the interval
        clock.offset = timedelta(seconds=61)
        due = plan.due(session)
        assert due is not None and (due.reason, due.new_ratings) == ("interval+new_ratings", 5)


def test_a_failed_or_refused_job_backs_the_schedule_off(
    seeded: Settings, factory: sessionmaker[Session]
) -> None:
    clock = Clock()
    plan = scheduled(seeded, clock, retrain_min_new_ratings=1)
    for status, activated in (("failed", False), ("succeeded", False)):
        job_id = plan.poll(factory)
        assert job_id is not None
        finish(factory, job_id, status, activated, at=clock())
        assert plan.poll(factory) is None  # not straight away: it would fail again
        clock.offset += timedelta(seconds=schedule.BACKOFF_SECONDS - 60)
        assert plan.poll(factory) is None
        clock.offset += timedelta(seconds=61)
        with factory() as session:
            assert plan.due(session) is not None
    assert [j.status for j in all_jobs(factory)] == ["failed", "succeeded"]


def test_no_second_job_while_one_is_open(
    seeded: Settings, factory: sessionmaker[Session], admin_headers: dict
) -> None:
    with TestClient(create_app(seeded)) as client:
        admin = client.post("/admin/retrain", headers=admin_headers)
        assert admin.status_code == 202
        plan = scheduled(seeded, retrain_interval_seconds=1e-6, retrain_min_new_ratings=1)
        time.sleep(0.01)
        assert plan.poll(factory) is None
        with transaction(factory) as session:  # claimed and running: still open
            session.execute(update(TrainingJob).values(status="running"))
        assert plan.poll(factory) is None
        job = client.get(f"/admin/jobs/{admin.json()['job_id']}", headers=admin_headers).json()
        assert job["trigger"] == "admin"
    assert [j.trigger for j in all_jobs(factory)] == ["admin"]


def test_a_check_that_misses_a_racing_job_hits_the_index(
    seeded: Settings, factory: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both open-job reads blinded: the partial unique index alone refuses the second."""
    plan = scheduled(seeded, retrain_min_new_ratings=1)
    first = plan.poll(factory)
    assert first is not None
    monkeypatch.setattr(schedule, "open_job", lambda _session: None)
    monkeypatch.setattr(jobs, "open_job", lambda _session: None)
    assert plan.poll(factory) is None
    assert [j.id for j in all_jobs(factory)] == [first]


def test_racing_launchers_queue_one_job(
    seeded: Settings, factory: sessionmaker[Session], database_url: str
) -> None:
    plans = [scheduled(seeded, retrain_min_new_ratings=1) for _ in range(4)]
    barrier = threading.Barrier(len(plans))
    results: list[object] = []

    def race(plan: RetrainSchedule) -> None:
        barrier.wait(30)
        try:
            results.append(plan.poll(factory))
        except OperationalError as exc:  # SQLite: "database is locked" for a late writer
            results.append(exc)

    threads = [threading.Thread(target=race, args=(plan,)) for plan in plans]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    [job] = all_jobs(factory)
    assert [r for r in results if isinstance(r, str)] == [job.id]
    losers = [r for r in results if not isinstance(r, str)]
    allowed = (type(None), OperationalError) if database_url.startswith("sqlite") else type(None)
    assert len(losers) == len(plans) - 1 and all(isinstance(r, allowed) for r in losers)


def test_scheduled_job_shows_its_trigger_in_the_api(
    seeded: Settings, factory: sessionmaker[Session], admin_headers: dict
) -> None:
    job_id = scheduled(seeded, retrain_min_new_ratings=1).poll(factory)
    with TestClient(create_app(seeded)) as client:
        job = client.get(f"/admin/jobs/{job_id}", headers=admin_headers).json()
        assert (job["trigger"], job["status"]) == ("schedule", "queued")
        schema = client.get("/openapi.json").json()["components"]["schemas"]["JobOut"]
        assert schema["properties"]["trigger"]["enum"] == ["admin", "schedule"]
        assert "trigger" in schema["required"]


def test_the_schedule_is_cheap_to_count(
    seeded: Settings,
    factory: sessionmaker[Session],
    monkeypatch: pytest.MonkeyPatch,
    database_url: str,
) -> None:
    """On PostgreSQL a big table is not counted row by row: its live-row statistic is read."""
    with factory() as session:
        assert count_ratings(session) == SEEDED_RATINGS
    if database_url.startswith("sqlite"):
        return  # SQLite has no such statistic; its tables are small
    monkeypatch.setattr(ratings_service, "EXACT_COUNT_BELOW", 1)  # as if the table were huge
    monkeypatch.setattr(ratings_service, "_exact_count", lambda _session: -1)  # never COUNT(*)

    def counted() -> bool:
        with factory() as session:
            return count_ratings(session) == SEEDED_RATINGS

    wait_for(counted, timeout=30)  # the statistic follows commits within seconds


def test_a_scheduled_job_runs_through_the_launcher_and_the_gate(
    seeded: Settings, engine: Engine, factory: sessionmaker[Session]
) -> None:
    """End to end: the API process's launcher queues the job, runs it, the gate activates."""
    settings = seeded.model_copy(
        update={
            **LENIENT_GATE,
            "train_preset": "fast",
            "retrain_min_new_ratings": 40,
            "run_worker_in_api": True,
        }
    )
    incumbent = train_tiny(settings, engine)
    add_ratings(engine, 40)

    def finished() -> TrainingJob | None:
        done = [j for j in all_jobs(factory) if j.status in ("succeeded", "failed")]
        return done[0] if done else None

    with TestClient(create_app(settings)):
        job = wait_for(finished)
        assert isinstance(job, TrainingJob)
    assert (job.trigger, job.status) == ("schedule", "succeeded"), job.error
    assert job.metrics["activated"] is True
    verdict = job.metrics["quality_gate"]
    assert verdict["passed"] is True and verdict["active"]["version"] == incumbent.version
    with factory() as session:
        active = session.scalar(select(ModelVersion).where(ModelVersion.is_active))
        assert active is not None and active.version == job.model_version
        assert active.data_size["ratings"] == SEEDED_RATINGS + 40
        assert session.scalar(select(func.count()).select_from(TrainingJob)) == 1
        # trained on everything: not due again until 40 more ratings arrive
        assert scheduled(settings).due(session) is None


@pytest.fixture(autouse=True)
def quiet_logging() -> Iterator[None]:
    yield
    configure_logging("WARNING")
