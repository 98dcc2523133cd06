"""Movies added after the active model was trained: recommended once rated, before a retrain
(issue 30, part 2), through the real app on both databases.

The synthetic data has two taste groups (odd users love odd movies, even users even ones).
A new movie loved by odd users is tied to the odd movies, so an odd user who never rated it
sees it in their top 20 after one refresh of the new movies; every filter applies to it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from app.config import Settings
from app.main import create_app
from app.serving import new_movies
from tests.factories import LENIENT_GATE, seed_synthetic
from tests.test_recommendations_api import train_tiny

NEW = 500
FANS = list(range(1, 30, 2))  # odd users: they rate the new movie 5 stars
ODD_USER, EVEN_USER = 41, 42  # neither rated it


@pytest.fixture
def seeded(settings: Settings, engine: Engine) -> Settings:
    seed_synthetic(engine)
    # the background refresh far off: the tests below refresh by hand, one step at a time
    return settings.model_copy(
        update={"run_worker_in_api": False, "new_movies_refresh_seconds": 180.0}
    )


@pytest.fixture
def trained(seeded: Settings, engine: Engine) -> Settings:
    assert train_tiny(seeded, engine).activated
    return seeded


@contextmanager
def serving_a_new_movie(settings: Settings, admin_headers: dict[str, str]) -> Iterator[TestClient]:
    """The app, after the new movie was added and rated by its fans (no refresh yet)."""
    with TestClient(create_app(settings)) as client:
        add_new_movie(client, admin_headers)
        yield client


def add_new_movie(client: TestClient, admin_headers: dict[str, str]) -> None:
    movie = {"movie_id": NEW, "title": "New (2026)", "genres": ["Drama"]}
    assert client.post("/movies", json=movie, headers=admin_headers).status_code == 201
    ratings = [
        {"user_id": user, "movie_id": NEW, "rating": 5.0, "timestamp": 2_000_000 + user}
        for user in FANS
    ]
    assert client.post("/ratings/batch", json={"ratings": ratings}).status_code == 200


def listed(client: TestClient, user_id: int, **query: Any) -> list[int]:
    answer = client.get(f"/users/{user_id}/recommendations", params={"n": 20, **query})
    assert answer.status_code == 200, answer.text
    assert answer.json()["strategy"] == "autoencoder"
    return [item["movie_id"] for item in answer.json()["items"]]


def test_a_new_movie_is_recommended_after_one_refresh_through_every_list(
    trained: Settings, admin_headers: dict[str, str]
) -> None:
    with serving_a_new_movie(trained, admin_headers) as client:
        assert NEW not in listed(client, ODD_USER), "unknown to the model until a refresh"
        assert client.app.state.recommender.refresh_new_movies()  # type: ignore[attr-defined]
        assert not client.app.state.recommender.refresh_new_movies()  # type: ignore[attr-defined]

        assert NEW in listed(client, ODD_USER)
        everything = listed(client, EVEN_USER, n=100)
        assert everything.index(NEW) > listed(client, ODD_USER, n=100).index(NEW)
        # an anonymous session of the same ratings is answered alike
        page = client.get(f"/users/{ODD_USER}/ratings", params={"limit": 1000}).json()
        session = [{"movie_id": r["movie_id"], "rating": r["rating"]} for r in page["items"]]
        body = client.post("/recommendations", json={"ratings": session, "n": 20}).json()
        assert NEW in [item["movie_id"] for item in body["items"]]

        # every filter: genre, exclude, a fan's own rating of it, dismissed, hidden
        assert NEW in listed(client, ODD_USER, genre="Drama")
        assert NEW not in listed(client, ODD_USER, genre="Comedy", n=100)
        assert NEW not in listed(client, ODD_USER, exclude=[NEW], n=100)
        assert NEW not in listed(client, FANS[0], n=100), "a fan rated it"
        explained = client.get(
            f"/users/{ODD_USER}/recommendations", params={"n": 20, "explain": True}
        ).json()
        (item,) = [i for i in explained["items"] if i["movie_id"] == NEW]
        assert item["because"], "the user's ratings of its neighbours raised it"
        dismissed = client.post(f"/users/{ODD_USER}/dismissals", json={"movie_id": NEW})
        assert dismissed.status_code == 201
        assert NEW not in listed(client, ODD_USER, n=100)
        hidden = client.patch(f"/admin/movies/{NEW}", json={"hidden": True}, headers=admin_headers)
        assert hidden.status_code == 200
        assert NEW not in listed(client, ODD_USER + 2, n=100)

        # its predicted rating: the bias terms with its own (five-star) ratings
        predicted = client.get(f"/users/{ODD_USER}/predictions", params={"movie_id": [NEW]})
        (new,) = predicted.json()["items"]
        assert new["known_to_model"] and new["predicted_rating"] > 4.0  # the mean: 3.4

        # alike: its neighbours, the odd movies its fans rated
        similar = client.get(f"/movies/{NEW}/similar", params={"n": 10}).json()
        assert similar["strategy"] == "autoencoder"
        ids = [item["movie_id"] for item in similar["items"]]
        assert ids and sum(m % 2 for m in ids) > len(ids) / 2


def test_the_background_refresh_picks_a_new_movie_up(
    trained: Settings, admin_headers: dict[str, str]
) -> None:
    often = trained.model_copy(update={"new_movies_refresh_seconds": 0.2})
    with serving_a_new_movie(often, admin_headers) as client:
        for _ in range(300):  # the timer's next round, whenever the machine gets to it
            if NEW in listed(client, ODD_USER):
                break
            time.sleep(0.05)
        assert NEW in listed(client, ODD_USER)


def test_the_next_retrain_takes_a_new_movie_in(
    trained: Settings, engine: Engine, admin_headers: dict[str, str]
) -> None:
    with serving_a_new_movie(trained, admin_headers) as client:
        recommender = client.app.state.recommender  # type: ignore[attr-defined]
        recommender.refresh_new_movies()
        model = recommender.models.model_for(recommender.version, recommender.models.generation)
        assert model.n_trained == 40 and list(model.new.movie_ids) == [NEW]
        retrained = train_tiny(trained.model_copy(update=LENIENT_GATE), engine)
        assert retrained.activated
        assert NEW in listed(client, ODD_USER)
        model = recommender.models.model_for(retrained.version, recommender.models.generation)
        assert model.n_trained == 41 and not len(model.new)


def test_each_process_builds_its_new_movies_from_the_database(
    trained: Settings, admin_headers: dict[str, str]
) -> None:
    """Two processes share only the database: each refresh reads it, and both then answer
    alike (the same model, the same new movies, the same scores)."""
    with (
        serving_a_new_movie(trained, admin_headers) as first,
        TestClient(create_app(trained)) as second,
    ):
        second.app.state.recommender.refresh_new_movies()  # type: ignore[attr-defined]
        assert NEW in listed(second, ODD_USER)
        assert NEW not in listed(first, ODD_USER), "not refreshed yet"
        first.app.state.recommender.refresh_new_movies()  # type: ignore[attr-defined]
        query = {"n": 20, "explain": True}
        answers = [
            client.get(f"/users/{ODD_USER}/recommendations", params=query).json()
            for client in (first, second)
        ]
        assert answers[0].pop("recommendation_id") != answers[1].pop("recommendation_id")
        assert answers[0] == answers[1]


def test_the_most_rated_new_movies_are_served_up_to_the_cap_as_ratings_grow(
    trained: Settings, admin_headers: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(new_movies, "MAX_NEW_MOVIES", 1)
    with serving_a_new_movie(trained, admin_headers) as client:
        other = {"movie_id": NEW + 1, "title": "Newer (2026)", "genres": ["Drama"]}
        assert client.post("/movies", json=other, headers=admin_headers).status_code == 201
        recommender = client.app.state.recommender  # type: ignore[attr-defined]

        def served() -> list[int]:
            recommender.refresh_new_movies()
            version = recommender.version
            model = recommender.models.model_for(version, recommender.models.generation)
            return list(model.new.movie_ids)

        assert served() == [NEW], "15 ratings against none"
        more = [
            {"user_id": user, "movie_id": NEW + 1, "rating": 4.0, "timestamp": 3_000_000}
            for user in range(2, 40, 2)
        ]
        assert client.post("/ratings/batch", json={"ratings": more}).status_code == 200
        assert served() == [NEW + 1], "19 ratings against 15"
        assert NEW + 1 in listed(client, EVEN_USER)
