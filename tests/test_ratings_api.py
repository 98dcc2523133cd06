"""Ratings endpoints against the real app on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from app.models import Rating
from tests.factories import add_catalog


@pytest.fixture
def api(client: TestClient, engine: Engine) -> TestClient:
    add_catalog(engine)
    return client


def rating_rows(engine: Engine) -> list[tuple[int, int, float]]:
    with Session(engine) as session:
        rows = session.execute(
            select(Rating.user_id, Rating.movie_id, Rating.rating).order_by(
                Rating.user_id, Rating.movie_id
            )
        )
        return [tuple(r) for r in rows]


def test_post_rating_creates_then_upserts(api: TestClient, engine: Engine) -> None:
    first = api.post(
        "/ratings", json={"user_id": 7, "movie_id": 50, "rating": 4.5, "timestamp": 10}
    )
    assert first.status_code == 201
    assert first.json() == {"user_id": 7, "movie_id": 50, "rating": 4.5, "timestamp": 10}

    second = api.post("/ratings", json={"user_id": 7, "movie_id": 50, "rating": 2.0})
    assert second.status_code == 200
    assert second.json()["rating"] == 2.0
    assert second.json()["timestamp"] > 1_700_000_000  # defaulted to now
    assert rating_rows(engine) == [(7, 50, 2.0)]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"user_id": 1, "movie_id": 1, "rating": 0}, "rating"),
        ({"user_id": 1, "movie_id": 1, "rating": 5.5}, "rating"),
        ({"user_id": 1, "movie_id": 1, "rating": 3.3}, "rating"),
        ({"user_id": 1, "movie_id": 1, "rating": "NaN"}, "rating"),
        ({"user_id": 1, "movie_id": 1, "rating": "four"}, "rating"),
        ({"user_id": 0, "movie_id": 1, "rating": 3}, "user_id"),
        ({"user_id": 2**63, "movie_id": 1, "rating": 3}, "user_id"),
        ({"user_id": 1, "movie_id": -4, "rating": 3}, "movie_id"),
        ({"user_id": 1, "rating": 3}, "movie_id"),
        ({"user_id": 1, "movie_id": 1, "rating": 3, "timestamp": -1}, "timestamp"),
        ({"user_id": 1, "movie_id": 1, "rating": 3, "timestamp": False}, "timestamp"),
        ({"user_id": 1, "movie_id": 1, "rating": 3, "timestamp": "10"}, "timestamp"),
        ({"user_id": True, "movie_id": 1, "rating": 3}, "user_id"),
        ({"user_id": 1, "movie_id": 1.5, "rating": 3}, "movie_id"),
        ({"user_id": 1, "movie_id": 1, "rating": True}, "rating"),
        ({"user_id": 1, "movie_id": 1, "rating": 3, "stars": 3}, "stars"),
    ],
)
def test_post_rating_rejects_bad_fields(
    api: TestClient, engine: Engine, body: dict, field: str
) -> None:
    response = api.post("/ratings", json=body)
    assert response.status_code == 422
    assert any(err["loc"][-1] == field for err in response.json()["detail"])
    assert rating_rows(engine) == []


def test_post_rating_unknown_movie_is_404(api: TestClient, engine: Engine) -> None:
    response = api.post("/ratings", json={"user_id": 1, "movie_id": 999, "rating": 3})
    assert response.status_code == 404
    assert "999" in response.json()["detail"]
    assert rating_rows(engine) == []


def test_invalid_json_is_422(api: TestClient) -> None:
    response = api.post(
        "/ratings", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 422
    assert response.json()["detail"]


def test_batch_inserts_and_updates(api: TestClient, engine: Engine) -> None:
    api.post("/ratings", json={"user_id": 1, "movie_id": 1, "rating": 1})
    body = {
        "ratings": [
            {"user_id": 1, "movie_id": 1, "rating": 5},
            {"user_id": 1, "movie_id": 2, "rating": 3.5},
            {"user_id": 2, "movie_id": 2, "rating": 4},
            {"user_id": 2, "movie_id": 2, "rating": 2},  # repeated pair: the last one wins
        ]
    }
    response = api.post("/ratings/batch", json=body)
    assert response.status_code == 200
    assert response.json() == {"inserted": 2, "updated": 1}
    assert rating_rows(engine) == [(1, 1, 5.0), (1, 2, 3.5), (2, 2, 2.0)]


def test_batch_with_bad_items_names_each_and_stores_nothing(
    api: TestClient, engine: Engine
) -> None:
    body = {
        "ratings": [
            {"user_id": 1, "movie_id": 1, "rating": 4},
            {"user_id": 1, "movie_id": 2, "rating": 0},
            {"user_id": -1, "movie_id": 3, "rating": 4},
        ]
    }
    response = api.post("/ratings/batch", json=body)
    assert response.status_code == 422
    locs = {tuple(err["loc"]) for err in response.json()["detail"]}
    assert ("body", "ratings", 1, "rating") in locs
    assert ("body", "ratings", 2, "user_id") in locs
    assert ("body", "ratings", 0, "rating") not in locs
    assert rating_rows(engine) == []


def test_batch_items_are_ratings_in_the_published_schema(api: TestClient) -> None:
    """The schema types each item as a rating, so `[{}, {}]` is invalid there and here."""
    schemas = api.get("/openapi.json").json()["components"]["schemas"]
    assert schemas["RatingBatchIn"]["properties"]["ratings"]["items"] == {
        "$ref": "#/components/schemas/RatingIn"
    }
    response = api.post("/ratings/batch", json={"ratings": [{}, {"timestamp": False}]})
    assert response.status_code == 422
    locs = {tuple(err["loc"]) for err in response.json()["detail"]}
    assert {("body", "ratings", 0, "user_id"), ("body", "ratings", 1, "timestamp")} <= locs


def test_batch_with_unknown_movies_lists_them_and_stores_nothing(
    api: TestClient, engine: Engine
) -> None:
    body = {
        "ratings": [
            {"user_id": 1, "movie_id": 1, "rating": 4},
            {"user_id": 1, "movie_id": 777, "rating": 4},
            {"user_id": 2, "movie_id": 888, "rating": 4},
        ]
    }
    response = api.post("/ratings/batch", json=body)
    assert response.status_code == 404
    assert response.json()["detail"]["movie_ids"] == [777, 888]
    assert rating_rows(engine) == []


def test_batch_size_limits(api: TestClient, engine: Engine) -> None:
    too_many = [{"user_id": u, "movie_id": 1, "rating": 3} for u in range(1, 10_002)]
    response = api.post("/ratings/batch", json={"ratings": too_many})
    assert response.status_code == 413
    assert "10000" in response.json()["detail"]
    assert api.post("/ratings/batch", json={"ratings": []}).status_code == 422
    assert rating_rows(engine) == []


def test_batch_of_ten_thousand_is_accepted(api: TestClient, engine: Engine) -> None:
    items = [{"user_id": u, "movie_id": 1 + u % 5, "rating": 1 + u % 5} for u in range(1, 10_001)]
    response = api.post("/ratings/batch", json={"ratings": items})
    assert response.status_code == 200
    assert response.json() == {"inserted": 10_000, "updated": 0}
    with Session(engine) as session:
        assert session.scalar(select(func.count()).select_from(Rating)) == 10_000


def test_list_user_ratings_paginates(api: TestClient) -> None:
    for movie_id, ts in [(1, 100), (2, 300), (3, 200)]:
        api.post(
            "/ratings", json={"user_id": 9, "movie_id": movie_id, "rating": 3, "timestamp": ts}
        )
    page = api.get("/users/9/ratings", params={"limit": 2, "offset": 0}).json()
    assert page["user_id"] == 9 and page["total"] == 3
    assert [i["movie_id"] for i in page["items"]] == [2, 3]  # newest first
    rest = api.get("/users/9/ratings", params={"limit": 2, "offset": 2}).json()
    assert [i["movie_id"] for i in rest["items"]] == [1]
    empty = api.get("/users/12345/ratings").json()
    assert empty == {"user_id": 12345, "total": 0, "items": []}


@pytest.mark.parametrize(
    "path", ["/users/0/ratings", "/users/abc/ratings", "/users/1/ratings?limit=0"]
)
def test_list_user_ratings_rejects_bad_input(api: TestClient, path: str) -> None:
    assert api.get(path).status_code == 422


def test_delete_rating(api: TestClient, engine: Engine) -> None:
    api.post("/ratings", json={"user_id": 3, "movie_id": 4, "rating": 3})
    assert api.delete("/users/3/ratings/4").status_code == 204
    assert rating_rows(engine) == []
    missing = api.delete("/users/3/ratings/4")
    assert missing.status_code == 404
    assert "no rating" in missing.json()["detail"]
