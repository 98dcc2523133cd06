"""Catalog routes."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Query, status
from pydantic import Field

from app.api.deps import AdminDep, MovieId, SessionDep, TrendingDep
from app.schemas import (
    MAX_ID,
    NO_NUL,
    MovieHiddenIn,
    MovieIn,
    MovieOut,
    MoviesPage,
    QueryGenre,
    TrendingOut,
    TrendingQuery,
)
from app.services import movies as service

router = APIRouter(tags=["movies"])


@router.get("/movies", response_model=MoviesPage)
def list_movies(
    session: SessionDep,
    genre: Annotated[
        QueryGenre | None,
        Query(
            description="movies of this genre (case-insensitive); one the catalog lacks lists none",
        ),
    ] = None,
    q: Annotated[
        str | None, Query(max_length=200, pattern=NO_NUL, description="title substring")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    offset: Annotated[int, Query(ge=0, le=MAX_ID)] = 0,
    include_hidden: Annotated[bool, Query(description="also list hidden movies")] = False,
) -> MoviesPage:
    return service.search_movies(session, q, genre, limit, offset, include_hidden)


# Declared before /movies/{movie_id}, which would otherwise take "trending" for an id.
@router.get("/movies/trending", response_model=TrendingOut)
def trending_movies(
    session: SessionDep, lists: TrendingDep, query: Annotated[TrendingQuery, Query()]
) -> TrendingOut:
    """Movies by their recent positive ratings, damped (see app/services/trending.py)."""
    return lists.top(session, query.n, query.days, query.genre or [])


@router.get("/movies/{movie_id}", response_model=MovieOut, responses={404: {}})
def get_movie(movie_id: MovieId, session: SessionDep) -> MovieOut:
    return service.get_movie(session, movie_id)


@router.post(
    "/movies",
    status_code=status.HTTP_201_CREATED,
    response_model=MovieOut | list[MovieOut],
    responses={401: {}, 409: {"description": "movie id taken"}, 503: {"description": "admin off"}},
)
def create_movies(
    _admin: AdminDep,
    session: SessionDep,
    body: Annotated[
        MovieIn | Annotated[list[MovieIn], Field(min_length=1, max_length=1000)], Body()
    ],
) -> MovieOut | list[MovieOut]:
    if isinstance(body, list):
        return service.create_movies(session, body)
    return service.create_movies(session, [body])[0]


@router.patch(
    "/admin/movies/{movie_id}",
    response_model=MovieOut,
    tags=["admin"],
    responses={
        401: {"description": "missing or bad token"},
        404: {"description": "unknown movie"},
        503: {"description": "admin off"},
    },
)
def set_movie_hidden(
    _admin: AdminDep, movie_id: MovieId, body: MovieHiddenIn, session: SessionDep
) -> MovieOut:
    """Hide (withdrawn, unlicensed, unreleased) or show again; its ratings are kept."""
    return service.set_hidden(session, movie_id, body.hidden)
