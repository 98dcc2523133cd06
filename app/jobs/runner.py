"""Running one claimed job inside its own process: train, report epochs, heartbeat."""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.db import create_session_factory
from app.models import TrainingJob, utcnow
from app.observability import get_logger

if TYPE_CHECKING:  # torch stays out of the API process until a model is needed
    from app.ml.config import ModelConfig
    from app.ml.train import EpochReport, PhaseReport

from app.jobs.queue import HEARTBEAT_SECONDS, fail_job, get_job, host, update_job

log = get_logger("saerec.jobs")


def run_job(training: Settings, engine: Engine, job_id: str) -> None:
    """Train for a claimed job, reporting each epoch; any error ends the job as failed."""
    from app.jobs.training import preload_seconds, train_and_register

    factory = create_session_factory(engine)
    update_job(factory, job_id, worker=f"{host()}:{os.getpid()}", heartbeat_at=utcnow())
    stop = threading.Event()
    beat = threading.Thread(target=_heartbeat, args=(factory, job_id, stop), daemon=True)
    beat.start()
    try:
        with factory() as session:
            job = get_job(session, job_id)
            config = job_config(training, job)
        outcome = train_and_register(
            training,
            engine,
            config,
            on_epoch=epoch_reporter(factory, job_id),
            on_phase=phase_reporter(factory, job_id),
            on_trial=_trial_reporter(factory, job_id, training.train_budget_seconds),
            preload_wait=preload_seconds(training),
            experiment_share=job.overrides.get("experiment_share"),
        )
        assert outcome is not None  # jobs never run under torchrun
        metrics = {**outcome.metrics, "activated": outcome.activated}
        if outcome.experiment_id is not None:
            metrics["experiment_id"] = outcome.experiment_id
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


def job_config(training: Settings, job: TrainingJob) -> ModelConfig:
    """The config resolved when the job was queued (re-resolved only for older rows)."""
    from app.jobs.training import resolve_config
    from app.ml.config import ModelConfig

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
            phase="network",
            progress=overall_progress("network", report.epoch, report.epochs),
            metrics={
                **{k: _json_number(v) for k, v in report.as_dict().items()},
                "eta_seconds": epochs_eta(report, seconds),
            },
            heartbeat_at=utcnow(),
        )

    return on_epoch


PHASE_PROGRESS = {
    "network": (0.0, 0.55),
    "rating network": (0.55, 0.7),
    "item path": (0.7, 0.8),
    "blend": (0.8, 0.85),
    "refit": (0.85, 1.0),
}
"""Each phase's share of a job's progress: roughly its share of an untuned training."""


def overall_progress(phase: str, step: int, steps: int) -> float:
    start, end = PHASE_PROGRESS[phase]
    return round(start + (end - start) * min(1.0, step / max(1, steps)), 4)


def phase_reporter(factory: sessionmaker[Session], job_id: str) -> Callable[[PhaseReport], None]:
    """Each phase onto the job row (the joint network's epochs: `epoch_reporter`)."""

    def on_phase(report: PhaseReport) -> None:
        if report.phase == "network" and report.step > 0:
            return  # the epoch's own row update says it, with the epoch's figures
        update_job(
            factory,
            job_id,
            phase=report.phase,
            progress=overall_progress(report.phase, report.step, report.steps),
            heartbeat_at=utcnow(),
        )

    return on_phase


def epochs_eta(report: EpochReport, seconds: list[float]) -> float:
    """Seconds the remaining epochs take at the mean pace so far (early stopping may end
    sooner; the phases after them are not in it)."""
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


def _json_number(value: Any) -> Any:
    """A figure rounded, NaN (not measured) as null: PostgreSQL refuses NaN."""
    if not isinstance(value, float):
        return value
    return None if math.isnan(value) else round(value, 5)


def _heartbeat(factory: sessionmaker[Session], job_id: str, stop: threading.Event) -> None:
    while not stop.wait(HEARTBEAT_SECONDS):
        try:
            update_job(factory, job_id, heartbeat_at=utcnow())
        except Exception as exc:  # the next beat may succeed; the job goes on regardless
            log.warning("heartbeat_failed", job_id=job_id, error=str(exc))
