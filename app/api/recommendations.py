"""Recommendation and prediction routes: inference runs on the recommender's executor;
answers are plain JSON types encoded once with orjson (no pydantic re-validation).
"""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Query, Response

from app.api.deps import MovieId, RecommenderDep, UserId
from app.schemas import (
    PositiveId,
    PredictionsOut,
    QueryGenre,
    RecommendationQuery,
    RecommendationsOut,
    SessionRecommendationsIn,
    SessionRecommendationsOut,
    SimilarMoviesOut,
)
from app.serving.ranking import RecommendRequest, SessionRatings

router = APIRouter(tags=["recommendations"])


def _json(answer: dict[str, Any]) -> Response:
    """The answer as a JSON response (NaN, which the service never emits, would be null)."""
    return Response(orjson.dumps(answer), media_type="application/json")


Genres = Annotated[
    list[QueryGenre] | None,
    Query(max_length=20, description="repeatable: movies in any of these genres"),
]


@router.get("/users/{user_id}/recommendations", response_model=RecommendationsOut)
async def recommendations(
    recommender: RecommenderDep,
    user_id: UserId,
    query: Annotated[RecommendationQuery, Query()],
) -> Response:
    request = RecommendRequest(
        user_id,
        query.n,
        _unique(query.genre or []),
        _unique(query.exclude or []),
        query.explain,
    )
    return _json(await recommender.recommendations(request))


@router.post(
    "/recommendations",
    response_model=SessionRecommendationsOut,
    responses={404: {"description": "unknown movie ids"}},
)
async def session_recommendations(
    recommender: RecommenderDep, body: SessionRecommendationsIn
) -> Response:
    """An anonymous session: its ratings are folded in as a stored user's are, through the
    same batcher, model and filters; nothing is stored."""
    request = RecommendRequest(
        None,
        body.n,
        _unique(body.genre),
        _unique(body.exclude),
        body.explain,
        SessionRatings.of((r["movie_id"], r["rating"]) for r in body.ratings),
    )
    return _json(await recommender.recommendations(request))


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
    answer = await recommender.predictions(user_id, movie_id)
    return _json(answer)
