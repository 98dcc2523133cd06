"""New movies before a retrain: columns appended to a trained model's output.

A movie added since training is tied to its K nearest trained movies by co-rating; its
score for a user is the weighted mean of that user's scores of them (popularity penalty
its own), its rating the bias terms with its own movie bias. Pure arrays: serving and
scripts/bench_new_movies.py compute it alike (docs/design.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from app.ml.hybrid import BiasTerms

Array = np.ndarray

NEIGHBOURS = 20
"""trained movies a new movie is scored from: enough to average out one odd co-rating,
few enough to stay specific (more diluted it towards the user's mean; docs/benchmarks.md)."""
SHRINK = 2.0
"""co-raters at which a similarity keeps half its weight: a lone co-rater is chance. Small:
larger values favoured popular neighbours and ranked worse (docs/benchmarks.md)."""


@dataclass(frozen=True)
class NewMovieColumns:
    neighbours: Array
    """E x K trained columns (padding: column 0 at weight 0)"""
    weights: Array
    """E x K float32, each row summing to 1, or all 0 for a movie that shares no rater
    with any trained movie (then it is never ranked: nothing ties it to a user's taste)"""
    log_popularity: Array
    """E float32: log(1 + its rating count), for its own popularity penalty"""
    movie_bias: Array
    """E float32: its bias term, shrunk from its own ratings"""

    @classmethod
    def empty(cls) -> NewMovieColumns:
        return cls(
            np.zeros((0, 1), np.int64),
            np.zeros((0, 1), np.float32),
            np.zeros(0, np.float32),
            np.zeros(0, np.float32),
        )

    def __len__(self) -> int:
        return int(self.movie_bias.size)

    def take(self, rows: Array) -> NewMovieColumns:
        return NewMovieColumns(
            self.neighbours[rows],
            self.weights[rows],
            self.log_popularity[rows],
            self.movie_bias[rows],
        )

    @classmethod
    def concat(cls, parts: list[NewMovieColumns]) -> NewMovieColumns:
        parts = [p for p in parts if len(p)]
        if not parts:
            return cls.empty()
        width = max(p.neighbours.shape[1] for p in parts)

        def pad(a: Array) -> Array:
            return np.pad(a, ((0, 0), (0, width - a.shape[1])))

        return cls(
            np.concatenate([pad(p.neighbours) for p in parts]),
            np.concatenate([pad(p.weights) for p in parts]),
            np.concatenate([p.log_popularity for p in parts]),
            np.concatenate([p.movie_bias for p in parts]),
        )

    def scores(self, trained: Array, popularity: Array, penalty: float) -> Array:
        """The trained scores (B x n) with the new movies' appended, a gather on the forward
        pass's output: the neighbours' weighted mean, penalty added back, less its own."""
        if not len(self):
            return trained
        n = trained.shape[1]
        out = np.empty((trained.shape[0], n + len(self)), dtype=np.float32)
        out[:, :n] = trained
        new = out[:, n:]
        # one gather of K columns per new movie: B x E x K, then a weighted sum over K
        np.einsum("bek,ek->be", trained[:, self.neighbours], self.weights, out=new)
        restored = (popularity[self.neighbours] * self.weights).sum(axis=1)
        new += np.float32(penalty) * (restored - self.log_popularity).astype(np.float32)
        new[:, self.weights.sum(axis=1) <= 0] = -np.inf
        return out

    def ratings(
        self, bias: BiasTerms, user_bias: Array, cols: Array, scale: tuple[float, float]
    ) -> Array:
        """Ratings at new-movie positions ``cols`` for users of bias ``user_bias`` (per cell)."""
        mixed = bias.mean + self.movie_bias[cols] + user_bias
        return np.clip(mixed, scale[0], scale[1]).astype(np.float32, copy=False)


def fit(
    raters: sp.csr_matrix,
    rated_by: sp.csr_matrix,
    counts: Array,
    trained_counts: Array,
    bias: BiasTerms,
    movie_reg: float,
    k: int = NEIGHBOURS,
    shrink: float = SHRINK,
) -> NewMovieColumns:
    """Neighbours, weights and bias terms of E new movies from ``raters`` (R x n, the raters'
    trained ratings), ``rated_by`` (E x R), their full rating ``counts`` and the trained
    movies' training counts."""
    raters = sp.csr_matrix(raters, dtype=np.float32)
    rated_by = sp.csr_matrix(rated_by, dtype=np.float32)
    n_new = rated_by.shape[0]
    seen = raters.copy()
    seen.data[:] = 1.0
    who = rated_by.copy()
    who.data[:] = 1.0
    common = sp.csr_matrix(who @ seen)  # E x n co-rater counts: at most E x (their movies)
    sampled = np.diff(who.indptr).astype(np.float32)
    k = max(1, k)
    neighbours = np.zeros((n_new, k), np.int64)
    weights = np.zeros((n_new, k), np.float32)
    for row in range(n_new):
        start, stop = common.indptr[row], common.indptr[row + 1]
        cols, together = common.indices[start:stop], common.data[start:stop]
        if not cols.size:
            continue
        sims = together / np.sqrt(sampled[row] * np.maximum(trained_counts[cols], 1.0))
        sims *= together / (together + shrink)
        best = np.argsort(-sims, kind="stable")[:k]
        total = sims[best].sum()
        if total <= 0:
            continue
        neighbours[row, : best.size] = cols[best]
        weights[row, : best.size] = sims[best] / total
    # the bias of each rating's rater, folded in from their trained ratings as at serving
    user_bias = bias.user_biases(raters)
    resid = rated_by.copy()
    resid.data = resid.data - bias.mean - user_bias[resid.indices]
    sums = np.asarray(resid.sum(axis=1)).ravel()
    movie_bias = (sums / (sampled + movie_reg)).astype(np.float32)
    log_popularity = np.log1p(np.asarray(counts, dtype=np.float64)).astype(np.float32)
    return NewMovieColumns(neighbours, weights, log_popularity, movie_bias)
