"""Movies endpoints: search, genre filter, details with statistics, admin creation."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from tests.factories import add_catalog


@pytest.fixture
def api(client: TestClient, engine: Engine) -> TestClient:
    add_catalog(engine)
    return client


def test_list_movies_paginates_in_id_order(api: TestClient) -> None:
    page = api.get("/movies", params={"limit": 3}).json()
    assert page["total"] == 8
    assert [m["movie_id"] for m in page["items"]] == [1, 2, 3]
    later = api.get("/movies", params={"limit": 3, "offset": 6}).json()
    assert [m["movie_id"] for m in later["items"]] == [100, 181]


def test_title_search_is_case_insensitive_substring(api: TestClient) -> None:
    page = api.get("/movies", params={"q": "star WARS"}).json()
    assert [m["title"] for m in page["items"]] == ["Star Wars (1977)"]
    assert api.get("/movies", params={"q": "%"}).json()["total"] == 0  # wildcard is literal


def test_genre_filter(api: TestClient) -> None:
    page = api.get("/movies", params={"genre": "sci-fi"}).json()
    assert {m["movie_id"] for m in page["items"]} == {50, 181}
    both = api.get("/movies", params={"genre": "Thriller", "q": "fargo"}).json()
    assert [m["movie_id"] for m in both["items"]] == [100]


@pytest.mark.parametrize("params", [{"limit": 0}, {"limit": 101}, {"offset": -1}])
def test_list_movies_rejects_bad_paging(api: TestClient, params: dict) -> None:
    assert api.get("/movies", params=params).status_code == 422


def test_movie_details_include_rating_statistics(api: TestClient) -> None:
    for user, stars in [(1, 5), (2, 4), (3, 4.5)]:
        api.post("/ratings", json={"user_id": user, "movie_id": 50, "rating": stars})
    movie = api.get("/movies/50").json()
    assert movie == {
        "movie_id": 50,
        "title": "Star Wars (1977)",
        "year": 1977,
        "genres": ["Action", "Adventure", "Romance", "Sci-Fi", "War"],
        "rating_count": 3,
        "rating_mean": 4.5,
        "hidden": False,
    }
    unrated = api.get("/movies/3").json()
    assert unrated["rating_count"] == 0 and unrated["rating_mean"] is None


def test_unknown_movie_is_404(api: TestClient) -> None:
    response = api.get("/movies/4242")
    assert response.status_code == 404
    assert "4242" in response.json()["detail"]


def test_create_movie_requires_admin(api: TestClient) -> None:
    body = {"movie_id": 300, "title": "New (2026)", "genres": ["Drama"]}
    assert api.post("/movies", json=body).status_code == 401
    wrong = api.post("/movies", json=body, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    assert api.get("/movies/300").status_code == 404


def test_create_single_and_many_movies(api: TestClient, admin_headers: dict) -> None:
    single = api.post(
        "/movies",
        json={"movie_id": 300, "title": "New (2026)", "genres": ["Drama"]},
        headers=admin_headers,
    )
    assert single.status_code == 201
    assert single.json()["genres"] == ["Drama"]
    many = api.post(
        "/movies",
        json=[{"movie_id": 301, "title": "A", "genres": []}, {"movie_id": 302, "title": "B"}],
        headers=admin_headers,
    )
    assert many.status_code == 201
    assert [m["movie_id"] for m in many.json()] == [301, 302]
    assert api.get("/movies/302").json()["title"] == "B"


def test_create_movie_with_taken_id_is_409_and_all_or_nothing(
    api: TestClient, admin_headers: dict
) -> None:
    response = api.post(
        "/movies",
        json=[{"movie_id": 400, "title": "Fresh"}, {"movie_id": 50, "title": "Dup"}],
        headers=admin_headers,
    )
    assert response.status_code == 409
    assert response.json()["detail"]["movie_ids"] == [50]
    assert api.get("/movies/400").status_code == 404


@pytest.mark.parametrize(
    "body",
    [{"movie_id": 0, "title": "x"}, {"movie_id": 9, "title": "  "}, {"title": "no id"}, []],
)
def test_create_movie_rejects_bad_bodies(
    api: TestClient, admin_headers: dict, body: object
) -> None:
    assert api.post("/movies", json=body, headers=admin_headers).status_code == 422


def test_admin_disabled_without_token(settings, engine: Engine) -> None:
    from app.main import create_app

    open_settings = settings.model_copy(update={"admin_token": None})
    with TestClient(create_app(open_settings)) as api:
        response = api.post("/movies", json={"movie_id": 9, "title": "x"})
    assert response.status_code == 503
    assert "ADMIN_TOKEN" in response.json()["detail"]


@pytest.mark.parametrize(
    "query",
    [{"search": "star"}, {"q": "star", "limt": 5}, {"genres": "Drama"}],
)
def test_unknown_query_parameter_is_422_naming_it(api: TestClient, query: dict) -> None:
    response = api.get("/movies", params=query)
    assert response.status_code == 422
    unknown = {err["loc"][1] for err in response.json()["detail"]}
    assert unknown == set(query) - {"q"}
    assert "genre, include_hidden, limit, offset, q" in response.json()["detail"][0]["msg"]


def test_unknown_query_parameter_is_422_on_other_routes_too(api: TestClient) -> None:
    assert api.get("/users/1/ratings", params={"page": 2}).status_code == 422
    assert api.get("/users/1/ratings", params={"limit": 2}).status_code == 200
    assert api.get("/healthz", params={"cache_buster": 1}).status_code == 200  # takes none


def test_a_genre_the_catalog_lacks_lists_no_movie(api: TestClient) -> None:
    """Any genre text the schema admits is accepted, as the recommendations' filter is."""
    response = api.get("/movies", params={"genre": "Scifi"})
    assert response.status_code == 200
    assert response.json() == {"total": 0, "items": []}
    sci_fi = api.get("/movies", params={"genre": "SCI-FI"}).json()
    assert sci_fi["total"] > 0
    assert all("Sci-Fi" in movie["genres"] for movie in sci_fi["items"])


