"""Model artifacts: one self-describing file per trained model version.

An artifact holds the weights and all that serving and audits need (config, movie ids,
data fingerprint and size, metrics, library versions). Files are written beside their
target and renamed into place (`write_atomically`); loading is ``weights_only`` (no pickled
code runs) and memory-mapped, so a host's processes share one page-cache copy: torch's
archive keeps tensors aligned, and the networks use them in place.
"""

from __future__ import annotations

import hashlib
import math
import os
import platform
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import scipy.sparse as sp
import torch
from pydantic import ValidationError

from app.ml.config import ModelConfig
from app.ml.data import IdMap, RatingMatrix
from app.ml.factors import ItemFactors
from app.ml.hybrid import BiasTerms, Blend, HybridModel, ValidatedParts
from app.ml.item_path import ItemToItem
from app.ml.model import StackedAutoencoder

FORMAT = "saerec-autoencoder"
FORMAT_VERSION = 2
SUFFIX = ".pt"


class ArtifactError(Exception):
    """An artifact is missing, unreadable, corrupted or does not match this code."""


@dataclass
class LoadedModel:
    model: HybridModel
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


def new_version_id() -> str:
    """Sortable and unique, such as ``20261127T013000Z-3f9c``."""
    return f"{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}-{secrets.token_hex(2)}"


def data_fingerprint(m: RatingMatrix, block: int = 1 << 20) -> str:
    """SHA-256 over the id maps and the ratings in CSR order, a block at a time (whole int64
    copies took 400 MB at 25M ratings)."""
    csr = m.matrix.tocsr()
    if not csr.has_sorted_indices:
        csr = csr.sorted_indices()
    digest = hashlib.sha256()
    digest.update(np.asarray(m.shape, dtype=np.int64).tobytes())
    for array, dtype in (
        (m.users.ids, np.int64),
        (m.movies.ids, np.int64),
        (csr.indptr, np.int64),
        (csr.indices, np.int64),
        (csr.data, np.float32),
    ):
        for start in range(0, array.size, block):
            digest.update(np.ascontiguousarray(array[start : start + block], dtype=dtype).tobytes())
    return digest.hexdigest()[:16]


def library_versions() -> dict[str, str]:
    return {
        "torch": str(torch.__version__),
        "numpy": str(np.__version__),
        "python": platform.python_version(),
    }


def plain(value: Any) -> Any:
    """Plain Python types (what ``weights_only`` loading and JSON columns take); a figure
    not measured (NaN, infinite) as None: PostgreSQL's JSON refuses those."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def write_atomically(path: Path, data: bytes | memoryview | Callable[[BinaryIO], None]) -> Path:
    """A hidden temp file beside ``path``, fsynced, renamed: all or nothing. ``data`` is the
    bytes or a function writing them (a large artifact streams). A file in place is
    replaced, never modified: a process mapping it keeps the old bytes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            if callable(data):
                data(handle)
            else:
                handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def sha256_of(path: Path) -> str | None:
    try:
        with Path(path).open("rb") as handle:
            return hashlib.file_digest(handle, "sha256").hexdigest()
    except OSError:
        return None


@dataclass(frozen=True)
class ArtifactMeta:
    version: str
    data_fingerprint: str = ""
    data_size: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SavedArtifact:
    path: Path
    sha256: str
    size: int


def artifact_payload(model: HybridModel, movies: IdMap, meta: ArtifactMeta) -> dict[str, Any]:
    """What the artifact holds: weights, id map and metadata, for one ``torch.save``."""
    if len(movies) != model.n_movies:
        raise ValueError(f"movie map has {len(movies)} ids, the model {model.n_movies} outputs")
    if tuple(model.rating_scale) != tuple(float(v) for v in model.rank_net.rating_scale):
        raise ValueError("the model's rating scale differs from its network's (the one saved)")
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "version": meta.version,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        **_model_payload(model),
        "movie_ids": torch.from_numpy(np.array(movies.ids, dtype=np.int64)),
        "metrics": plain(meta.metrics),
        "data_fingerprint": str(meta.data_fingerprint),
        "data_size": plain(meta.data_size),
        "libraries": library_versions(),
    }


