"""Request and response bodies; validation of every input happens here."""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator

from app.models import RATING_VALUES

MAX_ID = 2**63 - 1
# PostgreSQL text (and JSONB) cannot hold NUL: refuse it at the edge as a 422, not a 500.
NO_NUL = r"^[^\x00]*$"
PositiveId = Annotated[int, Field(gt=0, le=MAX_ID, strict=False)]
Genre = Annotated[str, Field(min_length=1, max_length=64, pattern=NO_NUL)]


class StrictBody(BaseModel):
    """Unknown fields are rejected: a typo must not silently become a default.

    NaN and Infinity (which Python's JSON parser accepts) are rejected in every float.
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class RatingIn(StrictBody):
    user_id: PositiveId
    movie_id: PositiveId
    rating: float = Field(
        description="0.5 to 5.0 in steps of 0.5",
        strict=True,  # "4" is a string, not a rating
        json_schema_extra={"minimum": 0.5, "maximum": 5.0, "multipleOf": 0.5},
    )
    timestamp: int | None = Field(default=None, ge=0, le=MAX_ID, description="unix seconds")

    @field_validator("rating")
    @classmethod
    def _half_stars(cls, value: float) -> float:
        if not math.isfinite(value) or value not in RATING_VALUES:
            raise ValueError(
                "rating must be one of 0.5, 1.0, ..., 5.0 (half stars; 0 is not a rating)"
            )
        return value


class RatingOut(BaseModel):
    user_id: int
    movie_id: int
    rating: float
    timestamp: int


class RatingBatchIn(StrictBody):
    ratings: list[dict[str, Any]] = Field(min_length=1)


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
    movie_id: PositiveId
    title: str = Field(min_length=1, max_length=500, pattern=NO_NUL)
    genres: list[Genre] = Field(default_factory=list, max_length=50)
    year: int | None = Field(default=None, ge=1800, le=3000)

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


class MoviesPage(BaseModel):
    total: int
    items: list[MovieOut]


class HealthOut(BaseModel):
    status: str


class ReadinessOut(BaseModel):
    status: str
    database: str
    model_version: str | None = None
    detail: str | None = None
    pid: int | None = Field(default=None, description="the answering process (several workers)")


class RecommendationItem(BaseModel):
    movie_id: int
    title: str
    genres: list[str]
    score: float = Field(description="ranking score: higher means recommend first")
    predicted_rating: float | None = Field(
        default=None, description="the model's predicted stars (autoencoder strategy only)"
    )


class RecommendationsOut(BaseModel):
    user_id: int
    model_version: str | None
    strategy: Literal["autoencoder", "popular"]
    items: list[RecommendationItem]


class PredictionItem(BaseModel):
    movie_id: int
    predicted_rating: float
    known_to_model: bool = Field(
        description="false for movies added after training: the training mean is returned"
    )


class PredictionsOut(BaseModel):
    user_id: int
    model_version: str
    items: list[PredictionItem]


def _retrain_model() -> type[BaseModel]:
    """Every ModelConfig field, optional, plus `preset`: the body of POST /admin/retrain."""
    from app.ml.model import ModelConfig

    fields: dict[str, Any] = {"preset": (str | None, Field(default=None, max_length=64))}
    for name, info in ModelConfig.model_fields.items():
        fields[name] = (info.annotation | None, Field(default=None, description=info.description))
    return create_model(
        "RetrainIn",
        __config__=ConfigDict(extra="forbid", protected_namespaces=(), allow_inf_nan=False),
        **fields,
    )


RetrainIn = _retrain_model()


class JobQueuedOut(BaseModel):
    job_id: str
    status: str


class JobOut(BaseModel):
    job_id: str
    status: Literal["queued", "running", "succeeded", "failed"]
    progress: float
    epoch: int
    epochs: int
    metrics: dict[str, Any]
    model_version: str | None
    error: str | None
    overrides: dict[str, Any]
    created_at: str | None
    started_at: str | None
    finished_at: str | None


class ModelVersionOut(BaseModel):
    version: str
    created_at: str | None
    activated_at: str | None
    active: bool
    metrics: dict[str, Any]
    config: dict[str, Any]
    data_size: dict[str, Any]
    data_fingerprint: str
    artifact_path: str
