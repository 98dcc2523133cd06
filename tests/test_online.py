"""Attribution and a version's online figures (API.md "Online"): a rating of a shown movie
within the window counts for the latest impression that showed it; 4 stars or more is a
hit; hit rate = impressions followed by a hit / impressions, with Wilson's interval."""

from __future__ import annotations

import time
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from app.config import Settings
from app.jobs.training import TrainingOutcome
from app.main import create_app
from app.services.online import difference_interval, wilson
from tests.factories import seed_synthetic
from tests.test_recommendations_api import train_tiny

WINDOW = 3600


@pytest.fixture
def trained(settings: Settings, engine: Engine) -> tuple[Settings, TrainingOutcome]:
    seed_synthetic(engine)
    outcome = train_tiny(settings, engine)
    assert outcome.activated
    served = settings.model_copy(
        update={"run_worker_in_api": False, "attribution_window_seconds": WINDOW}
    )
    return served, outcome


def shown(client: TestClient, user: int, n: int = 5) -> list[int]:
    body = client.get(f"/users/{user}/recommendations", params={"n": n}).json()
    assert body["strategy"] == "autoencoder"
    assert client.app.state.recommender.impressions.flush()  # type: ignore[attr-defined]
    return [item["movie_id"] for item in body["items"]]


def rate(client: TestClient, user: int, movie: int, stars: float, at: int | None = None) -> None:
    rating: dict[str, Any] = {"user_id": user, "movie_id": movie, "rating": stars}
    if at is not None:
        rating["timestamp"] = at
    assert client.post("/ratings", json=rating).status_code in (200, 201)


def test_ratings_count_for_the_latest_impression_that_showed_them(
    trained: tuple[Settings, TrainingOutcome], admin_headers: dict[str, str]
) -> None:
    settings, outcome = trained
    url = f"/admin/models/{outcome.version}/online"
    with TestClient(create_app(settings)) as client:
        first = shown(client, 4)
        rate(client, 4, first[0], 5.0)  # a hit
        rate(client, 4, first[1], 2.0)  # rated, no hit
        shown(client, 5)  # shown, never rated
        early, again = shown(client, 6), shown(client, 6)  # the cache's answer, twice shown
        assert early == again
        rate(client, 6, again[0], 4.0)  # counts once, for the second impression only
        later = shown(client, 7)
        rate(client, 7, later[0], 5.0, at=int(time.time()) - 600)  # rated before it was shown
        rate(client, 7, later[1], 5.0, at=int(time.time()) + WINDOW + 60)  # past the window
        body = client.get(url, headers=admin_headers).json()
        none_yet = client.get(url, params={"since": "2999-01-01T00:00:00Z"}, headers=admin_headers)
        unknown = client.get("/admin/models/nope/online", headers=admin_headers)
        anonymous = client.get(url)
    assert body == {
        "version": outcome.version,
        "impressions": 5,
        "users": 4,
        "hits": 2,
        "hit_rate": 2 / 5,
        "ci95": pytest.approx(list(wilson(2, 5) or ())),
        "mean_shown_rating": pytest.approx((5.0 + 2.0 + 4.0) / 3, abs=1e-4),
        "window_seconds": WINDOW,
    }
    assert none_yet.status_code == 200
    assert none_yet.json()["impressions"] == 0
    assert none_yet.json()["hit_rate"] is None and none_yet.json()["ci95"] is None
    assert unknown.status_code == 404
    assert anonymous.status_code == 401


def test_a_replaced_rating_counts_at_its_last_value(
    trained: tuple[Settings, TrainingOutcome], admin_headers: dict[str, str]
) -> None:
    settings, outcome = trained
    with TestClient(create_app(settings)) as client:
        movie = shown(client, 9)[0]
        rate(client, 9, movie, 5.0)
        rate(client, 9, movie, 1.0)
        body = client.get(f"/admin/models/{outcome.version}/online", headers=admin_headers).json()
    assert (body["impressions"], body["hits"], body["hit_rate"]) == (1, 0, 0.0)
    assert body["mean_shown_rating"] == 1.0


def test_wilson_and_the_difference_on_hand_computed_cases() -> None:
    assert wilson(0, 0) is None
    assert wilson(0, 10) == pytest.approx((0.0, 0.27753), abs=1e-5)
    assert wilson(5, 10) == pytest.approx((0.23659, 0.76341), abs=1e-5)
    assert wilson(10, 10) == pytest.approx((0.72247, 1.0), abs=1e-5)
    # Newcombe (1998), example: 56/70 against 48/80 -> 0.2, (0.0524, 0.3339)
    d, (lo, hi) = difference_interval((56, 70), (48, 80)) or (0.0, (0.0, 0.0))
    assert (d, lo, hi) == pytest.approx((0.2, 0.0524, 0.3339), abs=1e-4)
    assert difference_interval((1, 2), (0, 0)) is None