class ArtifactStore:
    """The artifacts under MODEL_DIR: ``<model_dir>/<version>/<version>.pt``, beside the
    version's training report (pruning removes both)."""

    def __init__(self, model_dir: Path) -> None:
        self.root = Path(model_dir)

    def folder(self, version: str) -> Path:
        return self.root / version

    def path(self, version: str) -> Path:
        return self.folder(version) / f"{version}{SUFFIX}"

    def write(self, version: str, chunks: Iterable[bytes], sha256: str) -> Path:
        """Stream fetched bytes into place; refused (nothing written) unless they hash to
        ``sha256``."""

        def copy(handle: BinaryIO) -> None:
            digest = hashlib.sha256()
            for chunk in chunks:
                digest.update(chunk)
                handle.write(chunk)
            if digest.hexdigest() != sha256:
                raise ArtifactError(
                    f"the artifact of version {version} fails its checksum: "
                    f"sha256 {digest.hexdigest()}, the registry says {sha256}"
                )

        return write_atomically(self.path(version), copy)

    def save(self, model: HybridModel, movies: IdMap, meta: ArtifactMeta) -> SavedArtifact:
        payload = artifact_payload(model, movies, meta)
        path = write_atomically(self.path(meta.version), lambda handle: torch.save(payload, handle))
        digest = sha256_of(path)
        if digest is None:
            raise ArtifactError(f"model artifact {path} vanished as it was written")
        return SavedArtifact(path, digest, path.stat().st_size)

    def prune(self, version: str) -> None:
        shutil.rmtree(self.folder(version), ignore_errors=True)


RANK_HEAD = "rank_out.weight"


def _state(net: StackedAutoencoder) -> dict[str, torch.Tensor]:
    """The state dict as saved, the ranking head hidden-major (``torch.save`` keeps strides):
    the transpose serving multiplies by is then contiguous in the mapped file, no copy."""
    state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
    head = state.get(RANK_HEAD)
    if head is not None and not head.t().is_contiguous():
        state[RANK_HEAD] = head.t().contiguous().t()
    return state


def _model_payload(model: HybridModel) -> dict[str, Any]:
    return {
        "config": plain(model.config.model_dump()),
        "rank_state": _state(model.rank_net),
        "rate_state": None if model.rate_net is model.rank_net else _state(model.rate_net),
        "rate_config": plain(model.rate_net.config.model_dump()),
        "item_path": _item_payload(model.item_path),
        "bias": _bias(model.bias),
        "validated": None if model.validated is None else _validated_payload(model),
        "blend": asdict(model.blend),
        "log_popularity": torch.from_numpy(model.log_popularity.astype(np.float32)),
        "factors": _factors_payload(model.factors),
    }


SERVED = "served"
"""In the validated parts: this part is the served one (the refit left it alone)."""


def _validated_payload(model: HybridModel) -> dict[str, Any]:
    """The parts before the refit; a part the refit kept is stored once, as ``SERVED``."""
    v = model.validated
    assert v is not None
    rate: Any = _state(v.rate_net)
    if v.rate_net is model.rate_net:
        rate = SERVED
    elif v.rate_net is v.rank_net:
        rate = "rank"
    return {
        "rank_state": SERVED if v.rank_net is model.rank_net else _state(v.rank_net),
        "rate_state": rate,
        "rate_config": plain(v.rate_net.config.model_dump()),
        "item_path": SERVED if v.item_path is model.item_path else _item_payload(v.item_path),
        "bias": _bias(v.bias),
        "log_popularity": torch.from_numpy(v.log_popularity.astype(np.float32)),
        "factors": SERVED if v.factors is model.factors else _factors_payload(v.factors),
    }


def _factors_payload(factors: ItemFactors | None) -> dict[str, Any] | None:
    if factors is None:
        return None
    item_factors = torch.from_numpy(factors.factors.astype(np.float32))
    return {"item_factors": item_factors, "lam": factors.lam}


def _factors_from(payload: dict[str, Any] | None, n_movies: int) -> ItemFactors | None:
    if payload is None:
        return None
    item_factors = payload["item_factors"].numpy()
    if item_factors.ndim != 2 or item_factors.shape[0] != n_movies:
        raise ValueError("item factors do not match the movie map")
    return ItemFactors(item_factors, float(payload["lam"]))


def _item_payload(path: ItemToItem | None) -> dict[str, Any] | None:
    if path is None:
        return None
    return {
        "indptr": torch.from_numpy(path.weights.indptr.astype(np.int64)),
        "indices": torch.from_numpy(path.weights.indices.astype(np.int64)),
        "data": torch.from_numpy(path.weights.data.astype(np.float32)),
        "lam": path.lam,
        "min_rating": path.min_rating,
        "liked_weight": path.liked_weight,
    }


def _item_from(item: dict[str, Any] | None, n_movies: int) -> ItemToItem | None:
    if item is None:
        return None
    weights = sp.csr_matrix(
        (item["data"].numpy(), item["indices"].numpy(), item["indptr"].numpy()),
        shape=(n_movies, n_movies),
    )
    min_rating = item.get("min_rating")
    return ItemToItem(
        weights,
        float(item["lam"]),
        None if min_rating is None else float(min_rating),
        float(item.get("liked_weight", 0.0)),
    )


