"""Tiny catalog helpers used by API tests (synthetic data, never MovieLens)."""

from __future__ import annotations

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from app.models import Movie, MovieGenre

CATALOG = [
    (1, "Toy Story (1995)", 1995, ["Animation", "Children's", "Comedy"]),
    (2, "GoldenEye (1995)", 1995, ["Action", "Adventure", "Thriller"]),
    (3, "Four Rooms (1995)", 1995, ["Thriller"]),
    (4, "Get Shorty (1995)", 1995, ["Action", "Comedy", "Drama"]),
    (5, "Copycat (1995)", 1995, ["Crime", "Drama", "Thriller"]),
    (50, "Star Wars (1977)", 1977, ["Action", "Adventure", "Romance", "Sci-Fi", "War"]),
    (100, "Fargo (1996)", 1996, ["Crime", "Drama", "Thriller"]),
    (181, "Return of the Jedi (1983)", 1983, ["Action", "Adventure", "Romance", "Sci-Fi"]),
]


def add_movies(engine: Engine, movies: list[tuple[int, str, int | None, list[str]]]) -> None:
    with Session(engine) as session, session.begin():
        for movie_id, title, year, genres in movies:
            movie = Movie(id=movie_id, title=title, year=year)
            movie.genres = [MovieGenre(genre=g) for g in genres]
            session.add(movie)


def add_catalog(engine: Engine) -> None:
    add_movies(engine, CATALOG)
