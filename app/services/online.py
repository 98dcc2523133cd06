"""How the shown recommendations did, per model version or experiment arm: a rating of a
movie counts for the latest impression that showed it to that user at or before the rating,
within the window. Computed when read, by index ranges (docs/design.md): rating writes stay
as they were, an unflushed impression is never missed, a replaced rating counts as last.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, String, and_, case, cast, exists, func, literal, or_, select
from sqlalchemy.orm import Session, aliased

from app.models import Impression, Rating

HIT = 4.0
"""a rating at least this high is a hit."""
Z95 = 1.959963984540054


def wilson(successes: int, trials: int) -> tuple[float, float] | None:
    """Wilson's 95 % interval: sound near 0 and 1 and on few trials; None without trials."""
    if trials <= 0:
        return None
    p = successes / trials
    z2 = Z95 * Z95
    centre = (p + z2 / (2 * trials)) / (1 + z2 / trials)
    half = Z95 * math.sqrt(p * (1 - p) / trials + z2 / (4 * trials * trials)) / (1 + z2 / trials)
    return max(0.0, centre - half), min(1.0, centre + half)


def difference_interval(
    a: tuple[int, int], b: tuple[int, int]
) -> tuple[float, tuple[float, float]] | None:
    """p_a - p_b of (successes, trials) pairs with Newcombe's hybrid score interval; None
    when either has no trials."""
    wa, wb = wilson(*a), wilson(*b)
    if wa is None or wb is None:
        return None
    pa, pb = a[0] / a[1], b[0] / b[1]
    d = pa - pb
    lo = d - math.sqrt((pa - wa[0]) ** 2 + (wb[1] - pb) ** 2)
    hi = d + math.sqrt((wa[1] - pa) ** 2 + (pb - wb[0]) ** 2)
    return d, (lo, hi)


@dataclass(frozen=True)
class OnlineFigures:
    impressions: int
    users: int
    hits: int  # attributed ratings >= HIT
    hit_impressions: int  # impressions followed by at least one hit
    mean_shown_rating: float | None  # of the attributed ratings

    @property
    def hit_rate(self) -> float | None:
        return self.hit_impressions / self.impressions if self.impressions else None

    @property
    def ci95(self) -> tuple[float, float] | None:
        return wilson(self.hit_impressions, self.impressions)

    def as_dict(self) -> dict[str, Any]:
        return {
            "impressions": self.impressions,
            "users": self.users,
            "hits": self.hits,
            "hit_rate": self.hit_rate,
            "ci95": list(self.ci95) if self.ci95 else None,
            "mean_shown_rating": self.mean_shown_rating,
        }


def as_utc(moment: datetime) -> datetime:
    """A time as stored (UTC); one at the edge of the calendar stays at that edge."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    try:
        return moment.astimezone(UTC)
    except OverflowError:  # 0001-01-01T00:00+01:00 has no UTC form
        return (datetime.min if moment.year == 1 else datetime.max).replace(tzinfo=UTC)


def figures(
    session: Session,
    window_seconds: int,
    *,
    version: str | None = None,
    experiment_id: str | None = None,
    arm: str | None = None,
    since: datetime | None = None,
) -> OnlineFigures:
    where: list[ColumnElement[bool]] = []
    if version is not None:
        where.append(Impression.model_version == version)
    if experiment_id is not None:
        where.append(Impression.experiment_id == experiment_id)
    if arm is not None:
        where.append(Impression.arm == arm)
    if since is not None:
        where.append(Impression.shown_at >= as_utc(since))
    shown, users, first_ms = session.execute(
        select(
            func.count(), func.count(Impression.user_id.distinct()), func.min(Impression.shown_ms)
        ).where(*where)
    ).one()
    if not shown:
        return OnlineFigures(0, 0, 0, 0, None)
    attributed = _attributed(window_seconds, where, int(first_ms) // 1000)
    hit = attributed.c.rating >= HIT
    hits, hit_impressions, mean = session.execute(
        select(
            func.coalesce(func.sum(case((hit, 1), else_=0)), 0),
            func.count(case((hit, attributed.c.impression_id)).distinct()),
            func.avg(attributed.c.rating),
        )
    ).one()
    mean_rating = round(float(mean), 4) if mean is not None else None
    return OnlineFigures(int(shown), int(users), int(hits), int(hit_impressions), mean_rating)


def _shows(impression: Any, movie_id: Any) -> ColumnElement[bool]:
    """The impression's movie list holds the movie: ",12,7,301," contains ",7,"."""
    listed = literal(",") + impression.movie_ids + literal(",")
    return listed.like(literal("%,") + cast(movie_id, String) + literal(",%"))


def _attributed(window_seconds: int, where: list[ColumnElement[bool]], first_second: int) -> Any:
    """(impression_id, rating) of every rating attributed to a matching impression; bounded
    to ratings since the first impression, so a planner with statistics starts from the
    recent end of `ix_ratings_timestamp`."""
    shown, later = Impression, aliased(Impression)
    # a rating's whole second: it follows an impression shown before that second ends
    rated_by = (Rating.timestamp + 1) * 1000
    rated_after = and_(
        Rating.user_id == shown.user_id,
        rated_by > shown.shown_ms,
        rated_by <= shown.shown_ms + window_seconds * 1000,
        _shows(shown, Rating.movie_id),
    )
    shown_later = (  # a later impression showed it before the rating: that one gets it
        exists()
        .where(
            later.user_id == shown.user_id,
            later.shown_ms < rated_by,
            or_(
                later.shown_ms > shown.shown_ms,
                and_(later.shown_ms == shown.shown_ms, later.id > shown.id),
            ),
            _shows(later, Rating.movie_id),
        )
        .correlate(shown, Rating)
    )
    return (
        select(shown.id.label("impression_id"), Rating.rating)
        .select_from(Rating)
        .join(shown, rated_after)
        .where(Rating.timestamp >= first_second, *where, ~shown_later)
        .subquery()
    )
