"""Request and response bodies; validation of every input happens here.

One module past ~500 lines on purpose: it is the API's whole accepted input and answer
shapes, read side by side with the OpenAPI document it produces (a split by router would
scatter the shared query fields and validators the routes must agree on)."""

from __future__ import annotations

import math
import types
from datetime import datetime
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    Strict,
    StrictBool,
    StrictFloat,
    StrictStr,
    WithJsonSchema,
    create_model,
    field_validator,
)
from pydantic_core import PydanticCustomError
from typing_extensions import TypedDict

from app.models import RATING_VALUES, as_aware

# BIGINT ids, but FastAPI writes OpenAPI bounds as floats and 2**63 - 1 rounds up to 2**63:
# the largest float below it is the bound, so the published maximum is the one enforced.
MAX_ID = 2**63 - 1024
# PostgreSQL text (and JSONB) cannot hold NUL: refuse it at the edge as a 422, not a 500.
NO_NUL = r"^[^\x00]*$"
NOT_BLANK = r"^[^\x00]*[^\s\x00][^\x00]*$"


def _json_integer(value: Any) -> Any:
    """JSON Schema's integer: 3 and 3.0, never `true` or "3" (which lax pydantic takes)."""
    if isinstance(value, bool | str | bytes):
        raise PydanticCustomError("int_type", "Input should be a valid integer")
    return value


# After the bounds: pydantic publishes bounds placed after a validator under wrong names.
INTEGER_ONLY = BeforeValidator(_json_integer)
# Query strings are text, parsed (lax); in JSON bodies `true` is not the id 1.
PositiveId = Annotated[int, Field(gt=0, le=MAX_ID, strict=False)]
BodyId = Annotated[int, Field(gt=0, le=MAX_ID), INTEGER_ONLY]
Genre = Annotated[str, Field(min_length=1, max_length=64, pattern=NO_NUL)]
JSON_LITERALS = ("true", "false", "null")


def _not_a_json_literal(value: str) -> str:
    if value in JSON_LITERALS:
        raise PydanticCustomError("genre_literal", "a genre is not 'true', 'false' or 'null'")
    return value


# In a query string a boolean and its name are the same text: the schema excludes the JSON
# literals, as the server does, so what it calls a violation is refused (`genre=true`).
QueryGenre = Annotated[
    Genre,
    AfterValidator(_not_a_json_literal),
    Field(json_schema_extra={"not": {"enum": list(JSON_LITERALS)}}),
]


