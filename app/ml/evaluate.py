"""The one evaluation protocol (docs/evaluation.md) applied to the model and the baselines.

Training sees only the training part (validation carved out of it), the test part is used
once; the movie axis is the catalog. EASE's lambda is tuned on the model's validation split,
so the model meets EASE at its best.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from app.ml.baselines import BASELINES, EASE, Baseline, Bias
from app.ml.config import ModelConfig
from app.ml.data import (
    HOLDOUT_FRACTION,
    HOLDOUT_SEED,
    RatingChunk,
    RatingMatrix,
    build_rating_matrix,
    holdout_split,
    per_user_holdout,
    read_split_file,
)
from app.ml.metrics import Scorer, evaluate_scorer
from app.ml.scoring import FoldInScorer
from app.ml.train import EpochReport, TrainResult, train_model
from app.movielens.ratings import Ratings, read_movielens

MODEL_ROW = "stacked autoencoder"
BIAS_ROW = "user + movie bias"
TUNED_EASE_ROW = "EASE (tuned lambda)"
EASE_LAMBDAS = (100.0, 250.0, 500.0, 1000.0, 2000.0)
"""EASE's lambda is chosen from these on the validation split carved out of training."""
COLUMNS: list[tuple[str, str]] = [
    ("RMSE", "rmse"),
    ("MAE", "mae"),
    ("NDCG@10", "ndcg@10"),
    ("P@10", "precision@10"),
    ("R@10", "recall@10"),
    ("HitRate@10", "hit_rate@10"),
    ("Coverage@10", "coverage@10"),
    ("fallback", "fallback_ratings"),
    ("train time", "train_seconds"),
]


@dataclass
class FittedModel:
    scorer: Scorer
    rating_scale: tuple[float, float]
    seconds: float
    info: dict[str, Any] = field(default_factory=dict)
    valid: dict[str, float] = field(default_factory=dict)


def fit_model(
    train: RatingMatrix,
    valid: RatingMatrix,
    config: ModelConfig,
    on_epoch: Callable[[EpochReport], None] | None = None,
    threads: int | None = None,
) -> FittedModel:
    result: TrainResult = train_model(train, valid, config, on_epoch=on_epoch, threads=threads)
    info = {
        "best_epoch": result.best_epoch,
        "rate_epoch": result.metrics.get("rate_epoch"),
        "epochs_run": len(result.history),
    }
    return FittedModel(
        FoldInScorer(result.model).score_rows,
        result.rating_scale,
        result.seconds,
        info,
        result.metrics,
    )


def tune_ease(
    train: RatingMatrix, valid: RatingMatrix, lambdas: Sequence[float] = EASE_LAMBDAS
) -> tuple[float, dict[float, float]]:
    """The EASE lambda with the best validation NDCG@10 (ties: the smaller lambda)."""
    valid_chunk = valid.to_chunk()
    ndcg = {
        float(lam): evaluate_scorer(EASE(lam).fit(train), train, valid_chunk).get("ndcg@10", 0.0)
        for lam in lambdas
    }
    best = max(ndcg, key=lambda lam: (ndcg[lam], -lam))
    return best, ndcg


def _baseline_rows(
    full: RatingMatrix,
    test: RatingChunk,
    fit_train: RatingMatrix,
    fit_valid: RatingMatrix,
    makers: dict[str, Callable[[], Baseline]],
) -> dict[str, dict[str, Any]]:
    """Every baseline fitted on the whole training part, plus EASE with a tuned lambda."""
    rows: dict[str, dict[str, Any]] = {}
    fitted_ease: dict[float, str] = {}  # lambda -> row, so the tuned refit can be skipped
    for name, make in makers.items():
        baseline = make().fit(full)
        rows[name] = evaluate_scorer(baseline, full, test)
        rows[name]["train_seconds"] = baseline.fit_seconds
        if isinstance(baseline, EASE):
            fitted_ease[float(baseline.lam)] = name
    started = time.perf_counter()
    lam, valid_ndcg = tune_ease(fit_train, fit_valid)
    if lam in fitted_ease:
        row: dict[str, Any] = dict(rows[fitted_ease[lam]])
        started -= row["train_seconds"]
    else:
        row = dict(evaluate_scorer(EASE(lam).fit(full), full, test))
    row["train_seconds"] = time.perf_counter() - started  # the search and the refit
    row["lambda"] = lam
    row["valid_ndcg"] = {f"{k:g}": v for k, v in valid_ndcg.items()}
    rows[TUNED_EASE_ROW] = row
    return rows


def evaluate_train_test(
    full: RatingMatrix,
    test: RatingChunk,
    config: ModelConfig,
    baselines: bool = True,
    baseline_makers: dict[str, Callable[[], Baseline]] | None = None,
    on_epoch: Callable[[EpochReport], None] | None = None,
    threads: int | None = None,
) -> dict[str, Any]:
    """Train on ``full`` (validation carved out of it), score ``test``: model and baselines."""
    train, valid = holdout_split(full, config.validation_fraction, config.seed)
    fitted = fit_model(train, valid, config, on_epoch=on_epoch, threads=threads)
    rows: dict[str, dict[str, Any]] = {}
    if baselines:
        rows = _baseline_rows(full, test, train, valid, baseline_makers or BASELINES)
    row = evaluate_scorer(fitted.scorer, full, test, scale=fitted.rating_scale)
    row.update(train_seconds=fitted.seconds, **fitted.info)
    rows[MODEL_ROW] = row
    return {
        "n_train": full.nnz,
        "n_test": int(test[0].size),
        "n_users": full.shape[0],
        "n_movies": full.shape[1],
        "rows": rows,
        "valid": fitted.valid,
    }


