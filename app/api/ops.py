"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse

from app.api.deps import EngineDep, RecommenderDep, SessionFactoryDep
from app.observability import METRICS_CONTENT_TYPE, render_metrics
from app.schemas import HealthOut, ReadinessOut
from app.services import health

router = APIRouter(tags=["operations"])


@router.get("/healthz", response_model=HealthOut)
def healthz() -> HealthOut:
    return HealthOut(status="ok")


@router.get("/readyz", response_model=ReadinessOut, responses={503: {"model": ReadinessOut}})
def readyz(engine: EngineDep, recommender: RecommenderDep) -> JSONResponse:
    body = health.readiness(engine, recommender)
    return JSONResponse(body.model_dump(), status_code=200 if body.status == "ok" else 503)


@router.get("/metrics", response_class=Response)
def metrics(sessions: SessionFactoryDep) -> Response:
    health.refresh_gauges(sessions)
    return Response(render_metrics(), media_type=METRICS_CONTENT_TYPE)
