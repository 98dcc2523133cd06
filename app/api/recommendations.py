"""Recommendation and prediction routes: inference runs on the recommender's executor.

Answers are plain JSON types built by the service, encoded once with orjson into the
response body: no pydantic re-validation, no stdlib encoder (both showed in profiles).
The hottest route also has a lane in front of the middleware stack
(`RecommendationsLane`), which answers its plain requests with the same code.
"""

from __future__ import annotations

import re
import time
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, FastAPI, Query, Request, Response
from pydantic import Field
from starlette.datastructures import QueryParams
from starlette.types import Receive, Scope, Send

from app.api.deps import (
    MovieId,
    QueryParser,
    RecommenderDep,
    UserId,
    recommender_of,
    started_recommender,
)
from app.observability import observe_request
from app.schemas import (
    MAX_ID,
    NO_NUL,
    PositiveId,
    PredictionsOut,
    RecommendationQuery,
    RecommendationsOut,
    SimilarMoviesOut,
)
from app.services.recommender import Recommender, RecommendRequest, observe_stage

router = APIRouter(tags=["recommendations"])


def _json(answer: dict[str, Any]) -> Response:
    """The answer as a JSON response (NaN, which the service never emits, would be null)."""
    return Response(orjson.dumps(answer), media_type="application/json")


Genres = Annotated[
    list[Annotated[str, Field(min_length=1, max_length=64, pattern=NO_NUL)]] | None,
    Query(max_length=20, description="repeatable: movies in any of these genres"),
]
recommendation_query = QueryParser(RecommendationQuery)


@router.get(
    "/users/{user_id}/recommendations",
    response_model=RecommendationsOut,
    openapi_extra=recommendation_query.openapi,
)
async def recommendations(http: Request, user_id: UserId) -> Response:
    # The query and the recommender are taken here, not as dependencies: FastAPI's
    # solving of them was a tenth of this hot path (see `QueryParser`).
    return await recommendations_response(recommender_of(http), user_id, recommendation_query(http))


async def recommendations_response(
    recommender: Recommender, user_id: int, query: RecommendationQuery
) -> Response:
    """The route's answer, whichever way the request came (the route or its lane)."""
    # Inference runs on the recommender's own small executor, off the event loop: a few
    # threads that keep busy beat dozens of threadpool threads fighting over the GIL. The
    # batcher lets requests that arrive together share one forward pass.
    request = RecommendRequest(
        user_id,
        query.n,
        _unique(query.genre or []),
        _unique(query.exclude or []),
        query.explain,
    )
    answer = await recommender.recommendations(request)
    started = time.perf_counter()
    response = _json(answer)
    observe_stage("json", time.perf_counter() - started)
    return response


class RecommendationsLane:
    """GET /users/{id}/recommendations answered in front of the app's middleware stack.

    Profiled under load, the route spent about 0.25 ms of the event loop's ~0.5 ms per
    request in FastAPI's and Starlette's machinery (seven middleware layers, routing, the
    route's request handling), all of it holding the GIL the inference thread needs. The
    lane takes only the requests that none of that machinery would act on (a GET of
    this exact path with a canonical user id; no body, no ``Origin`` for CORS, no root
    path, a query under the limit that `recommendation_query` accepts), answers them
    with `recommendations_response` and counts them in the same HTTP metrics. Anything
    else goes down the whole stack untouched, and so does a request whose answer
    failed: the stack asks again (a read changes nothing) and answers the error as it
    answers every other route's. FastAPI's own OpenTelemetry spans, if a provider is
    configured, do not cover the lane's requests; the Prometheus metrics do.
    """

    PATH = re.compile(r"/users/([1-9][0-9]{0,18})/recommendations")
    TEMPLATE = "/users/{user_id}/recommendations"
    STACK_HEADERS = frozenset({b"origin", b"content-length", b"transfer-encoding"})

    def __init__(self, app: FastAPI, max_query_bytes: int) -> None:
        self._app = app
        self._max_query_bytes = max_query_bytes

    async def answer(self, scope: Scope, receive: Receive, send: Send) -> bool:
        """Answer the request if it is the lane's (True), else leave it untouched (False)."""
        started = time.perf_counter()
        user_id = self._user_id(scope)
        recommender = started_recommender(self._app)
        if user_id is None or recommender is None or not self._plain(scope):
            return False
        try:
            query = recommendation_query.parse(QueryParams(scope["query_string"]))
            response = await recommendations_response(recommender, user_id, query)
        except Exception:  # a 422, a 503...: the stack's to answer, as for any route
            return False
        await response(scope, receive, send)
        observe_request("GET", self.TEMPLATE, response.status_code, time.perf_counter() - started)
        return True

    def _user_id(self, scope: Scope) -> int | None:
        if scope["method"] != "GET" or scope.get("root_path"):
            return None
        match = self.PATH.fullmatch(scope["path"])
        user_id = int(match.group(1)) if match else None
        return user_id if user_id is not None and user_id <= MAX_ID else None

    def _plain(self, scope: Scope) -> bool:
        if len(scope["query_string"]) > self._max_query_bytes:
            return False
        return not any(name in self.STACK_HEADERS for name, _ in scope["headers"])


@router.get(
    "/movies/{movie_id}/similar",
    response_model=SimilarMoviesOut,
    responses={404: {"description": "unknown movie"}},
)
async def similar_movies(
    recommender: RecommenderDep,
    movie_id: MovieId,
    n: Annotated[int, Query(ge=1, le=100)] = 10,
    genre: Genres = None,
) -> Response:
    answer = await recommender.similar_movies(movie_id, n, _unique(genre or []))
    return _json(answer)


def _unique(values: list[Any]) -> tuple[Any, ...]:
    """Sorted and deduplicated: the same filter asked twice is the same answer key."""
    return tuple(sorted(set(values)))


@router.get(
    "/users/{user_id}/predictions",
    response_model=PredictionsOut,
    responses={404: {"description": "unknown movie"}, 503: {"description": "no model yet"}},
)
async def predictions(
    recommender: RecommenderDep,
    user_id: UserId,
    movie_id: Annotated[list[PositiveId], Query(min_length=1, max_length=100)],
) -> Response:
    # The same executor as recommendations: a fold-in is a fold-in, whichever route asks.
    answer = await recommender.predictions(user_id, movie_id)
    return _json(answer)
