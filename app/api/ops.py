"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import os

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from app.observability import METRICS_CONTENT_TYPE, RATINGS_TOTAL, TRAINING_JOBS, render_metrics
from app.schemas import HealthOut, ReadinessOut
from app.services.jobs import count_jobs_by_status
from app.services.ratings import count_ratings

router = APIRouter(tags=["operations"])


@router.get("/healthz", response_model=HealthOut)
def healthz() -> HealthOut:
    return HealthOut(status="ok")


@router.get("/readyz", response_model=ReadinessOut, responses={503: {"model": ReadinessOut}})
def readyz(request: Request) -> JSONResponse:
    try:
        with request.app.state.engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except SQLAlchemyError as exc:
        body = ReadinessOut(
            status="unavailable",
            database="unreachable",
            detail=f"database check failed: {type(exc).__name__}",
        )
        return JSONResponse(body.model_dump(), status_code=503)
    recommender = request.app.state.recommender
    body = ReadinessOut(
        pid=os.getpid(),
        status="ok",
        database="ok",
        model_version=recommender.version,
        detail=recommender.model_error,
    )
    return JSONResponse(body.model_dump())


@router.get("/metrics", response_class=Response)
def metrics(request: Request) -> Response:
    try:
        with request.app.state.session_factory() as session:
            RATINGS_TOTAL.set(count_ratings(session))
            for status, count in count_jobs_by_status(session).items():
                TRAINING_JOBS.labels(status).set(count)
    except SQLAlchemyError:
        pass  # the scrape still answers; the stale gauge is better than no metrics
    return Response(render_metrics(), media_type=METRICS_CONTENT_TYPE)
