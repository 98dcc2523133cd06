"""Dismissal routes ("not interested"): thin adapters over app.services.dismissals."""

from __future__ import annotations

from fastapi import APIRouter, Response, status

from app.api.deps import MovieId, SessionDep, UserId
from app.schemas import DismissalIn, DismissalOut, UserDismissalsOut
from app.services import dismissals as service

router = APIRouter(tags=["dismissals"])


@router.post(
    "/users/{user_id}/dismissals",
    status_code=status.HTTP_201_CREATED,
    response_model=DismissalOut,
    responses={
        200: {"description": "already dismissed: the first dismissal", "model": DismissalOut},
        404: {"description": "unknown movie"},
    },
)
def post_dismissal(
    user_id: UserId, body: DismissalIn, session: SessionDep, response: Response
) -> DismissalOut:
    stored, created = service.dismiss(session, user_id, body.movie_id)
    if not created:
        response.status_code = status.HTTP_200_OK
    return stored


@router.get("/users/{user_id}/dismissals", response_model=UserDismissalsOut)
def get_dismissals(user_id: UserId, session: SessionDep) -> UserDismissalsOut:
    return service.list_dismissals(session, user_id)


@router.delete(
    "/users/{user_id}/dismissals/{movie_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={404: {"description": "not dismissed"}},
)
def delete_dismissal(user_id: UserId, movie_id: MovieId, session: SessionDep) -> Response:
    service.undismiss(session, user_id, movie_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
