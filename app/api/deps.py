"""Typed dependencies: one transaction per request, settings, the recommender, the admin
guard, the path types, and the check for unknown query parameters.

Routes take these as parameters; this module is the only one that reads `app.state`.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Path, Request, status
from fastapi.dependencies.models import Dependant
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.schemas import MAX_ID, NO_NUL
from app.services.trending import TrendingLists
from app.serving.recommender import Recommender


def get_settings_dep(request: Request) -> Settings:
    return request.app.state.settings


def get_engine(request: Request) -> Engine:
    return request.app.state.engine


def get_session_factory(request: Request) -> sessionmaker[Session]:
    return request.app.state.session_factory


def get_trending_lists(request: Request) -> TrendingLists:
    return request.app.state.trending


async def get_recommender(request: Request) -> Recommender:
    """Async, like every dependency of the recommendation routes: no thread hop."""
    return request.app.state.recommender


def get_session(request: Request) -> Iterator[Session]:
    """Commit when the handler returns, roll back on any error: writes are all or nothing."""
    with request.app.state.session_factory() as session, session.begin():
        yield session


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
EngineDep = Annotated[Engine, Depends(get_engine)]
# For a use case that commits before it acts (activation, then the model preload).
SessionFactoryDep = Annotated[sessionmaker[Session], Depends(get_session_factory)]
RecommenderDep = Annotated[Recommender, Depends(get_recommender)]
TrendingDep = Annotated[TrendingLists, Depends(get_trending_lists)]
# scope="function": commit before the response is sent, or a failed commit would have been
# acknowledged to the client as stored.
SessionDep = Annotated[Session, Depends(get_session, scope="function")]
_bearer = HTTPBearer(auto_error=False, description="ADMIN_TOKEN")


def require_admin(
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    expected = settings.admin_token_value()
    if not expected:
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE, "admin is disabled: ADMIN_TOKEN is not set"
        )
    supplied = credentials.credentials if credentials else ""
    if not secrets.compare_digest(supplied.encode(), expected.encode()):
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "missing or invalid admin token",
            headers={"WWW-Authenticate": "Bearer"},
        )


AdminDep = Annotated[None, Depends(require_admin)]

UserId = Annotated[int, Path(gt=0, le=MAX_ID)]
MovieId = Annotated[int, Path(gt=0, le=MAX_ID)]
ModelVersionId = Annotated[str, Path(max_length=64, pattern=NO_NUL)]


def _query_names(dependant: Dependant) -> frozenset[str]:
    names: set[str] = set()
    for field in dependant.query_params:
        annotation = field.field_info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            names |= {f.alias or name for name, f in annotation.model_fields.items()}
        else:
            names.add(field.alias)
    for sub in dependant.dependencies:
        names |= _query_names(sub)
    return frozenset(names)


async def reject_unknown_query(request: Request) -> None:
    """422 for a query parameter the route does not declare (`/movies?search=star` would
    answer the whole catalog as if filtered). Routes without any (probes, which add cache
    busters) are left alone. Async: no thread hop."""
    route = request.scope.get("route")
    if not isinstance(route, APIRoute):
        return
    declared = _query_names(route.dependant)  # a few attribute reads: no cache needed
    if not declared:
        return
    unknown = sorted(set(request.query_params) - declared)
    if unknown:
        raise RequestValidationError([_unknown_query(name, declared) for name in unknown])


def _unknown_query(name: str, declared: frozenset[str]) -> dict[str, Any]:
    takes = ", ".join(sorted(declared))
    return {
        "loc": ("query", name),
        "msg": f"unknown query parameter; this operation takes: {takes}",
        "type": "extra_forbidden",
    }
