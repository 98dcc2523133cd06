"""Readiness and the gauges a metrics scrape refreshes: what the operations routes report."""

from __future__ import annotations

import os

from sqlalchemy import Engine, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from app.jobs.queue import count_jobs_by_status
from app.observability import RATINGS_TOTAL, TRAINING_JOBS
from app.schemas import ReadinessOut
from app.services.ratings import count_ratings
from app.serving.recommender import Recommender


def readiness(engine: Engine, recommender: Recommender) -> ReadinessOut:
    """Ready when the database answers; the served version and any load error are reported
    but do not make the process unready (it answers from the popular list meanwhile)."""
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except SQLAlchemyError as exc:
        return ReadinessOut(
            status="unavailable",
            database="unreachable",
            detail=f"database check failed: {type(exc).__name__}",
        )
    return ReadinessOut(
        pid=os.getpid(),
        status="ok",
        database="ok",
        model_version=recommender.version,
        detail=recommender.model_error,
    )


def refresh_gauges(sessions: sessionmaker[Session]) -> None:
    """Ratings and jobs by status, counted in the database for this scrape."""
    try:
        with sessions() as session:
            RATINGS_TOTAL.set(count_ratings(session))
            for status, count in count_jobs_by_status(session).items():
                TRAINING_JOBS.labels(status).set(count)
    except SQLAlchemyError:
        pass  # the scrape still answers; the stale gauge is better than no metrics
