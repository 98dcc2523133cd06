"""The popular fallback list: damped mean ratings, rebuilt on a timer, swapped by one
reference assignment."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session, sessionmaker

from app.models import Rating
from app.serving.catalog import Catalog, load_catalog
from app.serving.filters import Filters


@dataclass(frozen=True)
class PopularList:
    """Movies by damped mean rating (sum + m * global_mean) / (count + m): raw counts favour
    the merely common, raw means a single 5-star vote."""

    catalog: Catalog
    scores: np.ndarray  # sorted descending, aligned with catalog


def build_popular_list(session: Session, prior_count: float) -> PopularList:
    if session.get_bind().dialect.name == "postgresql":
        # a rebuild scans every rating: on one core, leaving the others to the requests
        session.execute(text("SET LOCAL max_parallel_workers_per_gather = 0"))
    rows = session.execute(
        select(Rating.movie_id, func.count(), func.sum(Rating.rating)).group_by(Rating.movie_id)
    ).all()
    if not rows:
        empty = Catalog(np.zeros(0, dtype=np.int64), [], [], {})
        return PopularList(empty, np.zeros(0, dtype=np.float32))
    ids = np.array([r[0] for r in rows], dtype=np.int64)
    counts = np.array([r[1] for r in rows], dtype=np.float64)
    sums = np.array([float(r[2]) for r in rows], dtype=np.float64)
    global_mean = sums.sum() / counts.sum()
    scores = (sums + prior_count * global_mean) / (counts + prior_count)
    order = np.lexsort((ids, -scores))
    return PopularList(load_catalog(session, ids[order]), scores[order].astype(np.float32))


PRIOR_COUNT = 20.0
"""``m`` of the damped mean: a movie needs this many ratings to weigh as much as the prior."""
REFRESH_SECONDS = 30.0
"""the least time between rebuilds (slow rebuilds are spaced further: `Popularity.interval`)."""


class Popularity:
    """The popular fallback, rebuilt on a timer and swapped by one assignment. A rebuild
    aggregates every rating (5-7 s at 25M, a core less for the requests), so rebuilds take
    at most `BUSY_SHARE` of the time: ``refresh_seconds`` apart, or further when slow."""

    BUSY_SHARE = 0.01

    def __init__(
        self,
        sessions: sessionmaker[Session],
        prior_count: float,
        refresh_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._sessions = sessions
        self._clock = clock
        self._prior_count = prior_count
        self._refresh_seconds = refresh_seconds
        self._build_seconds = 0.0
        self._built_at = 0.0  # the clock at the end of the last rebuild
        self._popular: PopularList | None = None

    @property
    def interval(self) -> float:
        return max(self._refresh_seconds, self._build_seconds / self.BUSY_SHARE)

    def refresh(self) -> None:
        started = self._clock()
        with self._sessions() as session:
            popular = build_popular_list(session, self._prior_count)
        self._built_at = self._clock()
        self._build_seconds = self._built_at - started
        self._popular = popular

    def refresh_if_due(self) -> bool:
        if self._popular is not None and self._clock() - self._built_at < self.interval:
            return False
        self.refresh()
        return True

    def current(self) -> PopularList:
        if self._popular is None:  # only when the build at start-up failed (database away)
            self.refresh()
        assert self._popular is not None
        return self._popular

    def items(self, rated: np.ndarray, n: int, filters: Filters) -> list[dict[str, Any]]:
        """The n most popular movies the filters allow (the user's rated ones left out)."""
        popular = self.current()
        top = np.flatnonzero(filters.allowed(popular.catalog, rated))[:n]  # sorted by score
        return popular.catalog.items(top, popular.scores[top])
