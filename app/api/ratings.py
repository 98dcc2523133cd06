"""Ratings routes: thin adapters over app.services.ratings."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response, status

from app.api.deps import MovieId, SessionDep, SettingsDep, UserId
from app.schemas import MAX_ID, RatingBatchIn, RatingBatchOut, RatingIn, RatingOut, UserRatingsPage
from app.services import ratings as service

router = APIRouter(tags=["ratings"])


@router.post(
    "/ratings",
    status_code=status.HTTP_201_CREATED,
    response_model=RatingOut,
    responses={
        200: {"description": "replaced an earlier rating", "model": RatingOut},
        404: {"description": "unknown movie"},
    },
)
def post_rating(body: RatingIn, session: SessionDep, response: Response) -> RatingOut:
    stored, created = service.upsert_rating(session, body)
    if not created:
        response.status_code = status.HTTP_200_OK
    return stored


@router.post(
    "/ratings/batch",
    response_model=RatingBatchOut,
    responses={404: {"description": "unknown movie ids"}, 413: {"description": "too many items"}},
)
def post_ratings_batch(
    body: RatingBatchIn, session: SessionDep, settings: SettingsDep
) -> RatingBatchOut:
    inserted, updated = service.upsert_ratings_batch(
        session, body.ratings, settings.max_batch_items
    )
    return RatingBatchOut(inserted=inserted, updated=updated)


@router.get("/users/{user_id}/ratings", response_model=UserRatingsPage)
def get_user_ratings(
    user_id: UserId,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=MAX_ID)] = 0,
) -> UserRatingsPage:
    return service.list_user_ratings(session, user_id, limit, offset)


@router.delete(
    "/users/{user_id}/ratings/{movie_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={404: {"description": "no such rating"}},
)
def delete_user_rating(user_id: UserId, movie_id: MovieId, session: SessionDep) -> Response:
    service.delete_rating(session, user_id, movie_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
