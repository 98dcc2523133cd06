"""Trending movies: the most liked of the last days, never a hidden movie. A movie's score
is its positive ratings (4 stars or more) times their share of its ratings in the window,
the share shrunk toward a prior:

    score = positives * (positives + PRIOR_RATINGS * PRIOR_SHARE) / (ratings + PRIOR_RATINGS)

So three 5-star ratings score 1.8, 40 positives among 50 ratings 30, among 200 8.6 (a share
alone would reward the handful, a count the divisive). The read is a range of
`ix_ratings_timestamp`; `TrendingLists` keeps it a few seconds (docs/design.md).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from sqlalchemy import Float, Select, case, cast, exists, func, literal, select
from sqlalchemy.orm import Session

from app.models import Movie, MovieGenre, Rating
from app.schemas import TrendingItem, TrendingOut

POSITIVE_STARS = 4.0
PRIOR_RATINGS = 10.0
PRIOR_SHARE = 0.5
DAY_SECONDS = 86_400


def trending_query(n: int, days: int, genres: Sequence[str], now: float) -> Select:
    """(movie id, ratings, positives, score) of the top n, best first."""
    since = int(now) - days * DAY_SECONDS
    positive = case((Rating.rating >= POSITIVE_STARS, 1), else_=0)
    window = (
        select(
            Rating.movie_id.label("movie_id"),
            func.count().label("ratings"),
            func.sum(positive).label("positives"),
        )
        .where(Rating.timestamp >= since)
        .group_by(Rating.movie_id)
        .subquery()
    )
    positives = cast(window.c.positives, Float)
    score = (
        positives
        * (positives + literal(PRIOR_RATINGS * PRIOR_SHARE, Float))
        / (cast(window.c.ratings, Float) + literal(PRIOR_RATINGS, Float))
    ).label("score")
    query = (
        select(window.c.movie_id, window.c.ratings, window.c.positives, score)
        .join(Movie, Movie.id == window.c.movie_id)
        .where(Movie.hidden.is_(False), window.c.positives > 0)
    )
    if genres:
        wanted = sorted({genre.lower() for genre in genres})
        query = query.where(
            exists().where(
                MovieGenre.movie_id == Movie.id, func.lower(MovieGenre.genre).in_(wanted)
            )
        )
    return query.order_by(score.desc(), window.c.movie_id).limit(n)


class TrendingLists:
    """Each window's top `MAX_N`, reused for `seconds`; every request still drops the hidden
    movies (reading afresh when that leaves it short), so a hidden movie never shows."""

    MAX_N = 100  # the most a request asks for
    MAX_LISTS = 1000  # (days, genres) pairs kept; beyond, all are dropped (as AnswerCache)

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._seconds = seconds
        self._clock = clock
        self._lists: dict[tuple[int, tuple[str, ...]], tuple[float, TrendingOut]] = {}

    def top(self, session: Session, n: int, days: int, genres: Sequence[str]) -> TrendingOut:
        if self._seconds <= 0:
            return trending_movies(session, n, days, genres)
        key = (days, tuple(sorted({genre.lower() for genre in genres})))
        kept = self._lists.get(key)
        if kept is None or self._clock() - kept[0] >= self._seconds:
            kept = (self._clock(), trending_movies(session, self.MAX_N, days, key[1]))
            if len(self._lists) >= self.MAX_LISTS:
                self._lists.clear()
            self._lists[key] = kept
        ranked = kept[1].items
        hidden = set(session.scalars(select(Movie.id).where(Movie.hidden.is_(True))))
        items = [item for item in ranked if item.movie_id not in hidden][:n]
        if len(items) < min(n, len(ranked)) and len(ranked) == self.MAX_N:
            return trending_movies(session, n, days, genres)  # too many hidden since
        return TrendingOut(days=days, items=items)


def trending_movies(
    session: Session, n: int, days: int, genres: Sequence[str], now: float | None = None
) -> TrendingOut:
    """The n top-scoring movies of the last `days` (any of `genres` when given), read now."""
    query = trending_query(n, days, genres, time.time() if now is None else now)
    rows = session.execute(query).all()
    movies = {
        movie.id: movie
        for movie in session.scalars(select(Movie).where(Movie.id.in_([r[0] for r in rows])))
    }
    items = [
        TrendingItem(
            movie_id=movie_id,
            title=movies[movie_id].title,
            year=movies[movie_id].year,
            genres=movies[movie_id].genre_names,
            score=round(float(value), 4),
            recent_ratings=int(ratings),
            recent_positive=int(liked),
        )
        for movie_id, ratings, liked, value in rows
    ]
    return TrendingOut(days=days, items=items)
