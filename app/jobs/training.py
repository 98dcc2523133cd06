"""Training use case: database ratings -> sparse matrix -> trainer -> artifact -> registry."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from app.config import Settings
from app.db import create_session_factory, transaction
from app.ml import artifacts
from app.ml.blend import Validation, validation_figures
from app.ml.config import ModelConfig, config_from
from app.ml.data import IdMap, RatingChunk, RatingMatrix, build_rating_matrix, holdout_split
from app.ml.distributed import DistributedContext
from app.ml.hybrid import HybridModel
from app.ml.train import EpochReport, PhaseReport, TrainResult, make_validation, train_model
from app.ml.tuning import TrialCallback, search
from app.models import ModelVersion, Rating
from app.observability import get_logger
from app.services import experiments, registry

log = get_logger("saerec.training")
CHUNK_ROWS = 200_000
HISTORY_FIELDS = ("epoch", "train_loss", "valid_ndcg", "valid_rmse", "valid_mae")
PRELOAD_MAX_SECONDS = 10.0


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
    experiment_id: str | None = None  # started instead of an activation (experiment_share)


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


def resolve_config(training: Settings, overrides: dict[str, Any] | None = None) -> ModelConfig:
    """The preset (the request's, else TRAIN_PRESET) with the overrides applied: resolved
    where the request is made, so the job stores it and its process never resolves again."""
    overrides = dict(overrides or {})
    overrides.pop("experiment_share", None)  # what to do with the model, not how to train it
    preset = overrides.pop("preset", None) or training.train_preset
    return config_from(preset, **overrides)


def train_and_register(
    training: Settings,
    engine: Engine,
    config: ModelConfig,
    on_epoch: Callable[[EpochReport], None] | None = None,
    on_trial: TrialCallback | None = None,
    budget_seconds: float | None = None,
    preload_wait: float = 0.0,
    on_phase: Callable[[PhaseReport], None] | None = None,
    experiment_share: float | None = None,
) -> TrainingOutcome | None:
    """Train on everything in the database (a search first within a budget), then save,
    register, gate and activate (see `_register_and_gate`).

    Under torchrun every rank trains its shard of the users; only rank 0 publishes and
    returns an outcome, the others None.
    """
    started = time.perf_counter()
    matrix = load_rating_matrix(engine)
    users, n_movies = matrix.shape
    size = {"users": users, "movies": n_movies, "ratings": matrix.nnz}
    fingerprint, movies = artifacts.data_fingerprint(matrix), matrix.movies
    train_part, valid = holdout_split(matrix, config.validation_fraction, config.seed)
    del matrix  # not kept through training (300 MB at 25M ratings): it lives on in the parts
    log.info("training_started", **size)
    budget = training.train_budget_seconds if budget_seconds is None else budget_seconds
    search_report: dict[str, Any] | None = None
    if budget > 0 and not DistributedContext.current().active:
        found = search(
            train_part, valid, config, budget, on_trial, training.device, training.torch_threads
        )
        result, config, search_report = found.result, found.config, found.report()
    else:
        result = train_model(
            train_part,
            valid,
            config,
            on_epoch,
            device=training.device,
            threads=training.torch_threads,
            deadline=time.monotonic() + training.train_max_seconds,
            on_phase=on_phase,
        )
    if not DistributedContext.current().is_main:
        return None
    metrics: dict[str, Any] = artifacts.plain(result.metrics)
    if search_report is not None:
        metrics["search"] = artifacts.plain(search_report)
    validation = make_validation(train_part, valid, config)
    meta = artifacts.ArtifactMeta(artifacts.new_version_id(), fingerprint, size, metrics)
    store = artifacts.ArtifactStore(training.model_dir)
    saved = store.save(result.model, movies, meta)
    report_paths = _write_report(saved.path, result, meta.metrics)
    history = epoch_history(result.history)
    outcome = _register_and_gate(
        training,
        engine,
        store,
        meta,
        config,
        saved,
        (result.model, movies, validation),
        history,
        preload_wait,
        experiment_share,
    )
    outcome.seconds = time.perf_counter() - started
    outcome.report_paths = report_paths
    return outcome


def epoch_history(history: list[EpochReport]) -> list[dict[str, Any]]:
    """Each epoch's figures for the registry row: the report files hold the same curve, but
    on the disk of the host that trained; the row is what every process can read."""
    return [
        artifacts.plain({k: _rounded(getattr(report, k)) for k in HISTORY_FIELDS})
        for report in history
    ]


def _rounded(value: Any) -> Any:
    return round(value, 5) if isinstance(value, float) else value


def _write_report(path: Path, result: TrainResult, metrics: dict[str, Any]) -> dict[str, str]:
    from app.ml import report

    try:
        written = report.write_report(path, metrics, result.history)
    except Exception as exc:  # a missing plot must not lose a trained model
        log.warning("report_failed", error=str(exc))
        return {}
    return {name: str(p) for name, p in written.items() if p is not None}


Candidate = tuple[HybridModel, IdMap, Validation]
"""A freshly trained model, its movies and the validation split it never trained on."""


def quality_gate(
    session: Session, training: Settings, candidate: Candidate, incumbent: ModelVersion | None
) -> dict[str, Any]:
    """Score the candidate and the active model on the candidate's validation split, each as
    validated (`HybridModel.as_validated`: its rating parts before the refit that included
    this split). The active model may have trained on those ratings, which can only favour
    it: the gate errs on the side of what serves. NDCG@10 may drop by at most the relative
    NDCG margin, RMSE rise by at most the RMSE margin."""
    model, movies, validation = candidate
    mine = validation_figures(model.as_validated(), validation)
    verdict: dict[str, Any] = {"candidate": _figures(mine), "active": None}
    if incumbent is None:
        return {**verdict, "passed": True, "reason": "no active model to compare with"}
    try:
        loaded = artifacts.load_artifact(
            registry.local_artifact(session, incumbent, training.model_dir)
        )
    except artifacts.ArtifactError as exc:
        return {**verdict, "passed": True, "reason": f"the active model cannot load: {exc}"}
    theirs = validation_figures(
        loaded.model.as_validated(), validation.remapped(movies, loaded.movies)
    )
    verdict["active"] = {"version": incumbent.version, **_figures(theirs)}
    ndcg_floor = theirs.get("ndcg@10", 0.0) * (1.0 - training.quality_gate_ndcg_margin)
    rmse_ceiling = theirs.get("rmse", np.inf) + training.quality_gate_margin
    problems = []
    if mine.get("ndcg@10", 0.0) < ndcg_floor:
        problems.append(f"NDCG@10 {mine.get('ndcg@10', 0.0):.4f} < {ndcg_floor:.4f}")
    if mine.get("rmse", np.inf) > rmse_ceiling:
        problems.append(f"RMSE {mine.get('rmse', np.inf):.4f} > {rmse_ceiling:.4f}")
    if problems:
        reason = "worse than the active model: " + "; ".join(problems)
        return {**verdict, "passed": False, "reason": reason}
    reason = "NDCG@10 and RMSE within the margins of the active model"
    return {**verdict, "passed": True, "reason": reason}


def _figures(figures: dict[str, float]) -> dict[str, float]:
    return {k: round(float(figures[k]), 5) for k in ("ndcg@10", "rmse") if k in figures}


def _register_and_gate(
    training: Settings,
    engine: Engine,
    store: artifacts.ArtifactStore,
    meta: artifacts.ArtifactMeta,
    config: ModelConfig,
    saved: artifacts.SavedArtifact,
    candidate: Candidate,
    history: list[dict[str, Any]],
    preload_wait: float,
    experiment_share: float | None,
) -> TrainingOutcome:
    """The gate's verdict, the new row and the pruning in one transaction, with the
    activation, unless the model replaces an active one and ``preload_wait`` > 0: then it is
    activated that much later if the active version is still the one it was gated against,
    every serving process's poll having preloaded it meanwhile (`ModelLifecycle.refresh`).
    With ``experiment_share`` and an active version, a model that passes starts an experiment
    in the same transaction instead. The per-epoch history goes on the row only."""
    factory = create_session_factory(engine)
    with transaction(factory) as session:
        incumbent = registry.active_version(session)
        incumbent_id = incumbent.version if incumbent is not None else None
        verdict = quality_gate(session, training, candidate, incumbent)
        # the verdict goes on the row (the artifact was written before the gate ran)
        meta = replace(meta, metrics={**meta.metrics, "quality_gate": verdict})
        row_meta = replace(meta, metrics={**meta.metrics, "history": history})
        registry.register_version(
            session, row_meta, config.model_dump(mode="json"), saved, training.artifact_chunk_bytes
        )
        trying = experiment_share is not None and incumbent_id is not None
        later = preload_wait > 0 and incumbent_id is not None and not trying
        activated = bool(verdict["passed"]) and not later and not trying
        if activated:
            registry.activate(session, meta.version)
        experiment_id = None
        if verdict["passed"] and trying and experiment_share is not None:
            experiment_id = experiments.start_if_none_running(
                session, meta.version, experiment_share
            )
        pruned = registry.prune_versions(session, store, training.keep_model_versions)
    if verdict["passed"] and later:
        time.sleep(preload_wait)
        with transaction(factory) as session:
            if registry.active_version_id(session) == incumbent_id:
                registry.activate(session, meta.version)
                activated = True
            else:
                verdict = {"passed": False, "reason": "another version was activated meanwhile"}
    log.info(
        "model_registered",
        version=meta.version,
        activated=activated,
        gate=verdict["reason"],
        pruned=pruned,
    )
    return TrainingOutcome(
        meta.version,
        meta.metrics,
        activated,
        verdict["reason"],
        0.0,
        meta.data_size,
        experiment_id=experiment_id,
    )


def preload_seconds(settings: Settings) -> float:
    """How long a registered replacement waits for the serving processes to preload it:
    two of their polls and a second for the load, at most PRELOAD_MAX_SECONDS."""
    return min(2 * settings.model_poll_seconds + 1.0, PRELOAD_MAX_SECONDS)