def file_split(base_path: str | Path, test_path: str | Path) -> tuple[RatingMatrix, RatingChunk]:
    """A ``.base``/``.test`` pair as (train matrix over the catalog, test ratings)."""
    base, test = read_split_file(base_path), read_split_file(test_path)
    catalog = np.union1d(base[1], test[1])
    return build_rating_matrix([base], movie_ids=catalog), test


def holdout(
    ratings: Ratings, seed: int = HOLDOUT_SEED, fraction: float = HOLDOUT_FRACTION
) -> tuple[RatingMatrix, RatingChunk]:
    """docs/evaluation.md's per-user holdout as (train matrix over the catalog, test ratings)."""
    train_chunk, test = per_user_holdout(
        ratings.users, ratings.movies, ratings.ratings, ratings.timestamps, seed, fraction
    )
    catalog = np.union1d(ratings.catalog, ratings.movies)
    return build_rating_matrix([train_chunk], movie_ids=catalog), test


def holdout_label(
    ratings: Ratings, seed: int = HOLDOUT_SEED, fraction: float = HOLDOUT_FRACTION
) -> str:
    return f"{ratings.name or 'data set'} per-user holdout (seed {seed}, {fraction:.0%})"


def evaluate_split(
    base_path: str | Path,
    test_path: str | Path,
    config: ModelConfig,
    baselines: bool = True,
    on_epoch: Callable[[EpochReport], None] | None = None,
    threads: int | None = None,
) -> dict[str, Any]:
    """Train on base, score base+test with the protocol; rows for the model and baselines."""
    full, test = file_split(base_path, test_path)
    result = evaluate_train_test(full, test, config, baselines, on_epoch=on_epoch, threads=threads)
    return {"split": Path(base_path).stem, **result}


def holdout_baselines() -> dict[str, Callable[[], Baseline]]:
    """docs/evaluation.md's per-user-holdout baselines: as for u1, but bias shrinkage 10 on both."""
    makers = dict(BASELINES)
    makers[BIAS_ROW] = lambda: Bias(reg_movie=10.0, reg_user=10.0)
    return makers


def evaluate_holdout(
    data: str | Path | Ratings,
    config: ModelConfig,
    baselines: bool = True,
    seed: int = HOLDOUT_SEED,
    fraction: float = HOLDOUT_FRACTION,
    threads: int | None = None,
) -> dict[str, Any]:
    """docs/evaluation.md's per-user holdout of any data set (a path or loaded ratings)."""
    ratings = data if isinstance(data, Ratings) else read_movielens(data)
    full, test = holdout(ratings, seed, fraction)
    result = evaluate_train_test(
        full,
        test,
        config,
        baselines,
        holdout_baselines(),
        threads=threads,
    )
    return {"split": holdout_label(ratings, seed, fraction), "skipped": ratings.skipped, **result}


def evaluate_splits(
    directory: str | Path,
    config: ModelConfig,
    splits: Sequence[str] = ("u1", "u2", "u3", "u4", "u5"),
    baselines: bool = True,
    threads: int | None = None,
) -> dict[str, Any]:
    """evaluate_split on each ``<split>.base/.test`` in ``directory`` plus the mean rows."""
    directory = Path(directory)
    per_split = {
        name: evaluate_split(
            directory / f"{name}.base",
            directory / f"{name}.test",
            config,
            baselines=baselines,
            threads=threads,
        )
        for name in splits
    }
    return {
        "splits": per_split,
        "rows": mean_rows([r["rows"] for r in per_split.values()]),
        "split": "mean of " + "-".join(splits),
    }


def mean_rows(all_rows: list[dict[str, dict[str, Any]]]) -> dict[str, dict[str, float]]:
    """Metric-wise means of the same rows over several splits (numeric fields only)."""
    out: dict[str, dict[str, float]] = {}
    for name in all_rows[0]:
        keys = set.intersection(*(set(rows[name]) for rows in all_rows))
        number = int | float | np.integer | np.floating
        numeric = (k for k in keys if all(isinstance(rows[name][k], number) for rows in all_rows))
        out[name] = {k: float(np.mean([rows[name][k] for rows in all_rows])) for k in numeric}
    return out


def _cell(value: Any, key: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if key == "train_seconds":
        return f"{value:.2f} s"
    if key == "fallback_ratings":
        return f"{value:g}"
    return f"{value:.3f}"


def _label(name: str, row: dict[str, Any]) -> str:
    if name == TUNED_EASE_ROW and isinstance(row.get("lambda"), int | float):
        return f"{name}: {row['lambda']:g}"
    return name


def format_table(results: dict[str, Any]) -> str:
    """Markdown table in docs/evaluation.md's layout (one split, or the means over splits)."""
    lines = [
        f"{results.get('split', '')}".strip(),
        "| model | " + " | ".join(title for title, _ in COLUMNS) + " |",
        "|---|" + "---|" * len(COLUMNS),
    ]
    for name, row in results["rows"].items():
        cells = [_cell(row.get(key), key) for _, key in COLUMNS]
        lines.append(f"| {_label(name, row)} | " + " | ".join(cells) + " |")
    return "\n".join(line for line in lines if line)
