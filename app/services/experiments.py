"""Experiments: a candidate version served to a share of the users beside the active one,
their figures side by side, then stop or promote. One runs at a time (a partial unique
index); serving reads it with the active version, so each change is read your writes.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from app.db import transaction, updated
from app.models import Experiment, utcnow
from app.services import online, registry
from app.services.errors import ConflictError, NotFoundError

if TYPE_CHECKING:  # a training job starts experiments too, without the serving stack
    from app.serving.recommender import Recommender

ARMS = ("control", "candidate")


def running(session: Session) -> Experiment | None:
    return session.scalar(select(Experiment).where(Experiment.status == "running"))


def create(session: Session, candidate: str, share: float) -> Experiment:
    """A running experiment of `candidate` against the active version, in the caller's
    transaction; ConflictError while one runs, with none active, or for the active one."""
    registry.get_version(session, candidate)
    control = registry.active_version_id(session)
    if control is None:
        raise ConflictError("no model version is active: nothing to compare the candidate with")
    if control == candidate:
        raise ConflictError(f"model version {candidate!r} is the active one already")
    existing = running(session)
    if existing is not None:
        raise _conflict(existing)
    row = Experiment(
        id=str(uuid.uuid4()), control=control, candidate=candidate, share=share, status="running"
    )
    try:
        with session.begin_nested():
            session.add(row)
    except IntegrityError:  # another one started between our check and our insert
        raise _conflict(running(session)) from None
    return row


def start(
    sessions: sessionmaker[Session], recommender: Recommender, candidate: str, share: float
) -> Experiment:
    """Load the candidate here first (as an activation does), then commit the experiment."""
    with sessions() as session:
        registry.get_version(session, candidate)  # 404 before any load
    recommender.models.preload(candidate)
    with transaction(sessions) as session:
        return create(session, candidate, share)


def start_if_none_running(session: Session, candidate: str, share: float) -> str | None:
    """A retrain's experiment (`experiment_share`): its id, or None when none can start."""
    try:
        with session.begin_nested():
            return create(session, candidate, share).id
    except ConflictError:
        return None


def _conflict(existing: Experiment | None) -> ConflictError:
    return ConflictError(
        {
            "message": "an experiment is already running",
            "experiment_id": existing.id if existing else None,
        }
    )


def list_experiments(session: Session) -> list[Experiment]:
    return list(
        session.scalars(select(Experiment).order_by(Experiment.started_at.desc(), Experiment.id))
    )


def get(session: Session, experiment_id: str) -> Experiment:
    row = session.get(Experiment, experiment_id)
    if row is None:
        raise NotFoundError(f"experiment {experiment_id!r} does not exist")
    return row


def stop(
    sessions: sessionmaker[Session], recommender: Recommender, experiment_id: str, promote: bool
) -> Experiment:
    """End a running experiment; `promote` activates its candidate in the same transaction,
    loaded here first, and this process switches before the answer (as an activation)."""
    with sessions() as session:
        row = get(session, experiment_id)
        if row.status != "running":
            raise ConflictError(f"experiment {experiment_id!r} is not running ({row.status})")
        candidate = row.candidate
    if promote:
        recommender.models.preload(candidate)
    with transaction(sessions) as session:
        ended = updated(
            session,
            update(Experiment)
            .where(Experiment.id == experiment_id, Experiment.status == "running")
            .values(status="promoted" if promote else "stopped", stopped_at=utcnow()),
        )
        if ended != 1:  # stopped by another request meanwhile
            raise ConflictError(f"experiment {experiment_id!r} is not running")
        if promote:
            registry.activate(session, candidate)
        row = get(session, experiment_id)
        session.refresh(row)
    if promote:
        recommender.refresh_model()
    return row


@dataclass(frozen=True)
class Report:
    arms: list[dict[str, Any]]
    difference: dict[str, Any]
    verdict: str


def report(session: Session, row: Experiment, window: int, min_impressions: int) -> Report:
    """Both arms' figures, the candidate's hit rate minus the control's with its interval,
    and a verdict by whether it excludes zero, once each arm has `min_impressions`."""
    found = {arm: online.figures(session, window, experiment_id=row.id, arm=arm) for arm in ARMS}
    arms = [{"arm": arm, "version": getattr(row, arm), **found[arm].as_dict()} for arm in ARMS]
    control, candidate = found["control"], found["candidate"]
    diff = online.difference_interval(
        (candidate.hit_impressions, candidate.impressions),
        (control.hit_impressions, control.impressions),
    )
    difference: dict[str, Any] = {"hit_rate": None, "ci95": None}
    if diff is not None:
        difference = {"hit_rate": diff[0], "ci95": list(diff[1])}
    if min(control.impressions, candidate.impressions) < min_impressions or diff is None:
        verdict = "not enough data"
    elif diff[1][0] > 0:
        verdict = "candidate better"
    elif diff[1][1] < 0:
        verdict = "control better"
    else:
        verdict = "no difference"
    return Report(arms, difference, verdict)
