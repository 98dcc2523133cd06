"""Application factory: wires settings, database, routers, metrics and error handling."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import torch
from fastapi import Depends, FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError, IntegrityError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from starlette.exceptions import HTTPException
from starlette.routing import Match
from threadpoolctl import threadpool_limits

from app.api import admin, dashboard, dismissals, movies, ops, ratings, recommendations
from app.api.deps import reject_unknown_query
from app.api.limits import RequestLimitsMiddleware
from app.config import Settings, get_settings
from app.db import create_db_engine, create_session_factory
from app.jobs.launcher import JobLauncher
from app.observability import (
    MetricsMiddleware,
    configure_logging,
    forget_this_process,
    get_logger,
)
from app.services.errors import ServiceError
from app.services.trending import TrendingLists
from app.serving.popular import REFRESH_SECONDS
from app.serving.recommender import TORCH_THREADS, Recommender

log = get_logger("saerec.app")
BODY_PARSE_ERROR = "There was an error parsing the body"  # FastAPI's 400 for undecodable bodies


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def service_error(_request: Request, exc: ServiceError) -> JSONResponse:
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code)

    @app.exception_handler(OperationalError)
    @app.exception_handler(PoolTimeoutError)
    async def database_unavailable(request: Request, exc: Exception) -> JSONResponse:
        sqlstate = str(getattr(getattr(exc, "orig", None), "sqlstate", "") or "")
        if sqlstate.startswith("40"):  # deadlock or serialization failure: safe to retry
            log.warning("database_conflict", path=request.url.path, sqlstate=sqlstate)
            detail = "the request conflicted with a concurrent write; retry it"
        else:
            log.error("database_unavailable", path=request.url.path, error=type(exc).__name__)
            detail = "the database is unavailable; retry shortly"
        return JSONResponse({"detail": detail}, status_code=503, headers={"Retry-After": "1"})

    @app.exception_handler(IntegrityError)
    async def database_error(request: Request, exc: IntegrityError) -> JSONResponse:
        log.error("database_error", path=request.url.path, error=type(exc.orig).__name__)
        return JSONResponse({"detail": "the request could not be stored"}, status_code=409)

    @app.exception_handler(DataError)
    async def database_refused_value(request: Request, exc: DataError) -> JSONResponse:
        """A value the schema let through but the database cannot hold: the client's fault."""
        log.warning("database_refused_value", path=request.url.path, error=type(exc.orig).__name__)
        error = {"loc": ["request"], "msg": "a value cannot be stored", "type": "value_error"}
        return JSONResponse({"detail": [error]}, status_code=422)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled_error", path=request.url.path)
        return JSONResponse({"detail": "internal server error"}, status_code=500)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Any:
        """A body that is not UTF-8, or holds a 5,000-digit number, is invalid JSON too: 422."""
        if exc.status_code == 400 and exc.detail == BODY_PARSE_ERROR:
            msg = "the body is not valid JSON (UTF-8 text, numbers of at most 4300 digits)"
            error = {"loc": ["body"], "msg": msg, "type": "json_invalid"}
            return JSONResponse({"detail": [error]}, status_code=422)
        if exc.status_code == 405:
            headers = {**(exc.headers or {}), "Allow": _allowed_methods(request)}
            exc = HTTPException(405, exc.detail, headers=headers)
        return await http_exception_handler(request, exc)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
            for e in exc.errors()
        ]
        return JSONResponse({"detail": errors}, status_code=422)


# Matched in this order, router by router: the hot path's first, so a recommendation
# request is not tried against every other route (the probes keep their place).
ROUTERS = (recommendations, ratings, dismissals, movies, admin, ops, dashboard)


def _allowed_methods(request: Request) -> str:
    """Every method of every route at this path (Starlette names only the first route's)."""
    methods: set[str] = set()
    for module in ROUTERS:
        for route in module.router.routes:
            match, _ = route.matches(request.scope)
            if match is not Match.NONE:
                methods |= getattr(route, "methods", None) or set()
    return ", ".join(sorted(methods))


UNKNOWN_QUERY_NOTE = "Validation Error, also for a query parameter this operation does not declare"
BOUNDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")


