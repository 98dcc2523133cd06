"""Rating data for the autoencoder: id maps, sparse user x movie matrices, splits. Chunks
of parallel arrays end up in one CSR matrix: no dense users x movies array is ever built.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp

RatingChunk = tuple[np.ndarray, np.ndarray, np.ndarray]
"""(user_ids int64, movie_ids int64, ratings float32), parallel arrays of one chunk."""


@dataclass(frozen=True, eq=False)
class IdMap:
    """Arbitrary integer ids <-> dense 0..n-1 positions (sorted, so lookups are a bisection)."""

    ids: np.ndarray

    def __post_init__(self) -> None:
        ids = np.asarray(self.ids, dtype=np.int64).reshape(-1)
        if ids.size > 1 and not np.all(ids[1:] > ids[:-1]):
            raise ValueError("IdMap ids must be sorted and unique")
        ids.setflags(write=False)
        object.__setattr__(self, "ids", ids)

    @classmethod
    def from_ids(cls, ids: np.ndarray | Iterable[int]) -> IdMap:
        return cls(
            np.unique(
                np.asarray(list(ids) if not isinstance(ids, np.ndarray) else ids, dtype=np.int64)
            )
        )

    def index_of(self, ids: np.ndarray) -> np.ndarray:
        """Positions of ``ids`` (int64), -1 for ids not in the map."""
        ids = np.asarray(ids, dtype=np.int64)
        if self.ids.size == 0:
            return np.full(ids.shape, -1, dtype=np.int64)
        pos = np.searchsorted(self.ids, ids).astype(np.int64, copy=False)
        np.minimum(pos, self.ids.size - 1, out=pos)  # in place: 25M lookups, one array
        pos[self.ids[pos] != ids] = -1
        return pos

    def __len__(self) -> int:
        return int(self.ids.size)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, IdMap) and np.array_equal(self.ids, other.ids)

    __hash__ = None  # type: ignore[assignment]


@dataclass
class RatingMatrix:
    """Users x movies ratings (CSR float32, 0 = unrated) with the maps that name its axes."""

    matrix: sp.csr_matrix
    users: IdMap
    movies: IdMap

    @property
    def nnz(self) -> int:
        return int(self.matrix.nnz)

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.matrix.shape[0]), int(self.matrix.shape[1]))

    def mean(self) -> float:
        return float(self.matrix.data.mean()) if self.matrix.nnz else 0.0

    def scale(self) -> tuple[float, float]:
        if not self.matrix.nnz:
            return (1.0, 5.0)
        return (float(self.matrix.data.min()), float(self.matrix.data.max()))

    def to_chunk(self) -> RatingChunk:
        coo = self.matrix.tocoo()
        return (self.users.ids[coo.row], self.movies.ids[coo.col], coo.data.astype(np.float32))


def _check_chunk(chunk: RatingChunk) -> RatingChunk:
    users, movies, ratings = (np.asarray(a).reshape(-1) for a in chunk)
    if not (users.size == movies.size == ratings.size):
        raise ValueError("a rating chunk needs three arrays of equal length")
    ratings = ratings.astype(np.float32)
    if ratings.size and (not np.all(np.isfinite(ratings)) or ratings.min() <= 0):
        raise ValueError("ratings must be finite and > 0 (0 means unrated in the matrix)")
    return users.astype(np.int64), movies.astype(np.int64), ratings


def csr_from_indices(
    rows: np.ndarray, cols: np.ndarray, values: np.ndarray, shape: tuple[int, int]
) -> sp.csr_matrix:
    """CSR from index triplets, a repeated cell's last value winning (an upsert): one int64
    key per cell, stably sorted (a three-key lexsort peaked near 4 GB at 25M ratings)."""
    width = max(shape[1], 1)
    key = rows.astype(np.int64) * width + cols  # row-major cell number
    order = np.argsort(key, kind="stable")  # equal cells keep their input order
    key = key[order]
    if key.size:
        last = np.empty(key.size, dtype=bool)
        last[-1] = True
        np.not_equal(key[1:], key[:-1], out=last[:-1])
        if not last.all():
            key, order = key[last], order[last]
        del last
    data = values[order].astype(np.float32, copy=False)
    del order
    indptr = np.zeros(shape[0] + 1, dtype=np.int64)
    np.cumsum(np.bincount(key // width, minlength=shape[0]), out=indptr[1:])
    index_dtype = np.int32 if max(shape) < 2**31 and key.size < 2**31 else np.int64
    indices = (key % width).astype(index_dtype)
    del key
    return sp.csr_matrix((data, indices, indptr.astype(index_dtype)), shape=shape)


def build_rating_matrix(
    chunks: Iterable[RatingChunk], movie_ids: np.ndarray | None = None
) -> RatingMatrix:
    """Rating chunks in one CSR matrix; ``movie_ids`` fixes the movie axis (a rating
    outside it is an error), a repeated pair keeps its last rating."""
    users_parts: list[np.ndarray] = []
    movies_parts: list[np.ndarray] = []
    ratings_parts: list[np.ndarray] = []
    for chunk in chunks:
        users, movies, ratings = _check_chunk(chunk)
        users_parts.append(users)
        movies_parts.append(movies)
        ratings_parts.append(ratings)
    users = np.concatenate(users_parts) if users_parts else np.zeros(0, np.int64)
    movies = np.concatenate(movies_parts) if movies_parts else np.zeros(0, np.int64)
    ratings = np.concatenate(ratings_parts) if ratings_parts else np.zeros(0, np.float32)
    del users_parts, movies_parts, ratings_parts
    user_map = IdMap.from_ids(users)
    movie_map = IdMap.from_ids(movies) if movie_ids is None else IdMap.from_ids(movie_ids)
    cols = movie_map.index_of(movies)
    if (cols < 0).any():
        unknown = np.unique(movies[cols < 0])[:10].tolist()
        raise ValueError(f"ratings for movies outside the given movie_ids: {unknown}")
    del movies  # each id array goes as soon as its positions exist (200 MB each at 25M)
    rows = user_map.index_of(users)
    del users
    matrix = csr_from_indices(rows, cols, ratings, (len(user_map), len(movie_map)))
    return RatingMatrix(matrix, user_map, movie_map)


def reindex(chunk: RatingChunk, users: IdMap, movies: IdMap) -> tuple[sp.csr_matrix, np.ndarray]:
    """Place a chunk on existing maps; returns the matrix and a mask of ratings left out."""
    u, m, r = _check_chunk(chunk)
    rows, cols = users.index_of(u), movies.index_of(m)
    known = (rows >= 0) & (cols >= 0)
    matrix = csr_from_indices(rows[known], cols[known], r[known], (len(users), len(movies)))
    return matrix, ~known


def holdout_split(m: RatingMatrix, fraction: float, seed: int) -> tuple[RatingMatrix, RatingMatrix]:
    """Seeded per-user holdout of ~``fraction`` (rounded at random) of each user's ratings;
    every user keeps at least one training rating (fold-in needs an input)."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError("fraction must be in [0, 1)")
    csr = m.matrix.tocsr()
    rng = np.random.default_rng(seed)
    counts = np.diff(csr.indptr).astype(np.int64)
    row_of = np.repeat(np.arange(csr.shape[0]), counts)
    n_hold = np.floor(fraction * counts + rng.random(counts.size)).astype(np.int64)
    n_hold = np.minimum(n_hold, np.maximum(counts - 1, 0))
    keys = rng.random(csr.nnz)
    order = np.lexsort((keys, row_of))
    rank = np.empty(csr.nnz, dtype=np.int64)
    rank[order] = np.arange(csr.nnz) - csr.indptr[row_of[order]]
    hold = rank < n_hold[row_of]
    cols = csr.indices.astype(np.int64)
    parts = []
    for mask in (~hold, hold):
        parts.append(
            RatingMatrix(
                csr_from_indices(row_of[mask], cols[mask], csr.data[mask], m.shape),
                m.users,
                m.movies,
            )
        )
    return parts[0], parts[1]


