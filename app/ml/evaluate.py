"""The one evaluation protocol (EVALUATION.md) applied to the model and the baselines.

Training and early stopping only ever see the ``.base`` file (validation is carved out of
it); the ``.test`` file is used once, for the final figures. The movie axis is the union of
the ids in both files, i.e. the catalog, as it is when serving.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from app.ml.baselines import BASELINES
from app.ml.data import build_rating_matrix, holdout_split, read_split_file
from app.ml.metrics import evaluate_scorer
from app.ml.model import ModelConfig, predict
from app.ml.train import EpochReport, TrainResult, train_model

MODEL_ROW = "stacked autoencoder"
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


def evaluate_split(
    base_path: str | Path,
    test_path: str | Path,
    config: ModelConfig,
    baselines: bool = True,
    on_epoch: Callable[[EpochReport], None] | None = None,
    device: str | None = None,
    threads: int | None = None,
) -> dict[str, Any]:
    """Train on base, score base+test with the protocol; rows for the model and baselines."""
    base, test = read_split_file(base_path), read_split_file(test_path)
    catalog = np.union1d(base[1], test[1])
    full = build_rating_matrix([base], movie_ids=catalog)
    train, valid = holdout_split(full, config.validation_fraction, config.seed)
    result: TrainResult = train_model(
        train, valid, config, on_epoch=on_epoch, device=device, threads=threads
    )
    rows: dict[str, dict[str, Any]] = {}
    if baselines:
        for name, make in BASELINES.items():
            baseline = make().fit(full)
            rows[name] = evaluate_scorer(baseline, full, test)
            rows[name]["train_seconds"] = baseline.fit_seconds
    model = result.model

    def scorer(batch_rows: Any) -> tuple[np.ndarray, np.ndarray]:
        return predict(model, batch_rows)

    row = evaluate_scorer(scorer, full, test, scale=result.rating_scale)
    row.update(
        train_seconds=result.seconds, best_epoch=result.best_epoch, epochs_run=len(result.history)
    )
    rows[MODEL_ROW] = row
    return {
        "split": Path(base_path).stem,
        "n_train": full.nnz,
        "n_test": int(test[0].size),
        "n_users": full.shape[0],
        "n_movies": full.shape[1],
        "rows": rows,
        "valid": result.metrics,
    }


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
    """Metric-wise means of the same rows over several splits."""
    out: dict[str, dict[str, float]] = {}
    for name in all_rows[0]:
        keys = set.intersection(*(set(rows[name]) for rows in all_rows))
        out[name] = {k: float(np.mean([rows[name][k] for rows in all_rows])) for k in keys}
    return out


def _cell(value: Any, key: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if key == "train_seconds":
        return f"{value:.2f} s"
    if key == "fallback_ratings":
        return f"{value:g}"
    return f"{value:.3f}"


def format_table(results: dict[str, Any]) -> str:
    """Markdown table in EVALUATION.md's layout (one split, or the means over splits)."""
    lines = [
        f"{results.get('split', '')}".strip(),
        "| model | " + " | ".join(title for title, _ in COLUMNS) + " |",
        "|---|" + "---|" * len(COLUMNS),
    ]
    for name, row in results["rows"].items():
        cells = [_cell(row.get(key), key) for _, key in COLUMNS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(line for line in lines if line)
