"""Input limits: every malformed or oversize request gets a clear 4xx and stores nothing.

Also the regular-test form of what the fuzzer found (NUL characters that PostgreSQL
cannot store, Infinity in retrain overrides, bodies that are not UTF-8, a retrain 422
whose shape did not match the declared schema).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from app.config import Settings
from app.main import create_app
from tests.factories import add_catalog
from tests.reliability_helpers import (
    assert_no_leak,
    movies_snapshot,
    ratings_snapshot,
    registry_snapshot,
)

JSON = {"content-type": "application/json"}
MAX_ID = 2**63 - 1
GOOD = {"user_id": 1, "movie_id": 1, "rating": 4.0}


@pytest.fixture
def api(settings: Settings, engine: Engine) -> Iterator[TestClient]:
    """The catalog plus one rating; the worker off so retrain only queues."""
    add_catalog(engine)
    small = settings.model_copy(update={"run_worker_in_api": False, "max_body_bytes": 16384})
    with TestClient(create_app(small), raise_server_exceptions=False) as client:
        assert client.post("/ratings", json={**GOOD, "timestamp": 5}).status_code == 201
        yield client


def _state(engine: Engine) -> tuple[Any, ...]:
    return ratings_snapshot(engine), movies_snapshot(engine), registry_snapshot(engine)


# (method, url, request kwargs, expected status, text the answer must mention)
BAD_REQUESTS: list[tuple[str, str, dict[str, Any], int, str]] = [
    # ids outside 64-bit (and not positive)
    ("post", "/ratings", {"json": {**GOOD, "user_id": 2**63}}, 422, "user_id"),
    ("post", "/ratings", {"json": {**GOOD, "movie_id": 2**64 + 1}}, 422, "movie_id"),
    ("post", "/ratings", {"json": {**GOOD, "user_id": -(2**63) - 1}}, 422, "user_id"),
    ("post", "/ratings", {"json": {**GOOD, "timestamp": 2**63}}, 422, "timestamp"),
    ("get", f"/users/{2**63}/ratings", {}, 422, "user_id"),
    ("get", f"/users/{-(2**64)}/recommendations", {}, 422, "user_id"),
    ("delete", f"/users/1/ratings/{2**64}", {}, 422, "movie_id"),
    ("get", f"/movies/{2**63}", {}, 422, "movie_id"),
    ("get", f"/users/1/ratings?offset={2**63}", {}, 422, "offset"),
    ("get", f"/users/1/predictions?movie_id={2**63}", {}, 422, "movie_id"),
    # NaN, Infinity and strings as ratings (Python's JSON parser accepts NaN/Infinity)
    ("post", "/ratings", {"content": b'{"user_id":1,"movie_id":1,"rating":NaN}'}, 422, "finite"),
    ("post", "/ratings", {"content": b'{"user_id":1,"movie_id":1,"rating":Infinity}'}, 422, "r"),
    ("post", "/ratings", {"content": b'{"user_id":1,"movie_id":1,"rating":-Infinity}'}, 422, "r"),
    ("post", "/ratings", {"json": {**GOOD, "rating": "4"}}, 422, "rating"),
    ("post", "/ratings", {"json": {**GOOD, "rating": "4.0"}}, 422, "rating"),
    ("post", "/ratings", {"json": {**GOOD, "rating": True}}, 422, "rating"),
    ("post", "/ratings", {"json": {**GOOD, "rating": None}}, 422, "rating"),
    ("post", "/ratings", {"content": b'{"user_id":1,"movie_id":1,"rating":1e400}'}, 422, "r"),
    (
        "post",
        "/ratings/batch",
        {"content": b'{"ratings":[{"user_id":1,"movie_id":2,"rating":NaN}]}'},
        422,
        "ratings",
    ),
    ("post", "/ratings/batch", {"json": {"ratings": [{**GOOD, "rating": "5"}]}}, 422, "rating"),
    # n and other query ranges
    ("get", "/users/1/recommendations?n=0", {}, 422, "n"),
    ("get", "/users/1/recommendations?n=101", {}, 422, "n"),
    ("get", "/users/1/recommendations?n=-1", {}, 422, "n"),
    ("get", "/users/1/recommendations?n=1e3", {}, 422, "n"),
    ("get", "/users/1/recommendations?n=NaN", {}, 422, "n"),
    ("get", f"/users/1/recommendations?n={2**70}", {}, 422, "n"),
    ("get", "/movies?limit=0", {}, 422, "limit"),
    ("get", "/movies?limit=101", {}, 422, "limit"),
    ("get", "/users/1/predictions?" + "&".join(["movie_id=1"] * 101), {}, 422, "movie_id"),
    # huge query strings: over the byte limit, and over a parameter's length limit
    ("get", "/movies?q=" + "x" * 20_000, {}, 414, "query string"),
    ("get", "/users/1/predictions?" + "movie_id=1&" * 1000, {}, 414, "query string"),
    ("get", "/movies?q=" + "x" * 201, {}, 422, "q"),
    # invalid JSON, not UTF-8, absurd numbers
    ("post", "/ratings", {"content": b'{"user_id": 1,'}, 422, "json_invalid"),
    ("post", "/ratings", {"content": b"\xff\xfe\xfd"}, 422, "json_invalid"),
    ("post", "/movies", {"content": b'{"movie_id": 9, "title": "t\xff"}'}, 422, "json_invalid"),
    ("post", "/ratings", {"content": b'{"user_id": ' + b"9" * 5000 + b"}"}, 422, "json_invalid"),
    ("post", "/ratings", {"content": b""}, 422, "body"),
    ("post", "/ratings", {"content": b"[]"}, 422, "body"),
    ("post", "/ratings/batch", {"json": {"ratings": []}}, 422, "ratings"),
    ("post", "/ratings/batch", {"json": {"ratings": [1, "x", None]}}, 422, "ratings"),
    # unknown fields: 422 naming the field, in every body (decision: never ignored)
    ("post", "/ratings", {"json": {**GOOD, "stars": 4}}, 422, "stars"),
    ("post", "/ratings/batch", {"json": {"ratings": [GOOD], "dry_run": True}}, 422, "dry_run"),
    ("post", "/ratings/batch", {"json": {"ratings": [{**GOOD, "x": 1}]}}, 422, "x"),
    ("post", "/movies", {"json": {"movie_id": 9, "title": "t", "rank": 1}}, 422, "rank"),
    ("post", "/admin/retrain", {"json": {"epochz": 3}}, 422, "epochz"),
    # what the fuzzer found: NUL that PostgreSQL text cannot hold (500 before the fix)
    ("post", "/movies", {"json": {"movie_id": 9, "title": "a\x00b"}}, 422, "title"),
    ("post", "/movies", {"json": {"movie_id": 9, "title": "t", "genres": ["\x00"]}}, 422, "g"),
    ("get", "/movies?q=a%00b", {}, 422, "q"),
    ("get", "/movies?genre=%00", {}, 422, "genre"),
    ("get", "/admin/jobs/a%00b", {}, 422, "job_id"),
    ("post", "/admin/models/a%00b/activate", {}, 422, "version"),
    # ... and Infinity/NaN in retrain overrides, which a JSON column cannot store
    ("post", "/admin/retrain", {"content": b'{"weight_decay": Infinity}'}, 422, "finite"),
    ("post", "/admin/retrain", {"content": b'{"lr": NaN}'}, 422, "finite"),
    ("post", "/admin/retrain", {"content": b'{"rating_scale": [1, Infinity]}'}, 422, "finite"),
    ("post", "/movies", {"content": b'{"movie_id": 9, "title": "t\\ud800"}'}, 422, "title"),
]


def test_bad_requests_get_a_clear_4xx_and_store_nothing(
    api: TestClient, engine: Engine, admin_headers: dict
) -> None:
    before = _state(engine)
    for method, url, kwargs, status, mention in BAD_REQUESTS:
        headers = {**JSON, **admin_headers} if "content" in kwargs else admin_headers
        response = api.request(method, url, headers=headers, **kwargs)
        label = f"{method.upper()} {url[:80]} {str(kwargs)[:80]}"
        assert response.status_code == status, (label, response.text[:300])
        assert response.headers["content-type"].startswith("application/json"), label
        body = response.json()
        assert body["detail"], label
        assert mention in response.text, (label, response.text[:300])
        assert_no_leak(response.text)
    assert _state(engine) == before


def test_retrain_config_errors_use_the_declared_422_shape(
    api: TestClient, admin_headers: dict
) -> None:
    """Was a bare string: the schema (and every other 422) says a list of {loc,msg,type}."""
    for body in ({"epochs": 0}, {"preset": "nope"}, {"hidden": []}):
        response = api.post("/admin/retrain", json=body, headers=admin_headers)
        assert response.status_code == 422
        detail = response.json()["detail"]
        assert isinstance(detail, list) and detail
        assert {"loc", "msg", "type"} <= set(detail[0])


def test_oversize_bodies_are_413_declared_or_streamed(api: TestClient, engine: Engine) -> None:
    before = _state(engine)
    items = [{"user_id": 2, "movie_id": m, "rating": 3.0} for m in (1, 2, 3, 4, 5)] * 100
    big = b'{"ratings": ' + str(items).replace("'", '"').encode() + b"}"
    assert len(big) > 16384
    declared = api.post("/ratings/batch", content=big, headers=JSON)
    assert declared.status_code == 413
    assert "16384" in declared.json()["detail"]

    def stream() -> Iterator[bytes]:  # no Content-Length: chunked transfer
        for start in range(0, len(big), 1000):
            yield big[start : start + 1000]

    streamed = api.post("/ratings/batch", content=stream(), headers=JSON)
    assert streamed.status_code == 413
    assert "limit" in streamed.json()["detail"]
    lying = api.post(
        "/ratings/batch", content=stream(), headers={**JSON, "content-length": "100"}
    )  # a Content-Length that understates the body still cannot smuggle it in
    assert lying.status_code in (400, 413)
    assert _state(engine) == before

    small = {"ratings": items[:5]}
    assert api.post("/ratings/batch", json=small).json() == {"inserted": 5, "updated": 0}
    bad_length = api.post("/ratings", content=b"{}", headers={**JSON, "content-length": "x"})
    assert bad_length.status_code == 400


def test_content_type_must_be_json(api: TestClient, engine: Engine) -> None:
    """Decision: 415 for a body that is not declared JSON (FastAPI alone says 422)."""
    before = _state(engine)
    raw = b'{"user_id": 3, "movie_id": 1, "rating": 4.0}'
    for content_type in ("text/plain", "application/x-www-form-urlencoded", "text/json", None):
        headers = {"content-type": content_type} if content_type else {}
        response = api.post("/ratings", content=raw, headers=headers)
        assert response.status_code == 415, content_type
        assert "application/json" in response.json()["detail"]
    form = api.post("/ratings", data={"user_id": "3", "movie_id": "1", "rating": "4"})
    assert form.status_code == 415
    assert _state(engine) == before
    for content_type in ("application/json; charset=utf-8", "application/vnd.api+json"):
        ok = api.post("/ratings", content=raw, headers={"content-type": content_type})
        assert ok.status_code == 201, (content_type, ok.text)
        assert api.delete("/users/3/ratings/1").status_code == 204
    # bodiless requests need no content type
    assert api.get("/movies", headers={"content-type": "text/plain"}).status_code == 200
