"""Catalog use cases: search, details with rating statistics, admin creation and hiding."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from sqlalchemy import Select, exists, func, select, update
from sqlalchemy.orm import Session

from app.db import updated
from app.models import Movie, MovieGenre, Rating
from app.schemas import MovieIn, MovieOut, MoviesPage
from app.services.errors import ConflictError, NotFoundError


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _filtered(
    query: Select, title_part: str | None, genre: str | None, include_hidden: bool
) -> Select:
    if not include_hidden:
        query = query.where(Movie.hidden.is_(False))
    if title_part:
        pattern = f"%{_escape_like(title_part.lower())}%"
        query = query.where(func.lower(Movie.title).like(pattern, escape="\\"))
    if genre:
        query = query.where(
            exists().where(
                MovieGenre.movie_id == Movie.id, func.lower(MovieGenre.genre) == genre.lower()
            )
        )
    return query


def _rating_stats(session: Session, movie_ids: Sequence[int]) -> dict[int, tuple[int, float]]:
    if not movie_ids:
        return {}
    rows = session.execute(
        select(Rating.movie_id, func.count(), func.avg(Rating.rating))
        .where(Rating.movie_id.in_(movie_ids))
        .group_by(Rating.movie_id)
    )
    return {movie_id: (count, float(mean)) for movie_id, count, mean in rows}


def _to_out(movie: Movie, stats: dict[int, tuple[int, float]]) -> MovieOut:
    count, mean = stats.get(movie.id, (0, None))
    return MovieOut(
        movie_id=movie.id,
        title=movie.title,
        year=movie.year,
        genres=movie.genre_names,
        rating_count=count,
        rating_mean=round(mean, 4) if mean is not None else None,
        hidden=movie.hidden,
    )


def search_movies(
    session: Session,
    title_part: str | None,
    genre: str | None,
    limit: int,
    offset: int,
    include_hidden: bool = False,
) -> MoviesPage:
    """Hidden movies are left out of the page and of its total unless asked for."""
    count = select(func.count(Movie.id))
    total = session.scalar(_filtered(count, title_part, genre, include_hidden)) or 0
    movies = session.scalars(
        _filtered(select(Movie), title_part, genre, include_hidden)
        .order_by(Movie.id)
        .limit(limit)
        .offset(offset)
    ).all()
    stats = _rating_stats(session, [m.id for m in movies])
    return MoviesPage(total=total, items=[_to_out(m, stats) for m in movies])


def get_movie(session: Session, movie_id: int) -> MovieOut:
    movie = session.get(Movie, movie_id)
    if movie is None:
        raise NotFoundError(f"movie {movie_id} does not exist")
    return _to_out(movie, _rating_stats(session, [movie_id]))


def set_hidden(session: Session, movie_id: int, hidden: bool) -> MovieOut:
    """An UPDATE, not load-and-assign: the 404 and the write are one statement."""
    if not updated(session, update(Movie).where(Movie.id == movie_id).values(hidden=hidden)):
        raise NotFoundError(f"movie {movie_id} does not exist")
    return get_movie(session, movie_id)


def create_movies(session: Session, movies: Sequence[MovieIn]) -> list[MovieOut]:
    """All or nothing: one taken or repeated id rejects the whole request with 409."""
    ids = [m.movie_id for m in movies]
    repeated = sorted(i for i, n in Counter(ids).items() if n > 1)
    taken = sorted(session.scalars(select(Movie.id).where(Movie.id.in_(ids))))
    if taken or repeated:
        raise ConflictError(
            {"message": "movie ids already taken or repeated", "movie_ids": taken + repeated}
        )
    created = []
    for item in movies:
        movie = Movie(id=item.movie_id, title=item.title, year=item.year)
        movie.genres = [MovieGenre(genre=g) for g in dict.fromkeys(item.genres)]
        session.add(movie)
        created.append(movie)
    session.flush()
    return [_to_out(m, {}) for m in created]
