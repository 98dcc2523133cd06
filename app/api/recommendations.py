"""Recommendation and prediction routes: inference runs on the recommender's executor."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import JSONResponse

from app.schemas import MAX_ID, PositiveId, PredictionsOut, RecommendationsOut
from app.services.recommender import Recommender

router = APIRouter(tags=["recommendations"])
UserId = Annotated[int, Path(gt=0, le=MAX_ID)]


def _recommender(request: Request) -> Recommender:
    return request.app.state.recommender


@router.get("/users/{user_id}/recommendations", response_model=RecommendationsOut)
async def recommendations(
    request: Request,
    user_id: UserId,
    n: Annotated[int, Query(ge=1, le=100)] = 10,
    genre: Annotated[str | None, Query(min_length=1, max_length=64)] = None,
) -> JSONResponse:
    # Inference runs on the recommender's own small executor, off the event loop: a few
    # threads that keep busy beat dozens of threadpool threads fighting over the GIL.
    recommender = _recommender(request)
    answer = await asyncio.get_running_loop().run_in_executor(
        recommender.executor, recommender.recommend, user_id, n, genre
    )
    # The service builds plain JSON types already; skipping re-validation is a hot-path win.
    return JSONResponse(answer)


@router.get(
    "/users/{user_id}/predictions",
    response_model=PredictionsOut,
    responses={404: {"description": "unknown movie"}, 503: {"description": "no model yet"}},
)
async def predictions(
    request: Request,
    user_id: UserId,
    movie_id: Annotated[list[PositiveId], Query(min_length=1, max_length=100)],
) -> JSONResponse:
    # The same executor as recommendations: a fold-in is a fold-in, whichever route asks.
    recommender = _recommender(request)
    answer = await asyncio.get_running_loop().run_in_executor(
        recommender.executor, recommender.predict, user_id, movie_id
    )
    return JSONResponse(answer)
