"""GET /movies/trending: recent positive ratings, damped, never a hidden movie, on SQLite and
PostgreSQL through the real app."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from app.config import Settings
from app.main import create_app
from tests.factories import add_movies

DAY = 86_400
CATALOG = [
    (1, "Old Favourite (1990)", 1990, ["Comedy"]),
    (2, "Newly Hot (2026)", 2026, ["Drama"]),
    (3, "Three Fans (2026)", 2026, ["Comedy", "Drama"]),
    (4, "Withdrawn (2026)", 2026, ["Drama"]),
    (5, "Panned (2026)", 2026, ["Drama"]),
    (6, "Next Big Thing (2026)", 2026, ["Horror"]),
]


def ratings_of(movie_id: int, stars: list[float], age_seconds: int) -> list[dict[str, Any]]:
    return [{"movie_id": movie_id, "rating": s, "age": age_seconds} for s in stars]


@pytest.fixture
def api(settings: Settings, engine: Engine, admin_headers: dict[str, str]) -> Iterator[TestClient]:
    yield from serve(settings, engine, admin_headers, cache_seconds=0)


def serve(
    settings: Settings, engine: Engine, headers: dict[str, str], cache_seconds: float
) -> Iterator[TestClient]:
    add_movies(engine, CATALOG)
    update = {"run_worker_in_api": False, "trending_cache_seconds": cache_seconds}
    quiet = settings.model_copy(update=update)
    with TestClient(create_app(quiet)) as client:
        client.headers.update(headers)
        post_ratings(
            client,
            ratings_of(1, [5.0] * 40, 30 * DAY)  # loved a month ago
            + ratings_of(1, [4.5] * 5, 3 * DAY)
            + ratings_of(2, [4.0] * 25 + [2.0] * 5, 2 * DAY)  # many, mostly liked, lately
            + ratings_of(3, [5.0] * 3, DAY // 2)  # a handful, all 5 stars, today
            + ratings_of(4, [5.0] * 50, DAY // 2)
            + ratings_of(5, [1.0] * 20, DAY // 2),  # many, none liked
        )
        assert client.patch("/admin/movies/4", json={"hidden": True}).status_code == 200
        yield client


_users = itertools.count(1)


def post_ratings(client: TestClient, ratings: list[dict[str, Any]]) -> None:
    """Each rating by a user of its own, `age` seconds ago."""
    now = int(time.time())
    body = [
        {
            "user_id": next(_users),
            "movie_id": r["movie_id"],
            "rating": r["rating"],
            "timestamp": now - r["age"],
        }
        for r in ratings
    ]
    answer = client.post("/ratings/batch", json={"ratings": body})
    assert answer.status_code == 200, answer.text


def trending(client: TestClient, **params: Any) -> list[int]:
    answer = client.get("/movies/trending", params=params)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["days"] == params.get("days", 7)
    scores = [item["score"] for item in body["items"]]
    assert scores == sorted(scores, reverse=True)
    return [item["movie_id"] for item in body["items"]]


def test_recent_positive_ratings_rank_damped_and_hidden_movies_never(api: TestClient) -> None:
    # 2: 25 liked of 30 (18.75) > 1: 5 of 5 this week (3.3) > 3: 3 of 3 (1.8); 5: none liked
    assert trending(api) == [2, 1, 3]
    body = api.get("/movies/trending", params={"n": 1}).json()
    (top,) = body["items"]
    assert top == {
        "movie_id": 2,
        "title": "Newly Hot (2026)",
        "year": 2026,
        "genres": ["Drama"],
        "score": 18.75,
        "recent_ratings": 30,
        "recent_positive": 25,
    }
    post_ratings(api, ratings_of(6, [4.5] * 60, 60))  # a new hit, this minute
    assert trending(api, n=2) == [6, 2]
    assert 4 not in trending(api, n=100, days=365), "a hidden movie never trends"
    assert api.patch("/admin/movies/4", json={"hidden": False}).status_code == 200
    assert trending(api, n=3) == [6, 4, 2]


def test_the_window_and_the_genres_filter(api: TestClient) -> None:
    assert trending(api, days=1) == [3]
    assert trending(api, days=60) == [1, 2, 3]
    assert trending(api, genre="comedy") == [1, 3]
    assert trending(api, genre=["Drama", "Horror"]) == [2, 3]
    assert trending(api, genre="Western") == []
    assert api.get("/movies/5").json()["title"] == "Panned (2026)"  # not shadowed


BAD_QUERIES = [
    "n=0",
    "n=101",
    "n=x",
    "days=0",
    "days=366",
    "days=1.5",
    "genre=true",
    "genre=",
    "top=3",
]


def test_bad_trending_queries_are_422(api: TestClient) -> None:
    for query in BAD_QUERIES:
        answer = api.get(f"/movies/trending?{query}")
        assert answer.status_code == 422, (query, answer.text)


def test_a_kept_list_still_drops_a_movie_hidden_since(
    settings: Settings, engine: Engine, admin_headers: dict[str, str]
) -> None:
    """With lists kept an hour, new ratings wait for the next read; hiding does not."""
    for client in serve(settings, engine, admin_headers, cache_seconds=3600):
        assert trending(client) == [2, 1, 3]
        post_ratings(client, ratings_of(6, [4.5] * 60, 60))
        assert trending(client) == [2, 1, 3], "the kept list"
        assert trending(client, days=8)[0] == 6, "another window: read now"
        assert client.patch("/admin/movies/2", json={"hidden": True}).status_code == 200
        assert trending(client) == [1, 3]
        assert trending(client, n=1) == [1]
