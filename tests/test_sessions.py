"""Anonymous sessions (POST /recommendations): a session's ratings are folded in exactly
as a stored user's are, through the same batcher, model and filters; nothing is stored."""

from __future__ import annotations

import random
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from app.config import Settings
from app.main import create_app
from tests.conftest import ADMIN_TOKEN
from tests.factories import seed_synthetic
from tests.reliability_helpers import ratings_snapshot
from tests.test_recommendations_api import train_tiny


@pytest.fixture
def seeded(settings: Settings, engine: Engine) -> Settings:
    seed_synthetic(engine)
    return settings.model_copy(update={"run_worker_in_api": False})


def session_of(client: TestClient, user_id: int, seed: int) -> list[dict[str, Any]]:
    """The stored user's ratings as a session sends them, in a shuffled order."""
    page = client.get(f"/users/{user_id}/ratings", params={"limit": 1000}).json()
    ratings = [{"movie_id": r["movie_id"], "rating": r["rating"]} for r in page["items"]]
    random.Random(seed).shuffle(ratings)
    return ratings


QUERIES: list[dict[str, Any]] = [
    {},
    {"n": 5, "genre": ["Drama", "comedy"]},
    {"n": 40, "exclude": [1, 2, 3, 4]},
    {"n": 3, "explain": True},
]


def assert_session_answers_as_user(client: TestClient, user_id: int) -> str:
    """Every query, asked for the stored user and for a session of its ratings: the same
    answer but the user id (items, scores, predicted ratings, order, reasons)."""
    session = session_of(client, user_id, seed=user_id)
    strategies = set()
    for query in QUERIES:
        stored = client.get(f"/users/{user_id}/recommendations", params=query)
        asked = client.post("/recommendations", json={"ratings": session, **query})
        assert stored.status_code == asked.status_code == 200, asked.text
        user_body, session_body = stored.json(), asked.json()
        assert session_body.pop("user_id") is None
        assert user_body.pop("user_id") == user_id
        assert session_body.pop("recommendation_id") != user_body.pop("recommendation_id")
        assert session_body == user_body, query
        strategies.add(session_body["strategy"])
    (strategy,) = strategies
    return strategy


def test_a_session_is_answered_as_the_stored_user_with_its_ratings(
    seeded: Settings, engine: Engine
) -> None:
    assert train_tiny(seeded, engine).activated
    before = ratings_snapshot(engine)
    with TestClient(create_app(seeded)) as client:
        hidden = client.patch(
            "/admin/movies/7",
            json={"hidden": True},
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        )
        assert hidden.status_code == 200
        for user_id in (3, 8):
            assert assert_session_answers_as_user(client, user_id) == "autoencoder"
        body = client.post("/recommendations", json={"ratings": session_of(client, 3, 0)}).json()
        assert 7 not in [item["movie_id"] for item in body["items"]]
        metrics = client.get("/metrics").text
    assert 'method="POST",route="/recommendations",status="200"' in metrics
    assert ratings_snapshot(engine) == before, "a session stores nothing"


def test_without_a_model_a_session_gets_the_popular_list_as_a_user(seeded: Settings) -> None:
    with TestClient(create_app(seeded)) as client:
        assert assert_session_answers_as_user(client, 5) == "popular"


def test_a_session_may_rate_a_movie_added_after_training(
    seeded: Settings, engine: Engine, admin_headers: dict[str, str]
) -> None:
    assert train_tiny(seeded, engine).activated
    with TestClient(create_app(seeded)) as client:
        added = client.post(
            "/movies", json={"movie_id": 500, "title": "New (2026)"}, headers=admin_headers
        )
        assert added.status_code == 201
        ratings = [{"movie_id": 500, "rating": 5.0}, {"movie_id": 1, "rating": 4.5}]
        body = client.post("/recommendations", json={"ratings": ratings, "n": 5})
        assert body.status_code == 200, body.text
        assert body.json()["strategy"] == "autoencoder"
        assert not {1, 500} & {item["movie_id"] for item in body.json()["items"]}


def test_unknown_movies_are_404_listing_them(seeded: Settings) -> None:
    with TestClient(create_app(seeded)) as client:
        ratings = [
            {"movie_id": 9002, "rating": 4.0},
            {"movie_id": 1, "rating": 4.0},
            {"movie_id": 9001, "rating": 3.0},
        ]
        answer = client.post("/recommendations", json={"ratings": ratings})
        assert answer.status_code == 404
        assert answer.json()["detail"] == {
            "message": "unknown movie ids",
            "movie_ids": [9001, 9002],
        }


ONE = {"movie_id": 1, "rating": 4.0}


BAD_SESSIONS: list[dict[str, Any]] = [
    {"ratings": []},
    {},
    {"ratings": [{"movie_id": m, "rating": 4.0} for m in range(1, 1002)]},
    {"ratings": [{"movie_id": 1, "rating": 0}]},
    {"ratings": [{"movie_id": 1, "rating": 4.2}]},
    {"ratings": [{"movie_id": 1, "rating": "4"}]},
    {"ratings": [{"movie_id": 0, "rating": 4.0}]},
    {"ratings": [{"movie_id": 1, "rating": 4.0, "user_id": 1}]},
    {"ratings": [ONE], "n": 0},
    {"ratings": [ONE], "n": 101},
    {"ratings": [ONE], "n": "5"},
    {"ratings": [ONE], "explain": "yes"},
    {"ratings": [ONE], "exclude": [0]},
    {"ratings": [ONE], "genre": [""]},
    {"ratings": [ONE], "user_id": 1},
]


def test_bad_sessions_are_422(seeded: Settings) -> None:
    with TestClient(create_app(seeded)) as client:
        for body in BAD_SESSIONS:
            answer = client.post("/recommendations", json=body)
            assert answer.status_code == 422, (body, answer.text)
            assert answer.json()["detail"]


def test_a_movie_rated_twice_keeps_its_last_rating(seeded: Settings, engine: Engine) -> None:
    """As in a batch of ratings: the answer is the one for the last rating alone."""
    assert train_tiny(seeded, engine).activated
    with TestClient(create_app(seeded)) as client:
        others = session_of(client, 3, 0)[1:]
        movie = session_of(client, 3, 0)[0]["movie_id"]
        twice = [{"movie_id": movie, "rating": 1.0}, *others, {"movie_id": movie, "rating": 5.0}]
        once = [*others, {"movie_id": movie, "rating": 5.0}]
        low = [*others, {"movie_id": movie, "rating": 1.0}]
        answers = [
            client.post("/recommendations", json={"ratings": r, "n": 20}).json()
            for r in (twice, once, low)
        ]
        for answer in answers:  # each answer is its own impression
            del answer["recommendation_id"]
        assert answers[0]["strategy"] == "autoencoder"
        assert answers[0] == answers[1]
        assert answers[0] != answers[2]  # the rating changes the answer: the last one counted