def _query_parameters(schema: dict[str, Any]) -> None:
    """Each 422 of an operation with query parameters says undeclared ones are refused. A
    repeatable one sent once (`?genre=Drama`) is the same text as a list of one, so the
    schema admits the item alone too (else a fuzzer's "not an array" case is accepted)."""
    for path in schema.get("paths", {}).values():
        for operation in path.values():
            query = [p for p in operation.get("parameters", []) if p.get("in") == "query"]
            answer = operation.get("responses", {}).get("422")
            if answer and query:
                answer["description"] = UNKNOWN_QUERY_NOTE
            for param in query:
                choices = param.get("schema", {}).get("anyOf") or []
                arrays = [c for c in choices if c.get("type") == "array" and "items" in c]
                choices.extend(array["items"] for array in arrays)


def _integer_bounds(node: Any) -> None:
    """FastAPI writes every bound as a float; an integer's bound goes out as an integer, so
    a client comparing 9.223372036854775e18 loosely cannot think a larger id is allowed."""
    if isinstance(node, dict):
        if node.get("type") == "integer":
            for key in BOUNDS:
                if isinstance(node.get(key), float) and node[key].is_integer():
                    node[key] = int(node[key])
        for value in node.values():
            _integer_bounds(value)
    elif isinstance(node, list):
        for value in node:
            _integer_bounds(value)


def _truthful_openapi(app: FastAPI) -> Callable[[], dict[str, Any]]:
    """app.openapi, finished so that it states exactly what the server accepts."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = generate()
            _query_parameters(schema)
            _integer_bounds(schema)
        return app.openapi_schema or generate()

    return openapi


def _try(action: Callable[[], object], what: str) -> None:
    """Background refreshes must survive a database outage and retry next round."""
    try:
        action()
    except Exception as exc:
        log.warning(f"{what}_failed", error=f"{type(exc).__name__}: {exc}")


async def _every(seconds: float, action: Callable[[], object], what: str) -> None:
    while True:
        await asyncio.sleep(seconds)
        await asyncio.to_thread(_try, action, what)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    configure_logging(settings.log_level, settings.log_json)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Requests already run in parallel: BLAS threads per request only oversubscribe
        # the cores (numpy's OpenBLAS spinning beside torch's pool halved throughput).
        torch.set_num_threads(TORCH_THREADS)
        threadpool_limits(TORCH_THREADS)
        engine = create_db_engine(settings)
        app.state.engine = engine
        app.state.session_factory = create_session_factory(engine)
        recommender = Recommender(engine, settings)
        app.state.recommender = recommender
        app.state.trending = TrendingLists(settings.trending_cache_seconds)
        # Both before the first request: no request pays for loading or for the popular list.
        _try(recommender.refresh_model, "initial_model_load")
        _try(recommender.popularity.refresh, "initial_popular_build")
        launcher = (
            JobLauncher(settings, engine, child_env=settings.as_env())
            if settings.run_worker_in_api
            else None
        )
        app.state.launcher = launcher
        if launcher is not None:
            launcher.start()
        timers = (
            # requests follow the registry themselves: this poll preloads in idle processes
            (settings.model_poll_seconds, recommender.refresh_model, "refresh_model"),
            (REFRESH_SECONDS, recommender.popularity.refresh_if_due, "refresh_popular_if_due"),
            (
                settings.new_movies_refresh_seconds,
                recommender.refresh_new_movies,
                "refresh_new_movies",
            ),
        )
        tasks = [asyncio.create_task(_every(*timer)) for timer in timers]
        log.info(
            "started",
            database=engine.url.render_as_string(hide_password=True),
            model_version=recommender.version,
        )
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if launcher is not None:
                await asyncio.to_thread(launcher.stop)
            recommender.shutdown()
            engine.dispose()
            forget_this_process()

    app = FastAPI(
        title="saerec",
        version="0.1.0",
        description="Movie recommendations from a stacked autoencoder. Unknown JSON fields "
        "and undeclared query parameters are refused with 422.",
        lifespan=lifespan,
        dependencies=[Depends(reject_unknown_query)],
    )
    app.openapi = _truthful_openapi(app)  # type: ignore[method-assign]
    app.state.settings = settings
    app.add_middleware(
        RequestLimitsMiddleware,
        max_body_bytes=settings.max_body_bytes,
        max_query_bytes=settings.max_query_bytes,
    )
    app.add_middleware(MetricsMiddleware)  # outside the limits: refusals are counted too
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["*"],
            allow_headers=["*"],
        )
    _install_error_handlers(app)
    for module in ROUTERS:
        app.include_router(module.router)
    return app
