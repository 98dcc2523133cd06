"""Read-only figures for the admin dashboard, cheap enough to poll: large PostgreSQL counts
come from the planner's statistics, request figures from the Prometheus registry.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field

from sqlalchemy import distinct, func, select, text
from sqlalchemy.orm import Session

from app.jobs.queue import count_jobs_by_status
from app.models import Movie, Rating, TrainingJob
from app.observability import LATENCY, REQUESTS, metrics_registry, multiprocess_dir
from app.schemas import RequestStatsOut, RouteStatsOut, ServiceStatsOut
from app.services import registry
from app.services.ratings import EXACT_COUNT_BELOW, count_ratings


def recent_jobs(session: Session, limit: int) -> list[TrainingJob]:
    query = select(TrainingJob).order_by(TrainingJob.created_at.desc(), TrainingJob.id).limit(limit)
    return list(session.scalars(query))


def service_stats(session: Session, served_version: str | None) -> ServiceStatsOut:
    ratings = count_ratings(session)
    users, users_estimated = _count_users(session, ratings)
    movies = session.scalar(select(func.count()).select_from(Movie)) or 0
    return ServiceStatsOut(
        ratings=ratings,
        users=users,
        movies=movies,
        counts_estimated=users_estimated or _is_estimate(session, ratings),
        active_version=registry.active_version_id(session),
        served_version=served_version,
        jobs=count_jobs_by_status(session),
        requests=request_stats(),
    )


def _is_estimate(session: Session, ratings: int) -> bool:
    """count_ratings answers PostgreSQL's live-row statistic from a million rows."""
    return session.get_bind().dialect.name == "postgresql" and ratings >= EXACT_COUNT_BELOW


def _count_users(session: Session, ratings: int) -> tuple[int, bool]:
    """Distinct raters; on a large PostgreSQL table the planner's n_distinct estimate."""
    if _is_estimate(session, ratings):
        n_distinct = session.scalar(
            text(
                "SELECT n_distinct FROM pg_stats WHERE schemaname = current_schema() "
                "AND tablename = 'ratings' AND attname = 'user_id'"
            )
        )
        if n_distinct is not None:  # negative: a share of the rows (-1 = all distinct)
            value = float(n_distinct)
            return int(round(value if value > 0 else -value * ratings)), True
    return session.scalar(select(func.count(distinct(Rating.user_id)))) or 0, False


@dataclass
class _Route:
    requests: int = 0
    client_errors: int = 0
    errors: int = 0
    seconds: float = 0.0
    observed: int = 0
    buckets: dict[float, float] = field(default_factory=lambda: defaultdict(float))


def request_stats() -> RequestStatsOut:
    routes: dict[tuple[str, str], _Route] = defaultdict(_Route)
    everything = _Route()
    requests_name, latency_name = (next(iter(m.describe())).name for m in (REQUESTS, LATENCY))
    for family in metrics_registry().collect():
        if family.name not in (requests_name, latency_name):
            continue
        for sample in family.samples:
            labels, value = sample.labels, sample.value
            key = (labels.get("method", ""), labels.get("route", ""))
            for route in (routes[key], everything):
                if sample.name == f"{requests_name}_total":
                    status = labels.get("status", "")
                    route.requests += int(value)
                    route.errors += int(value) if status.startswith("5") else 0
                    route.client_errors += int(value) if status.startswith("4") else 0
                elif sample.name == f"{latency_name}_bucket":
                    route.buckets[float(labels["le"])] += value
                elif sample.name == f"{latency_name}_sum":
                    route.seconds += value
                elif sample.name == f"{latency_name}_count":
                    route.observed += int(value)
    busiest = sorted(routes.items(), key=lambda item: (-item[1].requests, item[0]))
    return RequestStatsOut(
        scope="process" if multiprocess_dir() is None else "all workers",
        total=everything.requests,
        client_errors=everything.client_errors,
        errors=everything.errors,
        mean_ms=_mean_ms(everything),
        p50_ms=_quantile_ms(everything.buckets, 0.50),
        p95_ms=_quantile_ms(everything.buckets, 0.95),
        p99_ms=_quantile_ms(everything.buckets, 0.99),
        routes=[
            RouteStatsOut(
                method=method,
                route=template,
                requests=route.requests,
                errors=route.errors,
                mean_ms=_mean_ms(route),
                p95_ms=_quantile_ms(route.buckets, 0.95),
            )
            for (method, template), route in busiest
            if route.requests
        ],
    )


def _mean_ms(route: _Route) -> float | None:
    return round(1000 * route.seconds / route.observed, 3) if route.observed else None


def quantile_from_buckets(buckets: dict[float, float], q: float) -> float | None:
    """Prometheus' histogram_quantile over cumulative counts by upper bound (+Inf: the
    largest finite bound, all the histogram knows)."""
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return None
    rank = q * buckets[bounds[-1]]
    lower, below = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if math.isinf(bound):
                return lower
            if count == below:
                return bound
            return lower + (bound - lower) * (rank - below) / (count - below)
        lower, below = bound, count
    return lower


def _quantile_ms(buckets: dict[float, float], q: float) -> float | None:
    seconds = quantile_from_buckets(buckets, q)
    return None if seconds is None else round(1000 * seconds, 3)
