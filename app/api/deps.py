"""Typed dependencies: one transaction per request, settings, the recommender, the admin
guard, the path types, and the query checks (unknown parameters, unknown genres).

Routes take these as parameters; this module is the only one that reads `app.state`.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Annotated, Any, Generic, TypeVar, get_args, get_origin

from fastapi import Depends, FastAPI, HTTPException, Path, Query, Request, status
from fastapi.dependencies.models import Dependant
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ValidationError
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker
from starlette.datastructures import QueryParams

from app.config import Settings
from app.models import MovieGenre
from app.schemas import MAX_ID, NO_NUL
from app.services.recommender import Recommender


def get_settings_dep(request: Request) -> Settings:
    return request.app.state.settings


def get_engine(request: Request) -> Engine:
    return request.app.state.engine


def get_session_factory(request: Request) -> sessionmaker[Session]:
    return request.app.state.session_factory


async def get_recommender(request: Request) -> Recommender:
    """Async, like every dependency of the recommendation routes: no thread hop."""
    return recommender_of(request)


def recommender_of(request: Request) -> Recommender:
    """The recommender, for the one route that takes it without a dependency (see
    `QueryParser`: each solved dependency costs that hot path ~8 us)."""
    return request.app.state.recommender


def started_recommender(app: FastAPI) -> Recommender | None:
    """The app's recommender once its lifespan has started one (for a lane in front of the
    routes, which has no `Request`); None before."""
    return getattr(app.state, "recommender", None)


def get_session(request: Request) -> Iterator[Session]:
    """Commit when the handler returns, roll back on any error: writes are all or nothing."""
    with request.app.state.session_factory() as session, session.begin():
        yield session


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
EngineDep = Annotated[Engine, Depends(get_engine)]
# For a use case that commits before it acts (activation, then the model preload).
SessionFactoryDep = Annotated[sessionmaker[Session], Depends(get_session_factory)]
RecommenderDep = Annotated[Recommender, Depends(get_recommender)]
# scope="function": commit before the response is sent. With FastAPI's default ("request")
# the commit ran after a 201 had gone out, so a commit that failed (database gone, a
# constraint) was acknowledged to the client as stored.
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
    """The query parameters a route declares, its dependencies' included."""
    names = {field.alias for field in dependant.query_params}
    for sub in dependant.dependencies:
        names |= _query_names(sub)
    return frozenset(names)


async def reject_unknown_query(request: Request) -> None:
    """422 for a query parameter the route does not declare, as for an unknown JSON field.

    `/movies?search=star` would otherwise answer the whole catalog as if it had been
    filtered. Routes without query parameters (health checks, metrics scrapes) are left
    alone: probes often add cache busters; a route whose query is a `QueryParser` refuses
    unknown names itself. Async, so it costs the hot path no thread hop.
    """
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


QueryModel = TypeVar("QueryModel", bound=BaseModel)


class QueryParser(Generic[QueryModel]):
    """Validates a route's whole query string as ``model`` (whose config forbids extra
    fields) in one pydantic call; `openapi` publishes the same fields as the route's
    query parameters.

    For the hot path, called by the route itself: FastAPI's per-parameter solving (four
    query parameters, each introspected on every request) and each dependency it solves
    cost a recommendation about 35 us of the server's ~400. Errors are FastAPI's: a 422,
    each problem located at ``("query", name, ...)``, and an undeclared name refused as
    `reject_unknown_query` refuses it elsewhere.
    """

    def __init__(self, model: type[QueryModel]) -> None:
        self._model = model
        self._declared = frozenset(model.model_fields)
        self._repeatable = frozenset(
            name for name, field in model.model_fields.items() if _is_list(field.annotation)
        )

    def __call__(self, request: Request) -> QueryModel:
        return self.parse(request.query_params)

    def parse(self, params: QueryParams) -> QueryModel:
        """The query as the model, or FastAPI's `RequestValidationError`."""
        repeatable = self._repeatable
        values = {key: params.getlist(key) if key in repeatable else params[key] for key in params}
        try:
            return self._model.model_validate(values)
        except ValidationError as exc:
            raise RequestValidationError(
                [self._error(error) for error in exc.errors(include_url=False)]
            ) from None

    def _error(self, error: Any) -> dict[str, Any]:
        if error["type"] == "extra_forbidden":
            return _unknown_query(str(error["loc"][0]), self._declared)
        return {**error, "loc": ("query", *error["loc"])}

    @property
    def openapi(self) -> dict[str, Any]:
        """The route's ``openapi_extra``: one query parameter per field of the model, each
        with the schema pydantic checks it against."""
        schema = self._model.model_json_schema()
        if "$defs" in schema:
            raise TypeError(f"{self._model.__name__}: nested models are not query parameters")
        required = set(schema.get("required", ()))
        parameters = []
        for name, field in schema["properties"].items():
            parameter = {"name": name, "in": "query", "required": name in required}
            parameter["schema"] = field
            if "description" in field:
                parameter["description"] = field["description"]
            parameters.append(parameter)
        return {"parameters": parameters}


def _is_list(annotation: Any) -> bool:
    """A list, or an optional one: the parameter may be repeated in the query string."""
    return get_origin(annotation) is list or any(
        get_origin(arg) is list for arg in get_args(annotation)
    )


def _catalog_genres(session: Session) -> list[str]:
    return list(session.scalars(select(MovieGenre.genre).distinct().order_by(MovieGenre.genre)))


def known_genre(
    session: SessionDep,
    genre: Annotated[
        str | None,
        Query(min_length=1, max_length=64, pattern=NO_NUL, description="a catalog genre"),
    ] = None,
) -> str | None:
    """A genre filter that matches nothing is a typo, not an empty answer: 422 listing them."""
    if genre is None:
        return None
    genres = _catalog_genres(session)
    if genre.lower() in {g.lower() for g in genres}:
        return genre
    valid = ", ".join(genres) if genres else "none yet (the catalog is empty)"
    error: dict[str, Any] = {
        "loc": ("query", "genre"),
        "msg": f"unknown genre {genre!r}; valid genres: {valid}",
        "type": "unknown_genre",
    }
    raise RequestValidationError([error])


KnownGenre = Annotated[str | None, Depends(known_genre)]