def test_openapi_says_undeclared_query_parameters_are_refused(api: TestClient) -> None:
    paths = api.get("/openapi.json").json()["paths"]
    assert "does not declare" in paths["/movies"]["get"]["responses"]["422"]["description"]


@pytest.mark.parametrize(
    "body",
    [
        {"movie_id": True, "title": "x"},
        {"movie_id": "9", "title": "x"},
        {"movie_id": 9, "title": "x", "year": False},
        {"movie_id": 2**63 - 1, "title": "x"},  # above the published maximum
        {"movie_id": 9, "title": "\u00a0\t"},
    ],
)
def test_create_movie_refuses_what_the_schema_refuses(
    api: TestClient, admin_headers: dict, body: dict
) -> None:
    assert api.post("/movies", json=body, headers=admin_headers).status_code == 422


def test_published_movie_id_maximum_is_accepted_exactly(
    api: TestClient, admin_headers: dict
) -> None:
    schema = api.get("/openapi.json").json()["components"]["schemas"]["MovieIn"]
    maximum = int(schema["properties"]["movie_id"]["maximum"])
    body = {"movie_id": maximum, "title": "The Last Id"}
    assert api.post("/movies", json=body, headers=admin_headers).status_code == 201
    body["movie_id"] = maximum + 1
    assert api.post("/movies", json=body, headers=admin_headers).status_code == 422


def test_a_json_literal_is_no_genre_in_a_query_string(client) -> None:
    """In a query string `genre=true` is the boolean schemathesis sends as a schema
    violation: the schema excludes the three JSON literals, and the server refuses them."""
    for route in ("/movies", "/users/1/recommendations", "/movies/1/similar"):
        for literal in ("true", "false", "null"):
            response = client.get(route, params={"genre": literal})
            assert response.status_code == 422, (route, literal, response.text)
    assert client.get("/movies", params={"genre": "trueish"}).status_code == 200
