"""Concurrent writers on the real PostgreSQL: nothing duplicated, nothing lost, no 5xx.

PostgreSQL only (SQLite has a single writer by design): this module overrides the
`database_url` fixture. Each writer thread has its own TestClient on one running app,
so requests really overlap in the server's threadpool and in the database.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from app.config import Settings
from app.main import create_app
from app.movielens.importer import import_movielens
from tests.conftest import _truncate_all
from tests.factories import add_movies, synthetic_catalog
from tests.reliability_helpers import duplicate_rating_pairs, ratings_snapshot, run_together

WRITERS = 8
HALF_STARS = [x / 2 for x in range(1, 11)]


@pytest.fixture
def database_url(postgres_url: str) -> str:
    """PostgreSQL only: replaces conftest's SQLite + PostgreSQL parametrization here."""
    _truncate_all(postgres_url)
    return postgres_url


@pytest.fixture
def app_client(settings: Settings, engine: Engine) -> Iterator[TestClient]:
    add_movies(engine, synthetic_catalog(40))
    quiet = settings.model_copy(update={"run_worker_in_api": False})
    with TestClient(create_app(quiet), raise_server_exceptions=False) as client:
        yield client


def test_eight_writers_upserting_the_same_pairs(app_client: TestClient, engine: Engine) -> None:
    pairs = [(u, m) for u in (1, 2, 3) for m in (1, 2, 3, 4, 5)]
    written: dict[tuple[int, int], set[tuple[float, int]]] = {p: set() for p in pairs}
    statuses: list[int] = []
    lock = threading.Lock()

    def writer(index: int) -> Callable[[], None]:
        def work() -> None:
            rng = random.Random(index)
            client = TestClient(app_client.app, raise_server_exceptions=False)
            for step in range(30):
                user, movie = rng.choice(pairs)
                rating = rng.choice(HALF_STARS)
                stamp = 1_000_000 + index * 1000 + step  # unique: identifies the write
                response = client.post(
                    "/ratings",
                    json={"user_id": user, "movie_id": movie, "rating": rating, "timestamp": stamp},
                )
                with lock:
                    statuses.append(response.status_code)
                    if response.status_code in (200, 201):
                        written[(user, movie)].add((rating, stamp))

        return work

    run_together([writer(i) for i in range(WRITERS)])
    assert len(statuses) == WRITERS * 30
    assert all(s in (200, 201) for s in statuses), sorted(set(statuses))
    assert duplicate_rating_pairs(engine) == 0
    final = ratings_snapshot(engine)
    touched = {p for p, values in written.items() if values}
    assert set(final) == touched
    for pair, value in final.items():
        assert value in written[pair], (pair, value)  # rating and timestamp of one write


def _write_ml_latest(folder: Path, ratings: list[tuple[int, int, float, int]]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    movies = ["movieId,title,genres"]
    movies += [f"{m},{title},{'|'.join(g)}" for m, title, _y, g in synthetic_catalog(40)]
    (folder / "movies.csv").write_text("\n".join(movies) + "\n")
    lines = ["userId,movieId,rating,timestamp"]
    lines += [f"{u},{m},{r},{t}" for u, m, r, t in ratings]
    (folder / "ratings.csv").write_text("\n".join(lines) + "\n")
    return folder


def test_batches_and_an_import_beside_single_writes_lose_nothing(
    app_client: TestClient, engine: Engine, tmp_path: Path
) -> None:
    rng = random.Random(7)
    # the import: users 1000..1059, and some pairs the single writers also write
    imported = [
        (u, m, rng.choice(HALF_STARS), 5_000 + u)
        for u in range(1000, 1060)
        for m in rng.sample(range(1, 41), 10)
    ]
    folder = _write_ml_latest(tmp_path / "ml-latest-small", imported)
    contested = [(u, m) for u, m, _r, _t in imported[::7]]
    # two batches over the same pairs in opposite orders (a deadlock before sorting)
    batch_pairs = [(u, m) for u in range(2000, 2040) for m in range(1, 11)]
    batches = [
        [{"user_id": u, "movie_id": m, "rating": 3.0, "timestamp": 7} for u, m in batch_pairs],
        [
            {"user_id": u, "movie_id": m, "rating": 4.0, "timestamp": 8}
            for u, m in reversed(batch_pairs)
        ],
    ]
    singles: dict[tuple[int, int], tuple[float, int]] = {}
    failures: list[Any] = []
    lock = threading.Lock()

    def importer() -> None:
        report = import_movielens(engine, folder)
        assert report.layout

    def batch_poster(items: list[dict[str, Any]]) -> Callable[[], None]:
        def work() -> None:
            client = TestClient(app_client.app, raise_server_exceptions=False)
            for _round in range(3):  # the same rows, at the same time, opposite orders
                response = client.post("/ratings/batch", json={"ratings": items})
                if response.status_code != 200:
                    with lock:
                        failures.append(("batch", response.status_code, response.text[:200]))

        return work

    def single_writer(index: int) -> Callable[[], None]:
        def work() -> None:
            client = TestClient(app_client.app, raise_server_exceptions=False)
            own = [(3000 + index, m) for m in range(1, 21)]
            for n, (user, movie) in enumerate(own + contested[index::4]):
                value = (HALF_STARS[(n + index) % 10], 9_000 + n)
                body = {"user_id": user, "movie_id": movie, "rating": value[0]}
                response = client.post("/ratings", json={**body, "timestamp": value[1]})
                with lock:
                    if response.status_code in (200, 201):
                        singles[(user, movie)] = value
                    else:
                        failures.append(("single", response.status_code, response.text[:200]))

        return work

    run_together(
        [importer, batch_poster(batches[0]), batch_poster(batches[1])]
        + [single_writer(i) for i in range(4)]
    )
    assert not failures, failures[:5]
    final = ratings_snapshot(engine)
    assert duplicate_rating_pairs(engine) == 0
    for pair, value in singles.items():  # an API write always wins over the import
        assert final.get(pair) == value, pair
    for user, movie, rating, stamp in imported:
        assert (user, movie) in final, "an imported rating was lost"
        if (user, movie) not in singles:
            assert final[(user, movie)] == (rating, stamp)
    for user, movie in batch_pairs:
        assert final[(user, movie)] in {(3.0, 7), (4.0, 8)}
    expected = set(singles) | {(u, m) for u, m, _r, _t in imported} | set(batch_pairs)
    assert set(final) == expected
