"""Model artifacts: one self-describing file per trained model version.

An artifact holds the weights plus everything needed to serve and audit them (config, the
movie id map, rating scale, training-data fingerprint and size, metrics, library
versions). It is written to a temporary name in the target directory and moved into place
with ``os.replace``, so a reader never sees a half-written file. Loading uses
``torch.load(weights_only=True)``: no pickled code is ever executed.
"""

from __future__ import annotations

import hashlib
import os
import platform
import secrets
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from pydantic import ValidationError

from app.ml.data import IdMap, RatingMatrix
from app.ml.model import ModelConfig, StackedAutoencoder, predict

FORMAT = "saerec-autoencoder"
FORMAT_VERSION = 1
SUFFIX = ".pt"


class ArtifactError(Exception):
    """An artifact is missing, unreadable, corrupted or does not match this code."""


@dataclass
class LoadedModel:
    """A ready-to-serve model (eval mode) with the metadata saved alongside it."""

    model: StackedAutoencoder
    config: ModelConfig
    movies: IdMap
    rating_scale: tuple[float, float]
    metrics: dict[str, Any]
    version: str
    data_fingerprint: str = ""
    data_size: dict[str, Any] = field(default_factory=dict)
    created_at: str = ""
    libraries: dict[str, str] = field(default_factory=dict)
    path: Path | None = None

    def user_row(self, movie_ids: np.ndarray, ratings: np.ndarray) -> sp.csr_matrix:
        """One user's ratings as a 1 x n_movies row; movies unknown to the model are dropped."""
        cols = self.movies.index_of(np.asarray(movie_ids, dtype=np.int64))
        values = np.asarray(ratings, dtype=np.float32)
        keep = (cols >= 0) & (values > 0)
        return sp.csr_matrix(
            (values[keep], (np.zeros(keep.sum(), dtype=np.int64), cols[keep])),
            shape=(1, len(self.movies)),
            dtype=np.float32,
        )

    def predict_user(
        self, movie_ids: np.ndarray, ratings: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Fold-in for serving: (scores, predicted ratings) over ``self.movies.ids``."""
        scores, preds = predict(self.model, self.user_row(movie_ids, ratings))
        return scores[0], preds[0]


def new_version_id() -> str:
    """A sortable, unique version id such as ``20261127T013000Z-3f9c``."""
    return f"{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}-{secrets.token_hex(2)}"


def data_fingerprint(m: RatingMatrix) -> str:
    """SHA-256 over the id maps and the ratings (in canonical CSR order)."""
    csr = m.matrix.tocsr().copy()
    csr.sort_indices()
    digest = hashlib.sha256()
    digest.update(np.asarray(m.shape, dtype=np.int64).tobytes())
    for array, dtype in (
        (m.users.ids, np.int64),
        (m.movies.ids, np.int64),
        (csr.indptr, np.int64),
        (csr.indices, np.int64),
        (csr.data, np.float32),
    ):
        digest.update(np.ascontiguousarray(array, dtype=dtype).tobytes())
    return digest.hexdigest()[:16]


def library_versions() -> dict[str, str]:
    return {
        "torch": str(torch.__version__),
        "numpy": str(np.__version__),
        "python": platform.python_version(),
    }


def _plain(value: Any) -> Any:
    """Metrics/sizes as plain python types (weights_only loading accepts only those)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def artifact_path(directory: Path, version: str) -> Path:
    return Path(directory) / f"{version}{SUFFIX}"


def save_artifact(
    directory: Path,
    version: str,
    model: StackedAutoencoder,
    config: ModelConfig,
    movies: IdMap,
    rating_scale: tuple[float, float],
    metrics: dict,
    data_fingerprint: str,
    data_size: dict,
) -> Path:
    """Atomically write ``<directory>/<version>.pt`` and return its path."""
    if len(movies) != model.n_movies:
        raise ValueError(f"movie map has {len(movies)} ids, the model {model.n_movies} outputs")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "version": version,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "config": _plain(config.model_dump()),
        "movie_ids": torch.from_numpy(np.array(movies.ids, dtype=np.int64)),
        "rating_scale": [float(rating_scale[0]), float(rating_scale[1])],
        "metrics": _plain(metrics),
        "data_fingerprint": str(data_fingerprint),
        "data_size": _plain(data_size),
        "libraries": library_versions(),
    }
    final = artifact_path(directory, version)
    fd, tmp = tempfile.mkstemp(prefix=f".{version}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(payload, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, final)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return final


def _read(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ArtifactError(f"model artifact not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a damaged zip/pickle
        raise ArtifactError(
            f"model artifact {path} is unreadable (truncated or corrupted): "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ArtifactError(f"{path} is not a saerec model artifact")
    if payload.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(
            f"{path} has format version {payload.get('format_version')}, "
            f"this code reads version {FORMAT_VERSION}"
        )
    missing = {"version", "state_dict", "config", "movie_ids", "rating_scale"} - set(payload)
    if missing:
        raise ArtifactError(f"{path} lacks {sorted(missing)}")
    return payload


def load_artifact(path: Path, device: str | None = None) -> LoadedModel:
    """Read and validate an artifact; ArtifactError with a clear reason when it cannot."""
    path = Path(path)
    payload = _read(path)
    try:
        config = ModelConfig(**payload["config"])
    except (ValidationError, TypeError) as exc:
        raise ArtifactError(f"{path} has a config this code cannot use: {exc}") from exc
    movies = IdMap(payload["movie_ids"].numpy())
    model = StackedAutoencoder(len(movies), config)
    try:
        model.load_state_dict(payload["state_dict"], strict=True)
    except (RuntimeError, KeyError, TypeError) as exc:
        raise ArtifactError(f"{path} weights do not match its config: {exc}") from exc
    if device:
        model.to(device)
    model.eval()
    scale = tuple(float(v) for v in payload["rating_scale"])
    return LoadedModel(
        model=model,
        config=config,
        movies=movies,
        rating_scale=(scale[0], scale[1]),
        metrics=payload.get("metrics", {}),
        version=str(payload["version"]),
        data_fingerprint=payload.get("data_fingerprint", ""),
        data_size=payload.get("data_size", {}),
        created_at=payload.get("created_at", ""),
        libraries=payload.get("libraries", {}),
        path=path,
    )


def list_artifacts(directory: Path) -> list[Path]:
    """Artifact files in ``directory``, oldest version first (temp files excluded)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.glob(f"*{SUFFIX}") if not p.name.startswith("."))


__all__ = [
    "ArtifactError",
    "LoadedModel",
    "artifact_path",
    "data_fingerprint",
    "list_artifacts",
    "load_artifact",
    "new_version_id",
    "save_artifact",
]
