"""Training use case: database ratings -> sparse matrix -> trainer -> artifact -> registry."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
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
    """The preset (the request's, else TRAIN_PRESET) with the overrides applied.

    Resolved once, where the request is made: a job stores the result, so the process
    that trains it never resolves again against its own settings.
    """
    overrides = dict(overrides or {})
    overrides.pop("experiment_share", None)  # what to do with the model, not how to train it
    preset = overrides.pop("preset", None) or training.train_preset
    return config_from(preset, **overrides)


@dataclass(frozen=True)
class TrainingData:
    """What the registry records of the ratings a model trained on: taken before the
    split, so that the whole matrix (300 MB at 25M ratings) is not kept through training."""

    fingerprint: str
    size: dict[str, int]
    movies: IdMap

    @classmethod
    def of(cls, matrix: RatingMatrix) -> TrainingData:
        users, movies = matrix.shape
        size = {"users": users, "movies": movies, "ratings": matrix.nnz}
        return cls(artifacts.data_fingerprint(matrix), size, matrix.movies)


@dataclass
class TrainedModel:
    """The train step's result, all the publish step needs."""

    result: TrainResult
    config: ModelConfig  # what was trained: the search's winner when there was a search
    data: TrainingData
    validation: Validation  # the held-out split, for the quality gate
    metrics: dict[str, Any]
    started: float  # perf_counter at the start, for the outcome's seconds


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
    """Train on everything in the database, then publish: save, register, gate, activate.

    ``preload_wait``: seconds a model that replaces an active one stays registered before
    its activation, for the serving processes to preload it (`preload_seconds`; the job
    process and `saerec train` wait, a caller with no server beside it need not).

    ``experiment_share``: a model that passes the gate starts an experiment against the
    active one, that share of the users in its arm, instead of being activated.

    Under torchrun (`saerec train --distributed`) every rank trains on its shard of the
    users and only rank 0 publishes and returns an outcome; the others return None.
    """
    trained = train(training, engine, config, on_epoch, on_trial, budget_seconds, on_phase)
    if not DistributedContext.current().is_main:
        return None
    return publish(training, engine, trained, preload_wait, experiment_share)


def train(
    training: Settings,
    engine: Engine,
    config: ModelConfig,
    on_epoch: Callable[[EpochReport], None] | None = None,
    on_trial: TrialCallback | None = None,
    budget_seconds: float | None = None,
    on_phase: Callable[[PhaseReport], None] | None = None,
) -> TrainedModel:
    """Fit a model on the database's ratings; nothing is saved or registered.

    With a budget (``TRAIN_BUDGET_SECONDS`` or ``budget_seconds``) the configuration is
    searched first and the best trial is the one returned.
    """
    started = time.perf_counter()
    matrix = load_rating_matrix(engine)
    data = TrainingData.of(matrix)
    train_part, valid = holdout_split(matrix, config.validation_fraction, config.seed)
    del matrix  # its ratings live on in the two parts
    log.info("training_started", **data.size)
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
    metrics: dict[str, Any] = {k: _plain(v) for k, v in result.metrics.items()}
    if search_report is not None:
        metrics["search"] = _plain(search_report)
    validation = make_validation(train_part, valid, config)
    return TrainedModel(result, config, data, validation, metrics, started)


def publish(
    training: Settings,
    engine: Engine,
    trained: TrainedModel,
    preload_wait: float = 0.0,
    experiment_share: float | None = None,
) -> TrainingOutcome:
    """Save the artifact and its report, register it, and activate it if it passes the gate."""
    data = trained.data
    meta = artifacts.ArtifactMeta(
        version=artifacts.new_version_id(),
        data_fingerprint=data.fingerprint,
        data_size=dict(data.size),
        metrics=trained.metrics,
    )
    store = artifacts.ArtifactStore(training.model_dir)
    saved = store.save(trained.result.model, data.movies, meta)
    report_paths = _write_report(saved.path, trained.result, meta.metrics)
    candidate = Candidate(trained.result.model, data.movies, trained.validation)
    history = epoch_history(trained.result.history)
    outcome = _register_and_gate(
        training,
        engine,
        store,
        meta,
        trained.config,
        saved,
        candidate,
        history,
        preload_wait,
        experiment_share,
    )
    outcome.seconds = time.perf_counter() - trained.started
    outcome.report_paths = report_paths
    return outcome


def _plain(value: Any) -> Any:
    """JSON-safe metrics: numpy scalars as Python ones, NaN (not measured) as None."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    value = value.item() if isinstance(value, np.generic) else value
    return None if isinstance(value, float) and math.isnan(value) else value


HISTORY_FIELDS = ("epoch", "train_loss", "valid_ndcg", "valid_rmse", "valid_mae")


def epoch_history(history: Sequence[EpochReport]) -> list[dict[str, Any]]:
    """Each epoch's training loss and validation figures, rounded, for the registry row.

    The report files beside the artifact hold the same curve, but on the disk of the host
    that trained; the row is what every API process (and the admin dashboard) can read.
    """
    return [_plain({k: _rounded(getattr(report, k)) for k in HISTORY_FIELDS}) for report in history]


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


@dataclass
class Candidate:
    """A freshly trained model with the validation split it never trained on."""

    model: HybridModel
    movies: IdMap
    validation: Validation


def quality_gate(
    session: Session,
    training: Settings,
    candidate: Candidate,
    incumbent: ModelVersion | None,
) -> dict[str, Any]:
    """Score the candidate and the active model on the candidate's validation split.

    The split was held out of the candidate's training. Each model is scored as validated
    (`HybridModel.as_validated`): its rating parts before their refit on every rating,
    which included this split. The active model may still have trained on those ratings
    (its own split differed when the data did), which can only favour it, so the gate errs
    on the side of keeping what serves. Neither NDCG@10 may drop by more than the relative
    NDCG margin nor RMSE rise by more than the RMSE margin.
    """
    mine = validation_figures(candidate.model.as_validated(), candidate.validation)
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
        loaded.model.as_validated(), candidate.validation.remapped(candidate.movies, loaded.movies)
    )
    verdict["active"] = {"version": incumbent.version, **_figures(theirs)}
    return {**verdict, **_compare(mine, theirs, training)}


def _figures(figures: dict[str, float]) -> dict[str, float]:
    return {k: round(float(figures[k]), 5) for k in ("ndcg@10", "rmse") if k in figures}


def _compare(
    mine: dict[str, float], theirs: dict[str, float], training: Settings
) -> dict[str, Any]:
    ndcg_floor = theirs.get("ndcg@10", 0.0) * (1.0 - training.quality_gate_ndcg_margin)
    rmse_ceiling = theirs.get("rmse", np.inf) + training.quality_gate_margin
    problems = []
    if mine.get("ndcg@10", 0.0) < ndcg_floor:
        problems.append(f"NDCG@10 {mine.get('ndcg@10', 0.0):.4f} < {ndcg_floor:.4f}")
    if mine.get("rmse", np.inf) > rmse_ceiling:
        problems.append(f"RMSE {mine.get('rmse', np.inf):.4f} > {rmse_ceiling:.4f}")
    if problems:
        return {"passed": False, "reason": "worse than the active model: " + "; ".join(problems)}
    return {"passed": True, "reason": "NDCG@10 and RMSE within the margins of the active model"}


def _register_and_gate(
    training: Settings,
    engine: Engine,
    store: artifacts.ArtifactStore,
    meta: artifacts.ArtifactMeta,
    config: ModelConfig,
    saved: artifacts.SavedArtifact,
    candidate: Candidate,
    history: list[dict[str, Any]] | None = None,
    preload_wait: float = 0.0,
    experiment_share: float | None = None,
) -> TrainingOutcome:
    """The gate's verdict, the new row and the pruning in one transaction; the activation
    in it too, unless the model replaces an active one and ``preload_wait`` > 0: then it
    is activated that much later, in a second transaction, if the active version is
    still the one it was gated against: in between every serving process's poll preloads
    it (`ModelLifecycle.refresh`), so the first answers after the switch wait for no load.

    With ``experiment_share`` and an active version, a model that passes starts an
    experiment against it in the same transaction instead (none if one is running).

    The per-epoch history goes on the row only: the outcome (printed by `saerec train`,
    copied onto the job) keeps the summary figures.
    """
    factory = create_session_factory(engine)
    with transaction(factory) as session:
        incumbent = registry.active_version(session)
        incumbent_id = incumbent.version if incumbent is not None else None
        verdict = quality_gate(session, training, candidate, incumbent)
        # the verdict goes on the row (the artifact was written before the gate ran)
        meta = replace(meta, metrics={**meta.metrics, "quality_gate": verdict})
        row_meta = replace(meta, metrics={**meta.metrics, "history": history or []})
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


PRELOAD_MAX_SECONDS = 10.0


def preload_seconds(settings: Settings) -> float:
    """How long a registered replacement waits for the serving processes to preload it:
    two of their polls and a second for the load, at most PRELOAD_MAX_SECONDS."""
    return min(2 * settings.model_poll_seconds + 1.0, PRELOAD_MAX_SECONDS)
