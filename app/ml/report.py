"""Human-readable training reports written next to an artifact: metrics JSON and a
learning-curve PNG (matplotlib's Agg backend, so it works on a headless server)."""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from app.ml.artifacts import plain, write_atomically
from app.ml.train import EpochReport


def write_metrics_json(
    artifact: Path, metrics: dict[str, Any], history: Sequence[EpochReport] = ()
) -> Path:
    """``<artifact stem>.metrics.json`` with the final metrics and per-epoch history."""
    artifact = Path(artifact)
    path = artifact.with_name(f"{artifact.stem}.metrics.json")
    body = {"metrics": metrics, "history": [h.as_dict() for h in history]}
    write_atomically(path, json.dumps(plain(body), indent=2, sort_keys=True).encode())
    return path


def write_learning_curve(artifact: Path, history: Sequence[EpochReport]) -> Path | None:
    """``<artifact stem>.curve.png``: train loss, validation RMSE and NDCG@10 per epoch."""
    if not history:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    artifact = Path(artifact)
    path = artifact.with_name(f"{artifact.stem}.curve.png")
    epochs = [h.epoch for h in history]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.5))
    series = [
        ("train loss", [h.train_loss for h in history]),
        ("validation RMSE", [h.valid_rmse for h in history]),
        ("validation NDCG@10", [h.valid_ndcg for h in history]),
    ]
    rank_best = next((h.epoch for h in reversed(history) if h.best_ranking), None)
    rate_best = next((h.epoch for h in reversed(history) if h.best_rating), None)
    # each head keeps its own best epoch: mark the one that matters on each panel
    marks = [rank_best, rate_best, rank_best]
    for ax, (title, values), best in zip(axes, series, marks, strict=True):
        ax.plot(epochs, values, marker=".")
        if best is not None:
            ax.axvline(best, color="grey", linestyle="--", linewidth=1)
        ax.set_title(title)
        ax.set_xlabel("epoch")
    fig.tight_layout()
    image = io.BytesIO()
    try:
        fig.savefig(image, format="png", dpi=100)
    finally:
        plt.close(fig)
    write_atomically(path, image.getvalue())
    return path


def write_report(
    artifact: Path, metrics: dict[str, Any], history: Sequence[EpochReport]
) -> dict[str, Path | None]:
    """Both files next to ``artifact``; returns their paths."""
    return {
        "metrics": write_metrics_json(artifact, metrics, history),
        "curve": write_learning_curve(artifact, history),
    }