def read_split_file(path: str | Path) -> RatingChunk:
    """A MovieLens ``u1.base``-style file: tab separated, no header row."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"rating file not found: {path}")
    table = np.loadtxt(path, delimiter="\t", dtype=np.float64, ndmin=2, usecols=(0, 1, 2))
    if table.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    return (
        table[:, 0].astype(np.int64),
        table[:, 1].astype(np.int64),
        table[:, 2].astype(np.float32),
    )


def iter_chunks(chunk: RatingChunk, size: int) -> Iterable[RatingChunk]:
    """Split one chunk into pieces of ``size`` (mimics the database's streaming)."""
    users, movies, ratings = chunk
    for start in range(0, users.size, size):
        yield (
            users[start : start + size],
            movies[start : start + size],
            ratings[start : start + size],
        )


HOLDOUT_SEED = 7
HOLDOUT_FRACTION = 0.2
HOLDOUT_MIN_RATINGS = 5


def per_user_holdout(
    users: np.ndarray,
    movies: np.ndarray,
    ratings: np.ndarray,
    timestamps: np.ndarray,
    seed: int = HOLDOUT_SEED,
    fraction: float = HOLDOUT_FRACTION,
) -> tuple[RatingChunk, RatingChunk]:
    """docs/evaluation.md's per-user holdout, exactly, so figures match across machines:
    rows stably sorted by (user, movie, timestamp), one ``default_rng(seed)`` draw per row;
    a user's ``max(1, floor(fraction * n + 0.5))`` smallest draws are test, if n >= 5."""
    if not 0.0 < fraction < 1.0:
        raise ValueError("fraction must be in (0, 1)")
    users = np.asarray(users, dtype=np.int64).reshape(-1)
    movies = np.asarray(movies, dtype=np.int64).reshape(-1)
    ratings = np.asarray(ratings, dtype=np.float32).reshape(-1)
    timestamps = np.asarray(timestamps, dtype=np.int64).reshape(-1)
    if not (users.size == movies.size == ratings.size == timestamps.size):
        raise ValueError("users, movies, ratings and timestamps must have equal lengths")
    order = np.lexsort((np.arange(users.size), timestamps, movies, users))
    users, movies, ratings = users[order], movies[order], ratings[order]
    test = _holdout_mask(users, np.random.default_rng(seed).random(users.size), fraction)
    return (users[~test], movies[~test], ratings[~test]), (users[test], movies[test], ratings[test])


def _holdout_mask(users_sorted: np.ndarray, draws: np.ndarray, fraction: float) -> np.ndarray:
    _, starts, counts = np.unique(users_sorted, return_index=True, return_counts=True)
    n_test = np.maximum(1, np.floor(fraction * counts + 0.5)).astype(np.int64)
    n_test[counts < HOLDOUT_MIN_RATINGS] = 0
    group = np.repeat(np.arange(counts.size), counts)
    by_draw = np.lexsort((draws, group))  # each user's rows, smallest draw first
    rank = np.empty(users_sorted.size, dtype=np.int64)
    rank[by_draw] = np.arange(users_sorted.size) - starts[group[by_draw]]
    return rank < n_test[group]