def _popularity_from(values: torch.Tensor, n_movies: int) -> np.ndarray:
    popularity = values.numpy()
    if popularity.shape != (n_movies,):
        raise ValueError("popularity vector does not match the movie map")
    return popularity


def _bias(bias: BiasTerms) -> dict[str, Any]:
    return {
        "mean": bias.mean,
        "movie_bias": torch.from_numpy(bias.movie_bias.astype(np.float32)),
        "user_reg": bias.user_reg,
    }


def _bias_from(payload: dict[str, Any], n_movies: int) -> BiasTerms:
    movie_bias = payload["movie_bias"].numpy()
    if movie_bias.shape != (n_movies,):
        raise ValueError("bias vector does not match the movie map")
    return BiasTerms(float(payload["mean"]), movie_bias, float(payload["user_reg"]))


def _validated_from(
    payload: dict[str, Any] | None, served: HybridModel, n_movies: int
) -> ValidatedParts | None:
    """The validated parts; older artifacts hold the rating parts alone (``rate_state``
    None: the served network)."""
    if payload is None:
        return None
    rank_state = payload.get("rank_state", SERVED)
    rank_net = served.rank_net
    if not isinstance(rank_state, str):
        rank_net = StackedAutoencoder.from_state(n_movies, served.config, rank_state)
    rate_state = payload["rate_state"]
    rate_net = served.rate_net
    if rate_state == "rank":
        rate_net = rank_net
    elif rate_state is not None and not isinstance(rate_state, str):
        rate_config = ModelConfig(**payload["rate_config"])
        rate_net = StackedAutoencoder.from_state(n_movies, rate_config, rate_state)
    item = payload.get("item_path", SERVED)
    item_path = served.item_path if isinstance(item, str) else _item_from(item, n_movies)
    popularity = served.log_popularity
    if "log_popularity" in payload:
        popularity = _popularity_from(payload["log_popularity"], n_movies)
    factors_payload = payload.get("factors")
    factors = served.factors
    if not isinstance(factors_payload, str):
        factors = _factors_from(factors_payload, n_movies)
    bias = _bias_from(payload["bias"], n_movies)
    return ValidatedParts(rank_net, rate_net, item_path, bias, popularity, factors)


def _read(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ArtifactError(f"model artifact not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
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
            f"this code reads version {FORMAT_VERSION}: train a new model (saerec train)"
        )
    missing = {"version", "rank_state", "config", "movie_ids"} - set(payload)
    if missing:
        raise ArtifactError(f"{path} lacks {sorted(missing)}")
    return payload


def load_artifact(path: Path) -> LoadedModel:
    path = Path(path)
    payload = _read(path)
    try:
        config = ModelConfig(**payload["config"])
    except (ValidationError, TypeError) as exc:
        raise ArtifactError(f"{path} has a config this code cannot use: {exc}") from exc
    movies = IdMap(payload["movie_ids"].numpy())
    try:
        model = _model_from(payload, config, len(movies))
    except (RuntimeError, KeyError, TypeError, ValueError) as exc:
        raise ArtifactError(f"{path} weights do not match its config: {exc}") from exc
    return LoadedModel(
        model=model,
        config=config,
        movies=movies,
        rating_scale=model.rating_scale,
        metrics=payload.get("metrics", {}),
        version=str(payload["version"]),
        data_fingerprint=payload.get("data_fingerprint", ""),
        data_size=payload.get("data_size", {}),
        created_at=payload.get("created_at", ""),
        libraries=payload.get("libraries", {}),
        path=path,
    )


def _model_from(payload: dict[str, Any], config: ModelConfig, n_movies: int) -> HybridModel:
    rank_net = StackedAutoencoder.from_state(n_movies, config, payload["rank_state"])
    rate_state = payload["rate_state"]
    rate_config = ModelConfig(**payload.get("rate_config", payload["config"]))
    rate_net = rank_net
    if rate_state is not None:
        rate_net = StackedAutoencoder.from_state(n_movies, rate_config, rate_state)
    # the scale travels once, as a buffer of the network
    low, high = (float(v) for v in rank_net.rating_scale)
    model = HybridModel(
        config,
        rank_net,
        rate_net,
        _item_from(payload["item_path"], n_movies),
        _bias_from(payload["bias"], n_movies),
        Blend(**payload["blend"]),
        _popularity_from(payload["log_popularity"], n_movies),
        (low, high),
        factors=_factors_from(payload.get("factors"), n_movies),
    )
    return replace(model, validated=_validated_from(payload.get("validated"), model, n_movies))
