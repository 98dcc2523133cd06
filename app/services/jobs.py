"""Retraining jobs: a queue in the training_jobs table, run in a separate process.

The table is the only coordination: a partial unique index allows one open job, a
conditional UPDATE claims it, and the running process reports progress and heartbeats
into the row. Any API process (or `saerec worker`) may launch the job; exactly one wins.
"""

from __future__ import annotations

import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

from sqlalchemy import Engine, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from app.config import TrainingSettings
from app.db import create_session_factory, transaction, updated
from app.models import JOB_STATUSES, OPEN_JOB_STATUSES, TrainingJob, utcnow
from app.observability import get_logger
from app.services.errors import ConflictError, InvalidInputError, NotFoundError

if TYPE_CHECKING:  # torch stays out of the API process until a model is needed
    from app.ml.model import ModelConfig
    from app.ml.train import EpochReport

log = get_logger("saerec.jobs")
HEARTBEAT_SECONDS = 5.0
STALE_AFTER_SECONDS = 120.0


def _host() -> str:
    return socket.gethostname()


# -- queue --------------------------------------------------------------------------------
def open_job(session: Session) -> TrainingJob | None:
    return session.scalar(
        select(TrainingJob).where(TrainingJob.status.in_(OPEN_JOB_STATUSES)).limit(1)
    )


def enqueue(
    session: Session,
    training: TrainingSettings,
    overrides: dict[str, Any],
    trigger: Literal["admin", "schedule"] = "admin",
) -> TrainingJob:
    """Resolve the overrides now (422 beats a job that fails later) and queue the result.

    The job stores the resolved config, so it trains what this process's TRAIN_PRESET
    meant, not whatever the job process's settings say. `trigger` records who asked
    ("admin" or "schedule"); ConflictError while another job is open.
    """
    from app.services.training import resolve_config

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
    host, _, pid = (job.worker or "").rpartition(":")
    if host == _host() and pid.isdigit() and not _pid_alive(int(pid)):
        return f"the worker process {pid} on {host} is gone (it died mid-job)"
    beat = job.heartbeat_at or job.started_at
    if beat is not None:
        if beat.tzinfo is None:  # SQLite returns naive datetimes
            beat = beat.replace(tzinfo=now.tzinfo)
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


# -- running one job (inside the job process) -------------------------------------------------
def run_job(training: TrainingSettings, engine: Engine, job_id: str) -> None:
    """Train for a claimed job, reporting each epoch; any error ends the job as failed."""
    from app.services.training import train_and_register

    factory = create_session_factory(engine)
    update_job(factory, job_id, worker=f"{_host()}:{os.getpid()}", heartbeat_at=utcnow())
    stop = threading.Event()
    beat = threading.Thread(target=_heartbeat, args=(factory, job_id, stop), daemon=True)
    beat.start()
    try:
        with factory() as session:
            config = job_config(training, get_job(session, job_id))
        outcome = train_and_register(
            training,
            engine,
            config,
            on_epoch=epoch_reporter(factory, job_id),
            on_trial=_trial_reporter(factory, job_id, training.budget_seconds),
        )
        assert outcome is not None  # jobs never run under torchrun
        metrics = {**outcome.metrics, "activated": outcome.activated}
        update_job(
            factory,
            job_id,
            status="succeeded",
            progress=1.0,
            metrics=metrics,
            model_version=outcome.version,
            finished_at=utcnow(),
        )
    except BaseException as exc:
        fail_job(factory, job_id, f"{type(exc).__name__}: {exc}")
        raise
    finally:
        stop.set()


def job_config(training: TrainingSettings, job: TrainingJob) -> ModelConfig:
    """The config resolved when the job was queued (re-resolved only for older rows)."""
    from app.ml.model import ModelConfig
    from app.services.training import resolve_config

    if job.config is None:  # queued before revision 0004
        return resolve_config(training, job.overrides)
    return ModelConfig.model_validate(job.config)


def epoch_reporter(factory: sessionmaker[Session], job_id: str) -> Callable[[EpochReport], None]:
    """Each epoch's figures, progress and ETA onto the job row."""
    seconds: list[float] = []

    def on_epoch(report: EpochReport) -> None:
        seconds.append(report.seconds)
        update_job(
            factory,
            job_id,
            epoch=report.epoch,
            epochs=report.epochs,
            progress=min(1.0, report.epoch / max(1, report.epochs)),
            metrics={**_epoch_metrics(report), "eta_seconds": epochs_eta(report, seconds)},
            heartbeat_at=utcnow(),
        )

    return on_epoch


