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


GENRES = ["Action", "Comedy", "Drama", "Sci-Fi"]


def synthetic_catalog(n_movies: int) -> list[tuple[int, str, int | None, list[str]]]:
    """Movie ids 1..n with a title and one or two genres each."""
    return [
        (
            m,
            f"Movie {m} ({1950 + m % 70})",
            1950 + m % 70,
            sorted({GENRES[m % 4], GENRES[(m // 4) % 4]}),
        )
        for m in range(1, n_movies + 1)
    ]


def synthetic_ratings(
    n_users: int, n_movies: int, per_user: int, seed: int = 0
) -> list[dict[str, float | int]]:
    """Two taste groups: group A loves odd movies, group B even ones; ratings follow."""
    import numpy as np

    rng = np.random.default_rng(seed)
    rows = []
    for user in range(1, n_users + 1):
        likes_odd = user % 2 == 1
        preferred = [m for m in range(1, n_movies + 1) if (m % 2 == 1) == likes_odd]
        others = [m for m in range(1, n_movies + 1) if (m % 2 == 1) != likes_odd]
        picks = list(rng.choice(preferred, size=per_user - 2, replace=False))
        picks += list(rng.choice(others, size=2, replace=False))
        for movie in picks:
            liked = (movie % 2 == 1) == likes_odd
            stars = float(rng.choice([4.0, 4.5, 5.0] if liked else [1.0, 1.5, 2.0]))
            rows.append(
                {
                    "user_id": user,
                    "movie_id": int(movie),
                    "rating": stars,
                    "timestamp": 1_000_000 + len(rows),
                }
            )
    return rows


def seed_synthetic(
    engine: Engine, n_users: int = 60, n_movies: int = 40, per_user: int = 8
) -> None:
    from app.services.ratings import upsert_ratings_batch

    add_movies(engine, synthetic_catalog(n_movies))
    with Session(engine) as session, session.begin():
        upsert_ratings_batch(session, synthetic_ratings(n_users, n_movies, per_user), 100_000)


TINY_TRAINING = {
    "hidden": [16],
    "epochs": 4,
    "patience": 2,
    "batch_size": 16,
    "lr": 0.01,
    "validation_fraction": 0.2,
}

# a candidate that learned nothing: an untrained deep head, no item path, no bias blend
WEAK_TRAINING = {
    "epochs": 1,
    "lr": 1e-7,
    "item_path": False,
    "rating_head": "direct",
    "rating_blend": 1.0,
    "popularity_penalty": 0.0,
}

# gate margins wide enough that any retrain is activated (tests of swapping, not of the gate)
LENIENT_GATE = {"quality_gate_margin": 100.0, "quality_gate_ndcg_margin": 0.99}


def damage_stored_artifact(engine: Engine, version: str, data: bytes | None) -> None:
    """Damage the registry's copy of a version's artifact: its first chunk's bytes replaced
    by ``data`` (its checksum left as it was), or every chunk deleted (None)."""
    from sqlalchemy import delete, update

    from app.models import ModelArtifactChunk

    mine = ModelArtifactChunk.version == version
    with Session(engine) as session, session.begin():
        if data is None:
            session.execute(delete(ModelArtifactChunk).where(mine))
        else:
            first = mine & (ModelArtifactChunk.chunk_index == 0)
            session.execute(update(ModelArtifactChunk).where(first).values(data=data))
