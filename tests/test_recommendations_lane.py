"""The recommendations lane answers plain requests in front of the middleware stack; the
stack answers everything else. Either way a client gets the same answer."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY
from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError

from app.config import Settings
from app.main import SaerecAPI, create_app
from app.services.recommender import Recommender
from tests.factories import seed_synthetic
from tests.test_recommendations_api import train_tiny

ROUTE = "/users/{user_id}/recommendations"
MEANINGFUL_HEADERS = ("content-type", "content-length", "location", "retry-after")
# (path, query): every form of request the lane takes, with answers of both strategies
PLAIN = [
    ("/users/1/recommendations", ""),
    ("/users/2/recommendations", "n=3"),
    ("/users/3/recommendations", "n=5&genre=Drama&genre=Comedy"),
    ("/users/4/recommendations", "exclude=1&exclude=2&exclude=3"),
    ("/users/5/recommendations", "explain=true&n=4"),
    ("/users/999999/recommendations", "n=2"),  # no ratings: the popular list
]


@pytest.fixture
def seeded(settings: Settings, engine: Engine) -> Settings:
    seed_synthetic(engine)
    trained = settings.model_copy(update={"run_worker_in_api": False})
    assert train_tiny(trained, engine).activated
    return trained


class LaneSpy:
    """Records, for each request, whether the lane answered it."""

    def __init__(self, app: SaerecAPI) -> None:
        assert app.lane is not None
        self.answered: list[bool] = []
        lane_answer = app.lane.answer

        async def answer(*args: Any) -> bool:
            self.answered.append(await lane_answer(*args))
            return self.answered[-1]

        app.lane.answer = answer  # type: ignore[method-assign]


@pytest.fixture
def lane(seeded: Settings) -> Iterator[tuple[TestClient, LaneSpy]]:
    app = create_app(seeded)
    assert isinstance(app, SaerecAPI)
    spy = LaneSpy(app)
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client, spy


@pytest.fixture
def stack(seeded: Settings) -> Iterator[TestClient]:
    app = create_app(seeded.model_copy(update={"recommendations_lane": False}))
    assert app.lane is None  # type: ignore[attr-defined]
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


def _seen(response: Any) -> tuple[object, ...]:
    headers = response.headers
    return response.status_code, response.content, *map(headers.get, MEANINGFUL_HEADERS)


def _served(route: str = ROUTE, status: str = "200") -> float:
    labels = {"method": "GET", "route": route, "status": status}
    return REGISTRY.get_sample_value("saerec_http_requests_total", labels) or 0.0


def test_the_lane_answers_plain_requests_exactly_as_the_stack_does(
    lane: tuple[TestClient, LaneSpy], stack: TestClient
) -> None:
    client, spy = lane
    counted = _served()
    for path, query in PLAIN:
        via_lane = client.get(f"{path}?{query}")
        assert via_lane.status_code == 200, via_lane.text
        assert _seen(via_lane) == _seen(stack.get(f"{path}?{query}")), (path, query)
    assert spy.answered == [True] * len(PLAIN)
    strategies = {client.get(f"{path}?{query}").json()["strategy"] for path, query in PLAIN}
    assert strategies == {"autoencoder", "popular"}
    # the stack's requests are counted too (stack is another app in this process)
    assert _served() - counted == 3 * len(PLAIN)


@pytest.mark.parametrize(
    ("url", "headers", "status"),
    [
        ("/users/1/recommendations?n=0", {}, 422),
        ("/users/1/recommendations?n=abc", {}, 422),
        ("/users/1/recommendations?page=2", {}, 422),  # undeclared parameter
        ("/users/0/recommendations", {}, 422),
        ("/users/007/recommendations", {}, 200),  # not canonical: the stack parses it
        (f"/users/{2**63}/recommendations", {}, 422),  # past MAX_ID
        ("/users/1/recommendations?" + "exclude=1&" * 2000, {}, 414),
        ("/users/1/recommendations", {"Origin": "https://app.example"}, 200),
        ("/users/1/recommendations", {"Content-Length": "x"}, 400),
        ("/users/1/recommendations/", {}, 307),
    ],
)
def test_requests_the_lane_leaves_are_answered_by_the_stack(
    lane: tuple[TestClient, LaneSpy],
    stack: TestClient,
    url: str,
    headers: dict[str, str],
    status: int,
) -> None:
    client, spy = lane
    answer = client.get(url, headers=headers, follow_redirects=False)
    assert spy.answered == [False]
    assert answer.status_code == status, answer.text
    assert _seen(answer) == _seen(stack.get(url, headers=headers, follow_redirects=False))


def test_cors_headers_still_come_from_the_stack(seeded: Settings) -> None:
    app = create_app(seeded.model_copy(update={"cors_origins": ["https://app.example"]}))
    with TestClient(app) as client:
        answer = client.get("/users/1/recommendations", headers={"Origin": "https://app.example"})
        assert answer.status_code == 200
        assert answer.headers["access-control-allow-origin"] == "https://app.example"


def test_an_answer_that_fails_in_the_lane_is_answered_by_the_stack(
    lane: tuple[TestClient, LaneSpy], monkeypatch: pytest.MonkeyPatch
) -> None:
    client, spy = lane
    calls: list[int] = []
    recommend = Recommender.recommendations

    async def database_down_once(self: Recommender, request: Any) -> dict[str, Any]:
        calls.append(request.user_id)
        if len(calls) == 1:
            raise OperationalError("SELECT", {}, Exception("server closed the connection"))
        return await recommend(self, request)

    monkeypatch.setattr(Recommender, "recommendations", database_down_once)
    assert client.get("/users/1/recommendations").status_code == 200  # asked again
    assert calls == [1, 1] and spy.answered == [False]

    async def database_down(self: Recommender, request: Any) -> dict[str, Any]:
        raise OperationalError("SELECT", {}, Exception("server closed the connection"))

    monkeypatch.setattr(Recommender, "recommendations", database_down)
    unavailable = _served(status="503")
    answer = client.get("/users/1/recommendations")
    assert answer.status_code == 503 and answer.headers["retry-after"] == "1"
    assert answer.json() == {"detail": "the database is unavailable; retry shortly"}
    assert _served(status="503") - unavailable == 1  # counted once, by the stack
