"""Structured logging and Prometheus metrics shared by every route. With several workers
the metrics live in prometheus-client's multiprocess mode (`saerec serve` sets its folder),
so gauges say how they combine across processes.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import IO, Any

import structlog
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from starlette.types import ASGIApp, Message, Receive, Scope, Send

REQUESTS = Counter(
    "saerec_http_requests_total",
    "HTTP requests by route template and status",
    ["method", "route", "status"],
)
LATENCY = Histogram(
    "saerec_http_request_duration_seconds",
    "HTTP request latency by route template",
    ["method", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
# Database figures: every process sets the same value on a scrape; the latest one wins.
RATINGS_TOTAL = Gauge(
    "saerec_ratings_total", "Ratings stored in the database", multiprocess_mode="mostrecent"
)
RECOMMEND_LATENCY = Histogram(
    "saerec_recommendation_seconds",
    "Time to build one recommendation list (DB read, fold-in, top-n), by strategy",
    ["strategy"],
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0),
)
TRAINING_JOBS = Gauge(
    "saerec_training_jobs", "Training jobs by status", ["status"], multiprocess_mode="mostrecent"
)
# Per process 1 for the version it serves; summed over the live processes of a server.
MODEL_INFO = Gauge(
    "saerec_model_active",
    "Processes serving this model version (1 per process)",
    ["version"],
    multiprocess_mode="livesum",
)
MODEL_LOADS = Counter(
    "saerec_model_loads_total", "Model versions loaded for serving, by result", ["result"]
)
METRICS_CONTENT_TYPE = CONTENT_TYPE_LATEST


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def metrics_registry() -> CollectorRegistry:
    """This process's registry, or one adding up every worker's in multiprocess mode."""
    if multiprocess_dir() is None:
        return REGISTRY
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return registry


def render_metrics() -> bytes:
    return generate_latest(metrics_registry())


def forget_this_process() -> None:
    """On shutdown: drop this worker's live gauges, so a restarted worker is not counted twice."""
    if multiprocess_dir() is not None:
        multiprocess.mark_process_dead(os.getpid())


UVICORN_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access")


class _StderrHandler(logging.StreamHandler[IO[str]]):
    """Writes to whatever sys.stderr is when a record comes (test runners swap it)."""

    @property
    def stream(self) -> IO[str]:
        return sys.stderr

    @stream.setter
    def stream(self, _value: IO[str]) -> None:
        pass


def configure_logging(
    level: str = "INFO", json_logs: bool = False, stream: IO[str] | None = None
) -> None:
    """One format for every line, the app's and uvicorn's or alembic's alike: key=value on a
    terminal, JSON with LOG_JSON or any other stream (read by log shippers)."""
    level_no = logging.getLevelName(level.upper())
    stamp = structlog.processors.TimeStamper(fmt="iso", utc=True)
    isatty = getattr(stream or sys.stderr, "isatty", None)
    renderer: list[Any] = [structlog.dev.ConsoleRenderer()]
    if json_logs or not (isatty and isatty()):
        renderer = [structlog.processors.format_exc_info, structlog.processors.JSONRenderer()]
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.stdlib.add_log_level, structlog.stdlib.add_logger_name, stamp],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *renderer],
    )
    handler = logging.StreamHandler(stream) if stream else _StderrHandler()
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level_no)
    for name in UVICORN_LOGGERS:  # uvicorn's own handlers would print its plain format
        logger = logging.getLogger(name)
        # through the root handler, unless uvicorn switched its access log off (as `serve`
        # asks: a line per request cost the event loop ~2 %)
        enabled = logger.propagate or bool(logger.handlers)
        logger.handlers.clear()
        logger.propagate = enabled
    for noisy in ("alembic", "httpx", "matplotlib"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, level_no))
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.stdlib.add_logger_name,
            stamp,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.make_filtering_bound_logger(level_no),
        cache_logger_on_first_use=True,
    )


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)


class MetricsMiddleware:
    """Counts and times requests by route template (not raw path: ids would explode labels)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.log = get_logger("saerec.http")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            elapsed = time.perf_counter() - started
            REQUESTS.labels(scope["method"], template, str(status)).inc()
            LATENCY.labels(scope["method"], template).observe(elapsed)
            if status >= 500:
                self.log.warning(
                    "request_failed",
                    method=scope["method"],
                    route=template,
                    status=status,
                    ms=round(elapsed * 1000, 2),
                )
