"""The database goes away while the API runs, then comes back.

The app reaches PostgreSQL through a localhost TCP proxy that the test cuts (every open
connection reset, new ones refused, as a stopped server) and restores. The shared
PostgreSQL server itself is never touched.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine
from sqlalchemy.engine import make_url

from app.config import Settings
from app.main import create_app
from tests.conftest import _truncate_all
from tests.factories import add_catalog
from tests.reliability_helpers import CuttableProxy, assert_no_leak, cuttable_proxy


@pytest.fixture
def database_url(postgres_url: str) -> str:
    """PostgreSQL only: a network database is the one that can go away."""
    _truncate_all(postgres_url)
    return postgres_url


@pytest.fixture
def proxied(settings: Settings, engine: Engine) -> Iterator[tuple[TestClient, CuttableProxy]]:
    add_catalog(engine)
    url = make_url(settings.database_url)
    with cuttable_proxy(url.host or "127.0.0.1", url.port or 5432) as proxy:
        through = url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
        quiet = settings.model_copy(
            update={"database_url": through, "run_worker_in_api": False, "model_poll_seconds": 0.2}
        )
        with TestClient(create_app(quiet), raise_server_exceptions=False) as client:
            yield client, proxy


def eventually(predicate: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError("the service did not recover")


def test_database_outage_answers_503_and_recovers_by_itself(
    proxied: tuple[TestClient, CuttableProxy],
) -> None:
    client, proxy = proxied
    rating = {"user_id": 1, "movie_id": 1, "rating": 4.0, "timestamp": 1}
    assert client.post("/ratings", json=rating).status_code == 201
    assert client.get("/readyz").status_code == 200

    proxy.cut()
    ready = client.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["database"] == "unreachable" and ready.json()["detail"]
    for method, path, body in [
        ("get", "/movies", None),
        ("get", "/movies/1", None),
        ("post", "/ratings", {**rating, "rating": 2.0}),
        ("post", "/ratings/batch", {"ratings": [rating]}),
        ("get", "/users/1/ratings", None),
        ("get", "/users/1/recommendations", None),
        ("delete", "/users/1/ratings/1", None),
    ]:
        response = client.request(method, path, json=body)
        assert response.status_code == 503, (path, response.text)
        assert "database" in response.json()["detail"]
        assert response.headers.get("retry-after") == "1"
        assert_no_leak(response.text)
    assert client.get("/healthz").status_code == 200  # alive, just not ready
    assert client.get("/metrics").status_code == 200

    proxy.restore()
    eventually(lambda: client.get("/readyz").status_code == 200)
    assert client.get("/users/1/ratings").json()["items"][0]["rating"] == 4.0  # no write leaked
    assert client.post("/ratings", json={**rating, "rating": 3.0}).status_code == 200
    assert client.get("/users/1/recommendations").status_code == 200


def test_a_read_connection_dropped_while_idle_costs_no_request(
    proxied: tuple[TestClient, CuttableProxy],
) -> None:
    """The hot path's pool does not ping before each read: a pooled connection the server
    dropped in between is discarded and the read tried once more, so the first request
    after a blip is answered, not refused."""
    client, proxy = proxied
    rating = {"user_id": 1, "movie_id": 1, "rating": 4.0, "timestamp": 1}
    assert client.post("/ratings", json=rating).status_code == 201
    assert client.get("/users/1/recommendations").status_code == 200  # a pooled connection
    proxy.cut()  # resets it while idle
    proxy.restore()
    for _ in range(3):
        assert client.get("/users/1/recommendations").status_code == 200
