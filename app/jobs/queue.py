"""The retraining queue: the training_jobs table is the only coordination.

A partial unique index allows one open job, a conditional UPDATE claims it, and the running
process reports progress and heartbeats into the row. Any API process (or `saerec worker`)
may launch the job; exactly one wins.
"""

from __future__ import annotations

import os
import socket
import uuid
from datetime import datetime, timedelta
from typing import Any, Literal

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.db import transaction, updated
from app.models import JOB_STATUSES, OPEN_JOB_STATUSES, TrainingJob, as_aware, utcnow
from app.observability import get_logger
from app.services.errors import ConflictError, InvalidInputError, NotFoundError

log = get_logger("saerec.jobs")
HEARTBEAT_SECONDS = 5.0
STALE_AFTER_SECONDS = 120.0


def host() -> str:
    return socket.gethostname()


def open_job(session: Session) -> TrainingJob | None:
    return session.scalar(
        select(TrainingJob).where(TrainingJob.status.in_(OPEN_JOB_STATUSES)).limit(1)
    )


def enqueue(
    session: Session,
    training: Settings,
    overrides: dict[str, Any],
    trigger: Literal["admin", "schedule"] = "admin",
) -> TrainingJob:
    """Resolve the overrides now (a 422 beats a job that fails later) and queue the config
    they resolve to; ConflictError while another job is open."""
    from app.jobs.training import resolve_config

    try:
        config = resolve_config(training, overrides)
    except ValueError as exc:  # FastAPI's 422 shape, as the OpenAPI schema declares
        error = {"loc": ["body"], "msg": str(exc), "type": "value_error"}
        raise InvalidInputError([error]) from None
    existing = open_job(session)
    if existing is not None:
        raise _conflict(existing)
    job = TrainingJob(
        id=str(uuid.uuid4()),
        trigger=trigger,
        overrides=overrides,
        config=config.model_dump(mode="json"),
        epochs=config.epochs,
    )
    try:
        with session.begin_nested():
            session.add(job)
    except IntegrityError:  # another request queued one between our check and insert
        racing = open_job(session)
        raise _conflict(racing) from None
    return job


def _conflict(job: TrainingJob | None) -> ConflictError:
    job_id = job.id if job else None
    return ConflictError(
        {"message": "a training job is already queued or running", "job_id": job_id}
    )


def count_jobs_by_status(session: Session) -> dict[str, int]:
    """Every known status, zeros included, so dashboards see a job leave a state."""
    rows = session.execute(
        select(TrainingJob.status, func.count()).group_by(TrainingJob.status)
    ).all()
    counts = dict.fromkeys(JOB_STATUSES, 0)
    counts.update({status: count for status, count in rows})
    return counts


def get_job(session: Session, job_id: str) -> TrainingJob:
    job = session.get(TrainingJob, job_id)
    if job is None:
        raise NotFoundError(f"training job {job_id!r} does not exist")
    return job


def claim_next(factory: sessionmaker[Session], worker: str) -> str | None:
    """Move the oldest queued job to running; the WHERE status='queued' makes it atomic."""
    with transaction(factory) as session:
        job_id = session.scalar(
            select(TrainingJob.id)
            .where(TrainingJob.status == "queued")
            .order_by(TrainingJob.created_at)
            .limit(1)
        )
        if job_id is None:
            return None
        now = utcnow()
        claimed = updated(
            session,
            update(TrainingJob)
            .where(TrainingJob.id == job_id, TrainingJob.status == "queued")
            .values(status="running", started_at=now, heartbeat_at=now, worker=worker),
        )
        return job_id if claimed == 1 else None


def update_job(factory: sessionmaker[Session], job_id: str, **values: Any) -> None:
    with transaction(factory) as session:
        session.execute(update(TrainingJob).where(TrainingJob.id == job_id).values(**values))


def fail_job(factory: sessionmaker[Session], job_id: str, reason: str) -> bool:
    """Mark a still-running job failed; a job that already finished is left alone."""
    with transaction(factory) as session:
        result = updated(
            session,
            update(TrainingJob)
            .where(TrainingJob.id == job_id, TrainingJob.status.in_(OPEN_JOB_STATUSES))
            .values(status="failed", error=reason[:4000], finished_at=utcnow()),
        )
    if result:
        log.warning("job_failed", job_id=job_id, reason=reason)
    return bool(result)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _is_dead(job: TrainingJob, now: datetime) -> str | None:
    """A reason if the job's process is gone (same host, pid not alive) or silent too long."""
    worker_host, _, pid = (job.worker or "").rpartition(":")
    if worker_host == host() and pid.isdigit() and not _pid_alive(int(pid)):
        return f"the worker process {pid} on {worker_host} is gone (it died mid-job)"
    beat = job.heartbeat_at or job.started_at
    if beat is not None:
        beat = as_aware(beat)
        if now - beat > timedelta(seconds=STALE_AFTER_SECONDS):
            return f"no heartbeat since {beat.isoformat()}: the worker stopped answering"
    return None


def recover_stale_jobs(factory: sessionmaker[Session]) -> list[str]:
    """Run at start-up and by launchers: fail running jobs whose process is gone."""
    with factory() as session:
        running = list(session.scalars(select(TrainingJob).where(TrainingJob.status == "running")))
    now = utcnow()
    failed = []
    for job in running:
        reason = _is_dead(job, now)
        if reason and fail_job(factory, job.id, reason):
            failed.append(job.id)
    return failed
