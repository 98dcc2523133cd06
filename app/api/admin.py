"""Admin routes: retraining jobs, the model registry, activation (rollback)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Body, Path, Query, status

from app.api.deps import (
    AdminDep,
    ModelVersionId,
    RecommenderDep,
    SessionDep,
    SessionFactoryDep,
    SettingsDep,
)
from app.jobs import queue as jobs
from app.schemas import (
    NO_NUL,
    ExperimentIn,
    ExperimentOut,
    ExperimentReportOut,
    ExperimentsOut,
    ExperimentStopIn,
    JobOut,
    JobQueuedOut,
    ModelOnlineOut,
    ModelVersionOut,
    RetrainIn,
    ServiceStatsOut,
)
from app.services import activation, dashboard, experiments, online, registry

router = APIRouter(
    prefix="/admin",
    tags=["admin"],
    responses={401: {"description": "missing or bad token"}, 503: {"description": "admin off"}},
)


@router.post(
    "/retrain",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobQueuedOut,
    responses={409: {"description": "a job is already queued or running"}},
)
def retrain(
    _admin: AdminDep,
    session: SessionDep,
    settings: SettingsDep,
    body: Annotated[RetrainIn | None, Body()] = None,  # type: ignore[valid-type]
) -> JobQueuedOut:
    # exclude_unset: an omitted field keeps the preset's value; an explicit null (for the
    # fields that take one) means "chosen on validation" and is passed on as such.
    overrides: dict[str, Any] = body.model_dump(exclude_unset=True) if body is not None else {}
    job = jobs.enqueue(session, settings, overrides)
    return JobQueuedOut(job_id=job.id, status=job.status)


@router.get("/jobs", response_model=list[JobOut])
def list_jobs(
    _admin: AdminDep,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=100, description="how many, newest first")] = 20,
) -> list[JobOut]:
    return [JobOut.model_validate(job) for job in dashboard.recent_jobs(session, limit)]


@router.get("/stats", response_model=ServiceStatsOut)
def service_stats(
    _admin: AdminDep, session: SessionDep, recommender: RecommenderDep
) -> ServiceStatsOut:
    """Counts and request figures for the dashboard: cheap, so it may be polled."""
    return dashboard.service_stats(session, recommender.version)


@router.get("/jobs/{job_id}", response_model=JobOut, responses={404: {}})
def get_job(
    _admin: AdminDep,
    session: SessionDep,
    job_id: Annotated[str, Path(max_length=64, pattern=NO_NUL)],
) -> JobOut:
    return JobOut.model_validate(jobs.get_job(session, job_id))


@router.get("/models", response_model=list[ModelVersionOut])
def list_models(_admin: AdminDep, session: SessionDep) -> list[ModelVersionOut]:
    return [ModelVersionOut.model_validate(row) for row in registry.list_versions(session)]


@router.post("/models/{version}/activate", response_model=ModelVersionOut, responses={404: {}})
def activate_model(
    _admin: AdminDep,
    sessions: SessionFactoryDep,
    recommender: RecommenderDep,
    version: ModelVersionId,
) -> ModelVersionOut:
    row = activation.activate_and_preload(sessions, recommender, version)
    return ModelVersionOut.model_validate(row)


@router.get("/models/{version}/online", response_model=ModelOnlineOut, responses={404: {}})
def model_online(
    _admin: AdminDep,
    session: SessionDep,
    settings: SettingsDep,
    version: ModelVersionId,
    since: Annotated[
        datetime | None, Query(description="only impressions shown from then on (ISO 8601)")
    ] = None,
) -> ModelOnlineOut:
    registry.get_version(session, version)  # 404 for an unknown version
    window = settings.attribution_window_seconds
    found = online.figures(session, window, version=version, since=since)
    return ModelOnlineOut(version=version, window_seconds=window, **found.as_dict())


ExperimentId = Annotated[str, Path(max_length=36, pattern=NO_NUL)]


@router.post(
    "/experiments",
    status_code=status.HTTP_201_CREATED,
    response_model=ExperimentOut,
    responses={
        404: {"description": "unknown candidate version"},
        409: {"description": "one is running (its id), or no active version to compare with"},
    },
)
def start_experiment(
    _admin: AdminDep,
    sessions: SessionFactoryDep,
    recommender: RecommenderDep,
    body: ExperimentIn,
) -> ExperimentOut:
    row = experiments.start(sessions, recommender, body.candidate, body.share)
    return ExperimentOut.model_validate(row)


@router.get("/experiments", response_model=ExperimentsOut)
def list_experiments(_admin: AdminDep, session: SessionDep) -> ExperimentsOut:
    rows = experiments.list_experiments(session)
    return ExperimentsOut(items=[ExperimentOut.model_validate(row) for row in rows])


@router.get("/experiments/{experiment_id}", response_model=ExperimentReportOut, responses={404: {}})
def get_experiment(
    _admin: AdminDep, session: SessionDep, settings: SettingsDep, experiment_id: ExperimentId
) -> ExperimentReportOut:
    row = experiments.get(session, experiment_id)
    found = experiments.report(
        session, row, settings.attribution_window_seconds, settings.experiment_min_impressions
    )
    return ExperimentReportOut.model_validate(
        {**ExperimentOut.model_validate(row).model_dump(), **vars(found)}
    )


@router.post(
    "/experiments/{experiment_id}/stop",
    response_model=ExperimentOut,
    responses={404: {}, 409: {"description": "the experiment is not running"}},
)
def stop_experiment(
    _admin: AdminDep,
    sessions: SessionFactoryDep,
    recommender: RecommenderDep,
    experiment_id: ExperimentId,
    body: ExperimentStopIn,
) -> ExperimentOut:
    row = experiments.stop(sessions, recommender, experiment_id, body.promote)
    return ExperimentOut.model_validate(row)
