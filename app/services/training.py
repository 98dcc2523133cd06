"""Training use case: database ratings -> sparse matrix -> trainer -> artifact -> registry."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sqlalchemy import Engine, select

from app.config import Settings
from app.db import create_session_factory, transaction
from app.ml import artifacts
from app.ml.data import RatingChunk, RatingMatrix, build_rating_matrix, holdout_split
from app.ml.distributed import DistributedContext
from app.ml.model import ModelConfig, config_from
from app.ml.train import EpochReport, train_model
from app.models import Rating
from app.observability import get_logger
from app.services import registry

log = get_logger("saerec.training")
CHUNK_ROWS = 200_000


class NotEnoughDataError(RuntimeError):
    """Training needs some ratings; say so instead of failing deep inside torch."""


@dataclass
class TrainingOutcome:
    version: str
    metrics: dict[str, Any]
    activated: bool
    gate: str
    seconds: float
    data_size: dict[str, int] = field(default_factory=dict)
    report_paths: dict[str, str] = field(default_factory=dict)


def stream_rating_chunks(engine: Engine, chunk_rows: int = CHUNK_ROWS) -> Iterator[RatingChunk]:
    """Server-side cursor in fixed-size partitions: memory stays flat at 20M ratings."""
    query = select(Rating.user_id, Rating.movie_id, Rating.rating)
    with engine.connect() as conn:
        result = conn.execution_options(stream_results=True, yield_per=chunk_rows).execute(query)
        for rows in result.partitions():
            users, movies, ratings = zip(*rows, strict=True)
            yield (
                np.fromiter(users, dtype=np.int64, count=len(rows)),
                np.fromiter(movies, dtype=np.int64, count=len(rows)),
                np.fromiter(ratings, dtype=np.float32, count=len(rows)),
            )


def load_rating_matrix(engine: Engine) -> RatingMatrix:
    matrix = build_rating_matrix(stream_rating_chunks(engine))
    if matrix.nnz < 10 or matrix.shape[0] < 2:
        raise NotEnoughDataError(
            f"training needs ratings from at least 2 users; the database has {matrix.nnz}"
        )
    return matrix


def resolve_config(settings: Settings, overrides: dict[str, Any] | None = None) -> ModelConfig:
    overrides = dict(overrides or {})
    preset = overrides.pop("preset", None) or settings.train_preset
    return config_from(preset, **overrides)


def train_and_register(
    settings: Settings,
    engine: Engine,
    config: ModelConfig,
    on_epoch: Callable[[EpochReport], None] | None = None,
) -> TrainingOutcome | None:
    """Train on everything in the database, save a versioned artifact, gate and activate.

    Under torchrun (`saerec train --distributed`) every rank trains on its shard of the
    users and only rank 0 returns an outcome; the others return None.
    """
    started = time.perf_counter()
    matrix = load_rating_matrix(engine)
    train, valid = holdout_split(matrix, config.validation_fraction, config.seed)
    log.info("training_started", users=matrix.shape[0], movies=matrix.shape[1], nnz=matrix.nnz)
    result = train_model(
        train,
        valid,
        config,
        on_epoch=on_epoch,
        device=settings.device,
        threads=settings.torch_threads,
    )
    if not DistributedContext.current().is_main:
        return None  # under torchrun, rank 0 alone evaluates, saves and registers
    version = artifacts.new_version_id()
    data_size = {"users": matrix.shape[0], "movies": matrix.shape[1], "ratings": matrix.nnz}
    fingerprint = artifacts.data_fingerprint(matrix)
    metrics = {k: _plain(v) for k, v in result.metrics.items()}
    metrics["best_epoch"] = result.best_epoch
    metrics["train_seconds"] = round(result.seconds, 3)
    path = artifacts.save_artifact(
        settings.model_dir / version,
        version,
        result.model,
        config,
        matrix.movies,
        result.rating_scale,
        metrics,
        fingerprint,
        data_size,
    )
    report_paths = _write_report(path, result, metrics)
    outcome = _register_and_gate(
        settings, engine, version, config, metrics, data_size, fingerprint, path
    )
    outcome.seconds = time.perf_counter() - started
    outcome.report_paths = report_paths
    return outcome


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def _write_report(path: Any, result: Any, metrics: dict[str, Any]) -> dict[str, str]:
    from app.ml import report

    try:
        written = report.write_report(path, metrics, result.history)
    except Exception as exc:  # a missing plot must not lose a trained model
        log.warning("report_failed", error=str(exc))
        return {}
    return {name: str(p) for name, p in written.items() if p is not None}


def _register_and_gate(
    settings: Settings,
    engine: Engine,
    version: str,
    config: ModelConfig,
    metrics: dict[str, Any],
    data_size: dict[str, int],
    fingerprint: str,
    path: Any,
) -> TrainingOutcome:
    with transaction(create_session_factory(engine)) as session:
        incumbent = registry.active_version(session)
        registry.register_version(
            session,
            version=version,
            config=config.model_dump(mode="json"),
            metrics=metrics,
            data_size=data_size,
            data_fingerprint=fingerprint,
            artifact_path=path,
        )
        passed, reason = registry.passes_quality_gate(
            metrics, incumbent.metrics if incumbent else None, settings.quality_gate_margin
        )
        if passed:
            registry.activate(session, version)
        pruned = registry.prune_versions(session, settings.keep_model_versions)
    log.info("model_registered", version=version, activated=passed, gate=reason, pruned=pruned)
    return TrainingOutcome(version, metrics, passed, reason, 0.0, data_size)