def epochs_eta(report: EpochReport, seconds: list[float]) -> float:
    """Seconds the remaining epochs take at the mean pace so far: an upper bound, since early
    stopping may end sooner; what follows the epochs (item path, blend, the rating network,
    the refit) is not in it."""
    remaining = max(0, report.epochs - report.epoch)
    return round(sum(seconds) / max(1, len(seconds)) * remaining, 1)


def _trial_reporter(
    factory: sessionmaker[Session], job_id: str, budget: float
) -> Callable[[dict[str, Any]], None]:
    """During a search, progress is the share of the budget spent; each trial is shown."""
    started = time.monotonic()

    def on_trial(record: dict[str, Any]) -> None:
        update_job(
            factory,
            job_id,
            progress=min(0.99, (time.monotonic() - started) / max(budget, 1e-9)),
            metrics={"search": {"trials": record["trial"] + 1, "last_trial": record}},
            heartbeat_at=utcnow(),
        )

    return on_trial


def _epoch_metrics(report: EpochReport) -> dict[str, Any]:
    """The report's figures, rounded for the job row and the dashboard; a figure not
    measured (NaN: no validation split, no ranking head) is null, which JSON columns take
    (PostgreSQL refuses NaN)."""
    return {k: _json_number(v) for k, v in report.as_dict().items()}


def _json_number(value: Any) -> Any:
    if not isinstance(value, float):
        return value
    return None if math.isnan(value) else round(value, 5)


def _heartbeat(factory: sessionmaker[Session], job_id: str, stop: threading.Event) -> None:
    while not stop.wait(HEARTBEAT_SECONDS):
        try:
            update_job(factory, job_id, heartbeat_at=utcnow())
        except Exception as exc:  # the next beat may succeed; the job goes on regardless
            log.warning("heartbeat_failed", job_id=job_id, error=str(exc))


# -- launching job processes ------------------------------------------------------------------
class JobLauncher:
    """Polls for queued jobs and runs each in a child process, watching how it ends.

    Runs inside each API process by default (so the embedded setup needs nothing more)
    and in `saerec worker`. Training never runs in the API process itself. Each poll also
    queues a retrain when the RETRAIN_* schedule says one is due, so exactly the processes
    that launch jobs schedule them.

    `child_env` is the whole configuration as environment variables (`Settings.as_env()`):
    the job process reads its database, training and logging settings from it.
    """

    def __init__(
        self,
        training: TrainingSettings,
        engine: Engine,
        *,
        child_env: Mapping[str, str],
        poll_seconds: float = 1.0,
    ) -> None:
        from app.services.schedule import RetrainSchedule  # it builds on this module's queue

        self._child_env = dict(child_env)
        self._factory = create_session_factory(engine)
        self.schedule = RetrainSchedule(training)
        self._poll = poll_seconds
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.child: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run_forever, name="job-launcher", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def run_forever(self) -> None:
        """Until stopped; a database outage (even at start-up) only delays the next poll."""
        while not self._stop.is_set():
            try:
                recover_stale_jobs(self._factory)
                break
            except Exception as exc:
                log.warning("launcher_recovery_failed", error=str(exc))
                self._stop.wait(self._poll * 5)
        while not self._stop.is_set():
            try:
                if not self.run_once():
                    self._stop.wait(self._poll)
            except Exception as exc:  # the database may be down: keep polling
                log.warning("launcher_poll_failed", error=str(exc))
                self._stop.wait(self._poll * 5)

    def run_once(self) -> bool:
        """Queue a retrain if one is due, then claim and run one job to its end; False when
        the queue was empty."""
        self._check_schedule()
        job_id = claim_next(self._factory, f"{_host()}:{os.getpid()}")
        if job_id is None:
            recover_stale_jobs(self._factory)
            return False
        log.info("job_started", job_id=job_id)
        self.child = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "run-job", job_id],
            env={**os.environ, **self._child_env},
        )
        code = self._wait(self.child)
        self.child = None
        if code != 0:
            fail_job(self._factory, job_id, _exit_reason(code))
        log.info("job_finished", job_id=job_id, exit_code=code)
        return True

    def _check_schedule(self) -> None:
        """A failed check (the database is down) must not keep queued jobs from running."""
        try:
            self.schedule.poll(self._factory)
        except Exception as exc:
            log.warning("schedule_check_failed", error=f"{type(exc).__name__}: {exc}")

    def _wait(self, child: subprocess.Popen[bytes]) -> int:
        while True:
            try:
                return child.wait(timeout=self._poll)
            except subprocess.TimeoutExpired:
                if self._stop.is_set():
                    child.terminate()
                    return child.wait()


def _exit_reason(code: int) -> str:
    if code < 0:
        name = signal.Signals(-code).name if -code in signal.valid_signals() else str(-code)
        return f"the training process was killed by {name}"
    return f"the training process exited with code {code}"
