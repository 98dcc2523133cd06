"""Scheduled retraining: the job launchers queue a retrain themselves when one is due
(RETRAIN_INTERVAL_SECONDS, RETRAIN_MIN_NEW_RATINGS). The index that allows one open job
keeps racing launchers to one job; the loser's conflict means "not due any more".
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from prometheus_client import Counter
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.db import transaction
from app.jobs.queue import enqueue, open_job
from app.models import ModelVersion, Rating, TrainingJob, as_aware, utcnow
from app.observability import get_logger
from app.services.errors import ConflictError
from app.services.ratings import count_ratings

log = get_logger("saerec.schedule")
SCHEDULED_RETRAINS = Counter(
    "saerec_scheduled_retrains_total", "Retraining jobs queued by the RETRAIN_* schedule"
)
MAX_CHECK_SECONDS = 60.0
# a failed or refused retrain's successor waits this long from its end: no back to back
BACKOFF_SECONDS = 600.0


@dataclass(frozen=True)
class Due:
    reason: str  # "interval", "new_ratings" or "interval+new_ratings"
    new_ratings: int | None  # None when the ratings were not counted (interval only)


class RetrainSchedule:
    """Whether a retrain is due, from the database alone so every process agrees: the
    interval from the newest job's creation (none: the first check that saw ratings), new
    ratings over the newest version's training data (a refused one's too)."""

    def __init__(
        self,
        training: Settings,
        check_seconds: float | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.training = training
        self.interval = training.retrain_interval_seconds
        self.min_new = training.retrain_min_new_ratings
        # at most once a minute (sooner for a shorter interval): counting is not free
        self.check_seconds = (
            check_seconds
            if check_seconds is not None
            else min(self.interval or MAX_CHECK_SECONDS, MAX_CHECK_SECONDS)
        )
        self._clock = clock
        self._first_seen: datetime | None = None  # the clock's start while no job exists
        self._last_check: float | None = None

    @property
    def enabled(self) -> bool:
        return self.interval is not None or self.min_new is not None

    def poll(self, factory: sessionmaker[Session]) -> str | None:
        """The launcher's call on every poll, one check per check_seconds; the job queued."""
        if not self.enabled:
            return None
        now = time.monotonic()
        if self._last_check is not None and now - self._last_check < self.check_seconds:
            return None
        self._last_check = now
        try:
            with transaction(factory) as session:
                queued = self.enqueue_if_due(session)
                if queued is None:
                    return None
                job, due = queued
                job_id = job.id
        except ConflictError:  # another process queued one between our check and insert
            return None
        SCHEDULED_RETRAINS.inc()
        log.info("retrain_scheduled", job_id=job_id, reason=due.reason, new_ratings=due.new_ratings)
        return job_id

    def enqueue_if_due(self, session: Session) -> tuple[TrainingJob, Due] | None:
        due = self.due(session)
        if due is None:
            return None
        return enqueue(session, self.training, {}, trigger="schedule"), due

    def due(self, session: Session) -> Due | None:
        """Why a retrain is due now, or None; never while a job is queued or running."""
        if not self.enabled or open_job(session) is not None:
            return None
        now = self._clock()
        last = _newest_job(session)
        if last is not None and _backing_off(last, now):
            return None
        if self.interval is not None and not self._interval_passed(session, last, now):
            return None
        if self.min_new is None:
            return Due("interval", None)
        new = count_ratings(session) - _trained_on(session)
        if new < self.min_new:
            return None
        return Due("new_ratings" if self.interval is None else "interval+new_ratings", new)

    def _interval_passed(self, session: Session, last: TrainingJob | None, now: datetime) -> bool:
        if last is not None:
            since = as_aware(last.created_at)
        else:  # never a job: start the clock at the first check that sees ratings
            if self._first_seen is None:
                if session.scalar(select(Rating.user_id).limit(1)) is None:
                    return False
                self._first_seen = now
            since = self._first_seen
        assert self.interval is not None
        return (now - since).total_seconds() >= self.interval


def _newest_job(session: Session) -> TrainingJob | None:
    return session.scalar(
        select(TrainingJob).order_by(TrainingJob.created_at.desc(), TrainingJob.id).limit(1)
    )


def _backing_off(job: TrainingJob, now: datetime) -> bool:
    """Within BACKOFF_SECONDS of the end of a job that failed or activated nothing."""
    unproductive = job.status == "failed" or (job.metrics or {}).get("activated") is False
    if not unproductive:
        return False
    ended = as_aware(job.finished_at or job.created_at)
    return (now - ended).total_seconds() < BACKOFF_SECONDS


def _trained_on(session: Session) -> int:
    size = session.scalar(
        select(ModelVersion.data_size).order_by(ModelVersion.created_at.desc()).limit(1)
    )
    return int((size or {}).get("ratings", 0))