class StrictBody(BaseModel):
    """Unknown fields (a typo must not become a default), NaN and Infinity are refused."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


def _half_stars(value: float) -> float:
    if not math.isfinite(value) or value not in RATING_VALUES:
        raise ValueError("rating must be one of 0.5, 1.0, ..., 5.0 (half stars; 0 is not a rating)")
    return value


# A rating's stars, wherever a rating is sent: a stored rating or an anonymous session's.
Stars = Annotated[
    float,
    Field(
        description="0.5 to 5.0 in steps of 0.5",
        strict=True,  # "4" is a string, not a rating
        json_schema_extra={"minimum": 0.5, "maximum": 5.0, "multipleOf": 0.5},
    ),
    AfterValidator(_half_stars),
]


class RatingIn(StrictBody):
    user_id: BodyId
    movie_id: BodyId
    rating: Stars
    timestamp: Annotated[int, Field(ge=0, le=MAX_ID), INTEGER_ONLY] | None = Field(
        default=None, description="unix seconds"
    )


class RatingOut(BaseModel):
    user_id: int
    movie_id: int
    rating: float
    timestamp: int


class RatingBatchIn(StrictBody):
    ratings: list[RatingIn] = Field(
        min_length=1,
        description="all or nothing; at most MAX_BATCH_ITEMS (default 10,000), 413 beyond",
    )


class RatingBatchOut(BaseModel):
    inserted: int
    updated: int


class UserRatingItem(BaseModel):
    movie_id: int
    rating: float
    timestamp: int


class UserRatingsPage(BaseModel):
    user_id: int
    total: int
    items: list[UserRatingItem]


class MovieIn(StrictBody):
    movie_id: BodyId
    title: str = Field(min_length=1, max_length=500, pattern=NOT_BLANK)
    genres: list[Genre] = Field(default_factory=list, max_length=50)
    year: Annotated[int, Field(ge=1800, le=3000), INTEGER_ONLY] | None = None

    @field_validator("title")
    @classmethod
    def _title_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("title must not be blank")
        return value.strip()


class MovieOut(BaseModel):
    movie_id: int
    title: str
    year: int | None
    genres: list[str]
    rating_count: int
    rating_mean: float | None
    hidden: bool = Field(
        description="never recommended; left out of GET /movies unless include_hidden=true"
    )


class MoviesPage(BaseModel):
    total: int
    items: list[MovieOut]


# A query string as FastAPI's query model: the OpenAPI parameters are exactly what is
# checked, unknown names are 422.
_QUERY = ConfigDict(extra="forbid", frozen=True)
N = Field(10, ge=1, le=100, description="how many movies to list")
GENRES = Field(None, max_length=20, description="repeatable: movies in any of these genres")


class TrendingQuery(BaseModel):
    model_config = _QUERY

    n: int = N
    days: int = Field(7, ge=1, le=365, description="the window: ratings of the last days")
    genre: list[QueryGenre] | None = GENRES


class TrendingItem(BaseModel):
    movie_id: int
    title: str
    year: int | None
    genres: list[str]
    score: float = Field(
        description="recent positive ratings weighted by their damped share of the movie's "
        "recent ratings (see app/services/trending.py): higher means more trending"
    )
    recent_ratings: int = Field(description="ratings within the window")
    recent_positive: int = Field(description="ratings of 4 stars or more within the window")


class TrendingOut(BaseModel):
    days: int
    items: list[TrendingItem]


class MovieHiddenIn(StrictBody):
    hidden: StrictBool  # true or false, as the schema says; lax pydantic also takes "no", 1


class DismissalIn(StrictBody):
    movie_id: BodyId


class HealthOut(BaseModel):
    status: str


class ReadinessOut(BaseModel):
    status: str
    database: str
    model_version: str | None = None
    detail: str | None = None
    pid: int | None = Field(default=None, description="the answering process (several workers)")


class BecauseItem(BaseModel):
    """One of the user's own ratings that raised a recommended movie's score."""

    movie_id: int
    title: str
    rating: float


class RecommendationItem(BaseModel):
    movie_id: int
    title: str
    genres: list[str]
    score: float = Field(description="ranking score: higher means recommend first")
    predicted_rating: float | None = Field(
        default=None, description="the model's predicted stars (autoencoder strategy only)"
    )
    because: list[BecauseItem] | None = Field(
        default=None,
        description="only with explain=true: up to 3 of the user's ratings that raised this "
        "movie's score most, largest first, as the served model computes it (removing one "
        "lowers the score); empty for the popular strategy",
    )


class RecommendationQuery(BaseModel):
    model_config = _QUERY

    n: int = N
    genre: list[QueryGenre] | None = GENRES
    exclude: list[PositiveId] | None = Field(
        None, max_length=100, description="repeatable: movie ids not to list this time"
    )
    explain: bool = Field(
        False, description="add each item's `because`: the ratings that raised it"
    )


RecommendationId = Annotated[
    str,
    Field(
        description="this answer's impression: every answer gets a new one, a cached one too",
        pattern=r"^[0-9a-f]{32}$",
    ),
]


class _Recommendations(BaseModel):
    recommendation_id: RecommendationId
    model_version: str | None
    strategy: Literal["autoencoder", "popular"]
    items: list[RecommendationItem]


class RecommendationsOut(_Recommendations):
    user_id: int


MAX_SESSION_RATINGS = 1000


# A typed dict, not a model: without an object per rating a body validates ~30 % faster.
class SessionRatingIn(TypedDict):
    """One rating of an anonymous session: the rules of a stored rating, no user."""

    __pydantic_config__ = ConfigDict(extra="forbid")  # type: ignore[misc]

    movie_id: BodyId
    rating: Stars


class SessionRecommendationsIn(StrictBody):
    """POST /recommendations: an anonymous session's ratings and the query of
    GET /users/{id}/recommendations, as a body. Nothing of it is stored."""

    ratings: list[SessionRatingIn] = Field(
        min_length=1,
        max_length=MAX_SESSION_RATINGS,
        description="a movie rated more than once keeps its last rating, as in a batch",
    )
    n: Annotated[int, Field(ge=1, le=100), INTEGER_ONLY] = Field(
        10, description="how many movies to list"
    )
    genre: list[Genre] = Field(
        default_factory=list, max_length=20, description="movies in any of these genres"
    )
    exclude: list[BodyId] = Field(
        default_factory=list, max_length=100, description="movie ids not to list this time"
    )
    explain: StrictBool = Field(
        False, description="add each item's `because`: the session's ratings that raised it"
    )


class SessionRecommendationsOut(_Recommendations):
    user_id: None = Field(description="always null: an anonymous session")


class SimilarItem(BaseModel):
    movie_id: int
    title: str
    genres: list[str]
    score: float = Field(
        description="similarity in the model's item representations (autoencoder, -1..1) "
        "or the damped mean rating (popular)"
    )


class SimilarMoviesOut(BaseModel):
    recommendation_id: RecommendationId
    movie_id: int
    model_version: str | None
    strategy: Literal["autoencoder", "popular"] = Field(
        description="popular: no model yet, or the model does not know this movie (then the "
        "popular movies within its genres)"
    )
    items: list[SimilarItem]


class PredictionItem(BaseModel):
    movie_id: int
    predicted_rating: float
    known_to_model: bool = Field(
        description="false for a movie the model neither trained on nor holds as new (not "
        "yet rated, or past the new movies served): the training mean is returned; a rated "
        "movie added after training is predicted from the bias terms and its own ratings"
    )


class PredictionsOut(BaseModel):
    user_id: int
    model_version: str
    items: list[PredictionItem]


_STRICT_SCALARS: dict[Any, Any] = {
    bool: StrictBool,
    int: Annotated[int, INTEGER_ONLY],
    float: StrictFloat,
    str: StrictStr,
}


def _strict(annotation: Any) -> Any:
    """The same type with strict scalars (`false` is no integer); containers stay lax, as
    FastAPI validates parsed JSON, where every array is a list."""
    origin = get_origin(annotation)
    if origin is tuple:
        items = tuple(_strict(arg) if arg is not Ellipsis else arg for arg in get_args(annotation))
        return Annotated[tuple[items], Strict(False)]  # type: ignore[valid-type]
    if origin in (Union, types.UnionType):
        return Union[tuple(_strict(arg) for arg in get_args(annotation))]  # noqa: UP007
    if origin is Annotated:
        inner, *metadata = get_args(annotation)
        if inner is int:  # bounds first, then the check (see INTEGER_ONLY)
            return Annotated[(int, *metadata, INTEGER_ONLY)]
        return _annotated(_strict(inner), metadata)
    return _STRICT_SCALARS.get(annotation, annotation)


def _annotated(annotation: Any, metadata: list[Any]) -> Any:
    return Annotated[(annotation, *metadata)] if metadata else annotation


RATING_SCALES = [[low, high] for low in RATING_VALUES for high in RATING_VALUES if low < high]


def _star_range(value: tuple[float, float]) -> tuple[float, float]:
    if list(value) not in RATING_SCALES:
        raise ValueError("rating_scale must be [min, max]: two star values 0.5..5.0, min < max")
    return value


# min < max, a validator JSON Schema cannot state, as the list of the accepted pairs
RatingScale = Annotated[
    tuple[StrictFloat, StrictFloat],
    Strict(False),
    AfterValidator(_star_range),
    WithJsonSchema({"type": "array", "enum": RATING_SCALES}),
]
# A job's epochs go into an INTEGER column: the bound is the CLI's, well inside it.
MAX_EPOCHS = 100_000
_API_TYPES: dict[str, Any] = {
    "epochs": Annotated[int, Field(le=MAX_EPOCHS)],
    "rating_scale": RatingScale | None,
}


def _optional(description: str | None) -> Any:
    """May be omitted (the preset's value); null is no default the schema offers."""
    return Field(
        default=None,
        description=description,
        json_schema_extra=lambda schema: schema.pop("default", None),
    )


def _retrain_model() -> type[BaseModel]:
    """The body of POST /admin/retrain: `preset` and every ModelConfig field (so a new one
    needs no change here), each with its type and bounds, strict, omitted for the preset's."""
    from app.ml.config import PRESETS, ModelConfig

    preset = Literal[tuple(PRESETS)]  # type: ignore[valid-type]
    fields: dict[str, Any] = {"preset": (preset, _optional("model preset (default: TRAIN_PRESET)"))}
    share = Annotated[float, Field(gt=0.0, lt=1.0, strict=True)]
    fields["experiment_share"] = (
        share,
        _optional(
            "a model that passes the quality gate starts an experiment against the active "
            "one, this share of the users in its arm, instead of being activated"
        ),
    )
    for name, info in ModelConfig.model_fields.items():
        annotation = _API_TYPES.get(name, info.annotation)
        annotated = _strict(_annotated(annotation, info.metadata))
        fields[name] = (annotated, _optional(info.description))
    return create_model(
        "RetrainIn",
        __config__=ConfigDict(extra="forbid", protected_namespaces=(), allow_inf_nan=False),
        **fields,
    )


RetrainIn = _retrain_model()


class JobQueuedOut(BaseModel):
    job_id: str
    status: str


# ISO 8601 with the offset as Python writes it (+00:00), as the API always answered
Timestamp = Annotated[
    datetime,
    AfterValidator(as_aware),
    PlainSerializer(datetime.isoformat, return_type=str, when_used="json"),
    WithJsonSchema({"type": "string", "format": "date-time"}),
]


class JobOut(BaseModel):
    """A training_jobs row as the API shows it, read from the ORM object."""

    model_config = ConfigDict(from_attributes=True)

    job_id: str = Field(validation_alias="id")
    status: Literal["queued", "running", "succeeded", "failed"]
    trigger: Literal["admin", "schedule"] = Field(
        description="who queued the job: an admin (POST /admin/retrain) or the retrain schedule"
    )
    progress: Annotated[float, AfterValidator(lambda value: round(value, 4))]
    epoch: int
    epochs: int
    phase: Literal["network", "rating network", "item path", "blend", "refit"] | None = Field(
        description="the phase of training the job is in, or was in last (progress covers "
        "them all): the joint network's epochs, the rating network's, the item path, the "
        "blend, the refit on every rating"
    )
    metrics: dict[str, Any]
    model_version: str | None
    error: str | None
    overrides: dict[str, Any]
    created_at: Timestamp | None
    started_at: Timestamp | None
    finished_at: Timestamp | None


class DismissalOut(BaseModel):
    user_id: int
    movie_id: int
    title: str
    dismissed_at: Timestamp


class DismissalItem(BaseModel):
    movie_id: int
    title: str
    dismissed_at: Timestamp


class UserDismissalsOut(BaseModel):
    user_id: int
    items: list[DismissalItem] = Field(description="newest first")


class ModelVersionOut(BaseModel):
    """A model_versions row as the API shows it (never the artifact bytes)."""

    model_config = ConfigDict(from_attributes=True, protected_namespaces=())

    version: str
    created_at: Timestamp | None
    activated_at: Timestamp | None
    active: bool = Field(validation_alias="is_active")
    metrics: dict[str, Any] = Field(
        description="validation figures, the quality gate's verdict, and `history`: one "
        "{epoch, train_loss, valid_ndcg, valid_rmse, valid_mae} per epoch trained (absent "
        "on versions registered before it was recorded)"
    )
    config: dict[str, Any]
    data_size: dict[str, Any]
    data_fingerprint: str
    artifact_path: str
    artifact_bytes: int | None = Field(
        description="the artifact's size: what the version takes in the database (and in "
        "each host's MODEL_DIR cache); null on versions registered before it was recorded"
    )


class RouteStatsOut(BaseModel):
    method: str
    route: str = Field(description="the route template, e.g. /users/{user_id}/ratings")
    requests: int
    errors: int = Field(description="answers with a 5xx status")
    mean_ms: float | None
    p95_ms: float | None = Field(description="estimated from the latency histogram's buckets")


class RequestStatsOut(BaseModel):
    """HTTP figures since the process started, read from its Prometheus registry."""

    scope: Literal["process", "all workers"] = Field(
        description="this process's requests, or every worker's under `serve --workers N`"
    )
    total: int
    client_errors: int = Field(description="answers with a 4xx status")
    errors: int = Field(description="answers with a 5xx status")
    mean_ms: float | None
    p50_ms: float | None = Field(description="estimated from the latency histogram's buckets")
    p95_ms: float | None
    p99_ms: float | None
    routes: list[RouteStatsOut] = Field(description="each route template asked, busiest first")


class ServiceStatsOut(BaseModel):
    """What the admin dashboard shows about the service as a whole."""

    model_config = ConfigDict(protected_namespaces=())

    ratings: int
    users: int = Field(description="distinct users with at least one rating")
    movies: int = Field(description="catalog entries, hidden ones included")
    counts_estimated: bool = Field(
        description="true when PostgreSQL's planner statistics stood in for COUNT on a "
        "ratings table of a million rows or more"
    )
    active_version: str | None = Field(description="the model version the registry serves")
    served_version: str | None = Field(description="the version this process has loaded")
    jobs: dict[str, int] = Field(description="training jobs by status")
    requests: RequestStatsOut


Interval = Annotated[list[float], Field(min_length=2, max_length=2)]


class OnlineFiguresOut(BaseModel):
    """What impressions led to (app/services/online.py)."""

    impressions: int
    users: int = Field(description="distinct users among the impressions (sessions: none)")
    hits: int = Field(description="attributed ratings of 4 stars or more")
    hit_rate: float | None = Field(
        description="impressions followed by at least one hit / impressions (null: none)"
    )
    ci95: Interval | None = Field(description="Wilson's 95 % interval of hit_rate")
    mean_shown_rating: float | None = Field(description="mean of the attributed ratings")


class ModelOnlineOut(OnlineFiguresOut):
    version: str
    window_seconds: int = Field(description="ATTRIBUTION_WINDOW_SECONDS")


VersionName = Annotated[str, Field(min_length=1, max_length=64, pattern=NO_NUL)]


class ExperimentIn(StrictBody):
    candidate: VersionName = Field(description="the model version to try beside the active one")
    share: Annotated[float, Field(gt=0.0, lt=1.0, strict=True)] = Field(
        description="the share of users in the candidate arm"
    )


class ExperimentStopIn(StrictBody):
    promote: StrictBool = Field(description="activate the candidate as the experiment ends")


class ExperimentOut(BaseModel):
    """An experiments row as the API shows it."""

    model_config = ConfigDict(from_attributes=True, populate_by_name=True)

    experiment_id: str = Field(validation_alias="id")
    control: str = Field(description="the version active when it started")
    candidate: str
    share: float
    status: Literal["running", "stopped", "promoted"]
    started_at: Timestamp
    stopped_at: Timestamp | None


class ExperimentsOut(BaseModel):
    items: list[ExperimentOut] = Field(description="newest first")


class ArmOut(OnlineFiguresOut):
    arm: Literal["control", "candidate"]
    version: str


class DifferenceOut(BaseModel):
    hit_rate: float | None = Field(description="the candidate's hit rate minus the control's")
    ci95: Interval | None = Field(description="Newcombe's 95 % interval of the difference")


class ExperimentReportOut(ExperimentOut):
    arms: list[ArmOut]
    difference: DifferenceOut
    verdict: Literal["candidate better", "control better", "no difference", "not enough data"]
