"""Rating use cases: single upsert, all-or-nothing batch, listing and deletion."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Any

from pydantic import TypeAdapter, ValidationError
from sqlalchemy import Insert, delete, func, select, text, tuple_
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from app.db import updated
from app.models import Movie, Rating
from app.schemas import RatingIn, RatingOut, UserRatingItem, UserRatingsPage
from app.services.errors import InvalidInputError, NotFoundError, PayloadTooLargeError

ID_QUERY_CHUNK = 1000
_rating_adapter = TypeAdapter(RatingIn)


def _now() -> int:
    return int(time.time())


def _upsert(session: Session) -> Insert:
    """INSERT ... ON CONFLICT (user_id, movie_id) DO UPDATE in the session's dialect."""
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    stmt = dialect.insert(Rating)
    return stmt.on_conflict_do_update(
        index_elements=[Rating.user_id, Rating.movie_id],
        set_={"rating": stmt.excluded.rating, "timestamp": stmt.excluded.timestamp},
    )


def missing_movie_ids(session: Session, movie_ids: Iterable[int]) -> list[int]:
    wanted = sorted(set(movie_ids))
    found: set[int] = set()
    for start in range(0, len(wanted), ID_QUERY_CHUNK):
        chunk = wanted[start : start + ID_QUERY_CHUNK]
        found.update(session.scalars(select(Movie.id).where(Movie.id.in_(chunk))))
    return [movie_id for movie_id in wanted if movie_id not in found]


def _existing_pairs(session: Session, pairs: Sequence[tuple[int, int]]) -> set[tuple[int, int]]:
    existing: set[tuple[int, int]] = set()
    for start in range(0, len(pairs), ID_QUERY_CHUNK):
        chunk = pairs[start : start + ID_QUERY_CHUNK]
        rows = session.execute(
            select(Rating.user_id, Rating.movie_id).where(
                tuple_(Rating.user_id, Rating.movie_id).in_(chunk)
            )
        )
        existing.update((row.user_id, row.movie_id) for row in rows)
    return existing


def upsert_rating(session: Session, rating: RatingIn) -> tuple[RatingOut, bool]:
    """Store one rating; returns it and whether it was new (201) or replaced one (200)."""
    if missing_movie_ids(session, [rating.movie_id]):
        raise NotFoundError(f"movie {rating.movie_id} does not exist")
    key = (rating.user_id, rating.movie_id)
    created = not _existing_pairs(session, [key])
    values = {**rating.model_dump(), "timestamp": rating.timestamp or _now()}
    session.execute(_upsert(session), [values])
    return RatingOut(**values), created


def _validate_batch_items(items: Sequence[Any]) -> list[RatingIn]:
    """Every item's errors at once, so a client fixes them in one round."""
    valid: list[RatingIn] = []
    errors: list[dict[str, Any]] = []
    for index, item in enumerate(items):
        try:
            valid.append(_rating_adapter.validate_python(item))
        except ValidationError as exc:
            for err in exc.errors(include_url=False, include_context=False):
                errors.append(
                    {
                        "loc": ["body", "ratings", index, *err["loc"]],
                        "msg": err["msg"],
                        "type": err["type"],
                    }
                )
    if errors:
        raise InvalidInputError(errors)
    return valid


def upsert_ratings_batch(session: Session, items: Sequence[Any], max_items: int) -> tuple[int, int]:
    """All or nothing: any bad item or unknown movie leaves the database untouched."""
    if len(items) > max_items:
        raise PayloadTooLargeError(
            f"a batch holds at most {max_items} ratings; this one has {len(items)}"
        )
    ratings = _validate_batch_items(items)
    missing = missing_movie_ids(session, (r.movie_id for r in ratings))
    if missing:
        raise NotFoundError({"message": "unknown movie ids", "movie_ids": missing})
    now = _now()
    latest: dict[tuple[int, int], dict[str, Any]] = {}
    for r in ratings:  # a pair repeated inside one batch: the last one wins
        latest[(r.user_id, r.movie_id)] = {**r.model_dump(), "timestamp": r.timestamp or now}
    existing = _existing_pairs(session, list(latest))
    # Rows in key order: concurrent batches then lock overlapping rows in the same order
    # and queue behind each other instead of deadlocking (PostgreSQL would abort one).
    session.execute(_upsert(session), [latest[key] for key in sorted(latest)])
    return len(latest) - len(existing), len(existing)


def list_user_ratings(session: Session, user_id: int, limit: int, offset: int) -> UserRatingsPage:
    total = session.scalar(select(func.count()).where(Rating.user_id == user_id)) or 0
    rows = session.execute(
        select(Rating.movie_id, Rating.rating, Rating.timestamp)
        .where(Rating.user_id == user_id)
        .order_by(Rating.timestamp.desc(), Rating.movie_id)
        .limit(limit)
        .offset(offset)
    )
    items = [UserRatingItem(movie_id=m, rating=r, timestamp=t) for m, r, t in rows]
    return UserRatingsPage(user_id=user_id, total=total, items=items)


def delete_rating(session: Session, user_id: int, movie_id: int) -> None:
    result = updated(
        session, delete(Rating).where(Rating.user_id == user_id, Rating.movie_id == movie_id)
    )
    if result == 0:
        raise NotFoundError(f"user {user_id} has no rating for movie {movie_id}")


EXACT_COUNT_BELOW = 1_000_000


def count_ratings(session: Session) -> int:
    """Exact below a million ratings, else PostgreSQL's live-row statistic (COUNT over 20M
    rows takes seconds, and /metrics and the schedule poll): it follows each commit, but
    after a VACUUM or ANALYZE it is their estimate."""
    if session.get_bind().dialect.name == "postgresql":
        live = session.scalar(
            text("SELECT n_live_tup FROM pg_stat_user_tables WHERE relid = 'ratings'::regclass")
        )
        if live is not None and live >= EXACT_COUNT_BELOW:
            return int(live)
    return _exact_count(session)


def _exact_count(session: Session) -> int:
    return session.scalar(select(func.count()).select_from(Rating)) or 0
