"""Hidden movies (admin PATCH, the GET /movies filter) and dismissals ("not interested")."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, delete, select
from sqlalchemy.orm import Session

from app.main import create_app
from app.models import Dismissal, Movie
from app.services import dismissals as dismissal_service
from tests.factories import add_catalog

MAX_ID = 2**63 - 1024


@pytest.fixture
def api(client: TestClient, engine: Engine) -> TestClient:
    add_catalog(engine)
    return client


def hide(api: TestClient, headers: dict, movie_id: int, hidden: bool = True) -> dict:
    response = api.patch(f"/admin/movies/{movie_id}", json={"hidden": hidden}, headers=headers)
    assert response.status_code == 200, response.text
    return response.json()


def listed(api: TestClient, **params: object) -> tuple[int, list[int]]:
    page = api.get("/movies", params={"limit": 100, **params}).json()
    return page["total"], [m["movie_id"] for m in page["items"]]


# hidden movies


def test_hide_and_unhide_round_trip_keeps_the_ratings(api: TestClient, admin_headers: dict) -> None:
    api.post("/ratings", json={"user_id": 1, "movie_id": 50, "rating": 4.0})
    hidden = hide(api, admin_headers, 50)
    assert hidden["hidden"] is True
    assert hidden["rating_count"] == 1 and hidden["title"] == "Star Wars (1977)"
    assert api.get("/movies/50").json() == hidden  # still served, saying it is hidden
    shown = hide(api, admin_headers, 50, hidden=False)
    assert shown == {**hidden, "hidden": False}
    assert api.get("/movies/50").json()["hidden"] is False
    assert 50 in listed(api)[1]


def test_hiding_twice_is_idempotent(api: TestClient, admin_headers: dict) -> None:
    assert hide(api, admin_headers, 3)["hidden"] is True
    assert hide(api, admin_headers, 3)["hidden"] is True
    assert listed(api)[0] == 7


def test_created_and_listed_movies_say_they_are_not_hidden(
    api: TestClient, admin_headers: dict
) -> None:
    created = api.post("/movies", json={"movie_id": 300, "title": "New"}, headers=admin_headers)
    assert created.status_code == 201 and created.json()["hidden"] is False
    items = api.get("/movies", params={"limit": 100}).json()["items"]
    assert [m["hidden"] for m in items] == [False] * 9


def test_list_leaves_hidden_movies_out_unless_asked(api: TestClient, admin_headers: dict) -> None:
    hide(api, admin_headers, 50)
    hide(api, admin_headers, 2)
    total, ids = listed(api)
    assert (total, ids) == (6, [1, 3, 4, 5, 100, 181])
    total, ids = listed(api, include_hidden="true")
    assert (total, ids) == (8, [1, 2, 3, 4, 5, 50, 100, 181])
    flags = {
        m["movie_id"]: m["hidden"] for m in api.get("/movies?include_hidden=true").json()["items"]
    }
    assert flags[50] is True and flags[2] is True and flags[1] is False
    assert listed(api, include_hidden="false") == (6, [1, 3, 4, 5, 100, 181])
    # the filter composes with the others, total included, and with paging
    assert listed(api, q="star") == (0, [])
    assert listed(api, q="star", include_hidden="true") == (1, [50])
    assert listed(api, genre="Sci-Fi") == (1, [181])
    page = api.get("/movies", params={"limit": 2, "offset": 1}).json()
    assert page["total"] == 6 and [m["movie_id"] for m in page["items"]] == [3, 4]


def test_include_hidden_must_be_a_boolean(api: TestClient) -> None:
    response = api.get("/movies", params={"include_hidden": "maybe"})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["query", "include_hidden"]


def test_hiding_requires_the_admin_token(api: TestClient) -> None:
    missing = api.patch("/admin/movies/50", json={"hidden": True})
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"] == "Bearer"
    wrong = api.patch(
        "/admin/movies/50", json={"hidden": True}, headers={"Authorization": "Bearer nope"}
    )
    assert wrong.status_code == 401
    assert api.get("/movies/50").json()["hidden"] is False


def test_hiding_is_503_when_admin_is_disabled(settings, engine: Engine) -> None:
    add_catalog(engine)
    open_settings = settings.model_copy(update={"admin_token": None})
    with TestClient(create_app(open_settings)) as api:
        response = api.patch("/admin/movies/50", json={"hidden": True})
        assert response.status_code == 503
        assert api.get("/movies/50").json()["hidden"] is False


def test_hiding_an_unknown_movie_is_404(api: TestClient, admin_headers: dict) -> None:
    response = api.patch("/admin/movies/4242", json={"hidden": True}, headers=admin_headers)
    assert response.status_code == 404
    assert "4242" in response.json()["detail"]


@pytest.mark.parametrize(
    "body",
    [{}, {"hidden": "true"}, {"hidden": 1}, {"hidden": None}, {"hidden": True, "title": "x"}, []],
)
def test_hiding_refuses_bad_bodies(api: TestClient, admin_headers: dict, body: object) -> None:
    response = api.patch("/admin/movies/50", json=body, headers=admin_headers)
    assert response.status_code == 422, response.text
    assert api.get("/movies/50").json()["hidden"] is False


@pytest.mark.parametrize("movie_id", ["0", "-1", "abc", "1.5", str(MAX_ID + 1)])
def test_hiding_refuses_bad_ids(api: TestClient, admin_headers: dict, movie_id: str) -> None:
    response = api.patch(f"/admin/movies/{movie_id}", json={"hidden": True}, headers=admin_headers)
    assert response.status_code == 422


# dismissals


def test_dismiss_then_again_then_list_then_delete(api: TestClient) -> None:
    first = api.post("/users/7/dismissals", json={"movie_id": 50})
    assert first.status_code == 201, first.text
    body = first.json()
    assert set(body) == {"user_id", "movie_id", "title", "dismissed_at"}
    assert (body["user_id"], body["movie_id"], body["title"]) == (7, 50, "Star Wars (1977)")
    assert datetime.fromisoformat(body["dismissed_at"]).tzinfo is not None

    again = api.post("/users/7/dismissals", json={"movie_id": 50})
    assert again.status_code == 200
    assert again.json() == body  # the first dismissal, its time included

    listing = api.get("/users/7/dismissals")
    assert listing.status_code == 200
    assert listing.json() == {
        "user_id": 7,
        "items": [
            {"movie_id": 50, "title": "Star Wars (1977)", "dismissed_at": body["dismissed_at"]}
        ],
    }

    assert api.delete("/users/7/dismissals/50").status_code == 204
    gone = api.delete("/users/7/dismissals/50")
    assert gone.status_code == 404
    assert isinstance(gone.json()["detail"], str)
    assert api.get("/users/7/dismissals").json() == {"user_id": 7, "items": []}
    assert api.post("/users/7/dismissals", json={"movie_id": 50}).status_code == 201


def test_dismissals_are_per_user_and_not_ratings(api: TestClient) -> None:
    api.post("/users/7/dismissals", json={"movie_id": 50})
    assert api.get("/users/8/dismissals").json() == {"user_id": 8, "items": []}
    assert api.delete("/users/8/dismissals/50").status_code == 404
    assert api.get("/users/7/ratings").json()["total"] == 0
    assert api.get("/movies/50").json()["rating_count"] == 0
    # a rating of a dismissed movie is still a rating, and leaves the dismissal alone
    api.post("/ratings", json={"user_id": 7, "movie_id": 50, "rating": 2.0})
    assert [i["movie_id"] for i in api.get("/users/7/dismissals").json()["items"]] == [50]


def test_dismissals_list_newest_first_ties_by_movie_id(api: TestClient, engine: Engine) -> None:
    base = datetime(2026, 1, 1, tzinfo=UTC)
    with Session(engine) as session, session.begin():
        for movie_id, minutes in [(5, 0), (100, 10), (3, 10), (181, 5), (1, 20)]:
            session.add(
                Dismissal(
                    user_id=7, movie_id=movie_id, dismissed_at=base + timedelta(minutes=minutes)
                )
            )
        session.add(Dismissal(user_id=8, movie_id=2, dismissed_at=base))
    items = api.get("/users/7/dismissals").json()["items"]
    assert [i["movie_id"] for i in items] == [1, 3, 100, 181, 5]
    assert items[0]["dismissed_at"] == "2026-01-01T00:20:00+00:00"
    assert items[0]["title"] == "Toy Story (1995)"


def test_dismissing_an_unknown_movie_is_404_and_stores_nothing(
    api: TestClient, engine: Engine
) -> None:
    response = api.post("/users/7/dismissals", json={"movie_id": 4242})
    assert response.status_code == 404
    assert "4242" in response.json()["detail"]
    with Session(engine) as session:
        assert session.scalars(select(Dismissal)).all() == []


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/users/0/dismissals", {"movie_id": 50}),
        ("/users/abc/dismissals", {"movie_id": 50}),
        (f"/users/{MAX_ID + 1}/dismissals", {"movie_id": 50}),
        ("/users/7/dismissals", {"movie_id": 0}),
        ("/users/7/dismissals", {"movie_id": "50"}),
        ("/users/7/dismissals", {"movie_id": True}),
        ("/users/7/dismissals", {"movie_id": 50.5}),
        ("/users/7/dismissals", {"movie_id": MAX_ID + 1}),
        ("/users/7/dismissals", {"movie_id": 50, "user_id": 7}),
        ("/users/7/dismissals", {}),
    ],
)
def test_dismissing_refuses_bad_ids_and_bodies(api: TestClient, path: str, body: dict) -> None:
    assert api.post(path, json=body).status_code == 422


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/users/0/dismissals"),
        ("GET", "/users/x/dismissals"),
        ("DELETE", "/users/7/dismissals/0"),
        ("DELETE", "/users/0/dismissals/50"),
        ("DELETE", f"/users/7/dismissals/{MAX_ID + 1}"),
    ],
)
def test_bad_ids_in_the_path_are_422(api: TestClient, method: str, path: str) -> None:
    assert api.request(method, path).status_code == 422


def test_concurrent_identical_dismissals_one_201_the_rest_200(api: TestClient) -> None:
    def post(_: int) -> int:
        return api.post("/users/7/dismissals", json={"movie_id": 50}).status_code

    with ThreadPoolExecutor(max_workers=6) as pool:
        codes = sorted(pool.map(post, range(6)))
    assert codes == [200] * 5 + [201]
    assert len(api.get("/users/7/dismissals").json()["items"]) == 1


def test_a_dismissal_racing_an_uncommitted_one_waits_and_answers_200(engine: Engine) -> None:
    """The second insert blocks on the first's key and then finds the row: no
    IntegrityError (a 409 or 500), however the two interleave."""
    add_catalog(engine)
    result: dict[str, object] = {}

    def second() -> None:
        with Session(engine) as session, session.begin():
            result["out"], result["created"] = dismissal_service.dismiss(session, 7, 50)

    with Session(engine) as first, first.begin():
        out, created = dismissal_service.dismiss(first, 7, 50)
        racer = threading.Thread(target=second)
        racer.start()
        time.sleep(0.3)  # let it reach the insert and wait on the key
        assert racer.is_alive()
    racer.join(timeout=15)
    assert created is True and result["created"] is False
    assert result["out"] == out


def test_deleting_a_movie_cascades_to_its_dismissals(api: TestClient, engine: Engine) -> None:
    """There is no movie-deletion route: the foreign key itself (SQLite needs its pragma)."""
    api.post("/users/7/dismissals", json={"movie_id": 50})
    api.post("/users/7/dismissals", json={"movie_id": 3})
    with Session(engine) as session, session.begin():
        session.execute(delete(Movie).where(Movie.id == 50))
    assert [i["movie_id"] for i in api.get("/users/7/dismissals").json()["items"]] == [3]


# the published contract


def test_openapi_lists_the_new_routes_and_their_codes(api: TestClient) -> None:
    spec = api.get("/openapi.json").json()
    paths = spec["paths"]
    codes = {
        ("patch", "/admin/movies/{movie_id}"): {"200", "401", "404", "422", "503"},
        ("post", "/users/{user_id}/dismissals"): {"200", "201", "404", "422"},
        ("get", "/users/{user_id}/dismissals"): {"200", "422"},
        ("delete", "/users/{user_id}/dismissals/{movie_id}"): {"204", "404", "422"},
    }
    for (method, path), expected in codes.items():
        assert set(paths[path][method]["responses"]) == expected, (method, path)
    params = {p["name"]: p for p in paths["/movies"]["get"]["parameters"]}
    assert params["include_hidden"]["schema"]["type"] == "boolean"
    schemas = spec["components"]["schemas"]
    assert "hidden" in schemas["MovieOut"]["required"]
    assert schemas["MovieHiddenIn"]["additionalProperties"] is False
    assert schemas["MovieHiddenIn"]["properties"]["hidden"]["type"] == "boolean"
    assert schemas["DismissalIn"]["additionalProperties"] is False
    dismissal = schemas["DismissalOut"]
    assert set(dismissal["required"]) == {"user_id", "movie_id", "title", "dismissed_at"}
    assert dismissal["properties"]["dismissed_at"]["format"] == "date-time"


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("PUT", "/users/1/dismissals", "GET, POST"),
        ("GET", "/users/1/dismissals/2", "DELETE"),
        ("GET", "/admin/movies/2", "PATCH"),
    ],
)
def test_method_not_allowed_names_the_new_routes(
    api: TestClient, method: str, path: str, allowed: str
) -> None:
    response = api.request(method, path)
    assert response.status_code == 405
    assert response.headers["allow"] == allowed
