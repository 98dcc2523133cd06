"""The linear item-to-item path: a shallow, closed-form autoencoder beside the deep one.

EASE (Steck 2019) is itself an autoencoder: one item x item weight matrix with a zero
diagonal, fitted in closed form. Ours differs in two ways that measure better on every
data set we have (ml-100k u1, ml-1m-half, a sparse ml-100k subsample):

* its target weights *liked* movies up (``X + c * liked``) while its input stays the
  rated indicator, so "rated it" predicts "will like it", not merely "will rate it";
* it is bounded: the closed form runs over at most ``max_movies`` most-rated movies and
  each source movie keeps only its ``neighbors`` strongest weights, so a 59k-movie catalog
  costs ``max_movies²`` while fitting and ``max_movies * neighbors`` floats to serve.

Scoring is ``indicator(row) @ W``: linear in the user's ratings times ``neighbors``.
(Serving reads the same weights through app/ml/scoring.py's precomputed ``ItemTable``.)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from scipy.linalg import lapack


@dataclass(frozen=True)
class ItemToItem:
    """Sparse weights, row = source movie (one the user rated), column = scored movie."""

    weights: sp.csr_matrix
    lam: float

    @property
    def n_movies(self) -> int:
        return int(self.weights.shape[0])

    def score_rows(self, rows: sp.csr_matrix) -> np.ndarray:
        """Scores for a batch of users' rating rows (B x n_movies, dense)."""
        indicator = sp.csr_matrix(rows, dtype=np.float32, copy=True)
        indicator.data[:] = 1.0
        return np.asarray((indicator @ self.weights).toarray(), dtype=np.float32)


def lambda_candidates(train: sp.csr_matrix) -> list[float]:
    """Ridge strengths to try: around 10x the mean rating count of a rated movie.

    EASE's best lambda grows with how often movies are rated (500 on ml-100k's u1 with ~48
    ratings per movie, 1000 on ml-1m-half with ~100); the grid spans 4x either way.
    """
    counts = np.bincount(train.indices, minlength=train.shape[1])
    rated = counts[counts > 0]
    centre = 10.0 * float(rated.mean()) if rated.size else 100.0
    return [round(centre * f, 1) for f in (0.5, 1.0, 2.0)]


@dataclass(frozen=True)
class CoOccurrence:
    """What the closed form takes from the ratings whatever the ridge strength, over the
    kept (most-rated) movies: ``X'X`` and ``X'L`` (X the rated indicator, L the liked one).

    Computed once for all the lambdas tried: at 10M ratings each sparse product takes
    ~20 s. float32 throughout: the ridge keeps the Gram matrix well conditioned, and half
    the memory is what lets thousands of movies fit beside training.
    """

    kept: np.ndarray
    n_movies: int
    gram: np.ndarray
    co_liked: np.ndarray

    @classmethod
    def of(cls, train: sp.csr_matrix, threshold: float, max_movies: int) -> CoOccurrence:
        counts = np.bincount(train.indices, minlength=train.shape[1])
        kept = _most_rated(counts, max_movies)
        sub = sp.csr_matrix(train[:, kept], dtype=np.float32)
        liked = (sub >= threshold).astype(np.float32).tocsc()
        x_t = sub.T.tocsr()  # movies x users; its transpose is X in CSC, no copy
        del sub
        x_t.data[:] = 1.0
        gram = _dense_product(x_t, x_t.T)
        return cls(kept, train.shape[1], gram, _dense_product(x_t, liked))


def _dense_product(left: sp.csr_matrix, right: sp.csc_matrix, block: int = 1024) -> np.ndarray:
    """``(left @ right).toarray()`` a block of columns at a time: the sparse product of a
    whole 8,000-movie Gram matrix holds ~770 MB of indices before it is made dense."""
    out = np.empty((left.shape[0], right.shape[1]), dtype=np.float32)
    for start in range(0, right.shape[1], block):
        out[:, start : start + block] = (left @ right[:, start : start + block]).toarray()
    return out


def fit_item_to_item(
    co: CoOccurrence, lam: float, liked_weight: float, neighbors: int, block: int = 1024
) -> ItemToItem:
    """Closed-form ridge regression of ``X + c * liked`` on ``X``, diagonal forced to zero.

    With P = (X'X + lam I)^-1: B = P X'(X + cL) = I - lam P + c P X'L, then the Lagrange
    correction - P diag(mu), mu_j = B_jj / P_jj, makes every diagonal entry exactly 0, as
    EASE requires. So B = c P X'L - P diag(lam + mu) + I, and a row block of B needs only
    the same rows of P: B overwrites P a block at a time (no third n x n array; with
    X'X and X'L that is 768 MB at 8,000 movies).
    """
    b = _ridge_inverse(co.gram, lam)  # P, becoming B in place
    diag_p = np.diag(b).astype(np.float64)
    diag_pc = np.einsum("ij,ji->i", b, co.co_liked, dtype=np.float64)  # diag(P X'L)
    mu = (liked_weight * diag_pc - lam * diag_p + 1.0) / diag_p
    scale = (lam + mu).astype(np.float32)[None, :]
    for start in range(0, b.shape[0], block):
        rows = b[start : start + block].copy()
        product = rows @ co.co_liked
        product *= liked_weight
        rows *= scale
        product -= rows
        b[start : start + block] = product
    np.fill_diagonal(b, 0.0)  # I's only entries, and the corrected diagonal (0 up to rounding)
    return ItemToItem(_pruned(b, co.kept, co.n_movies, neighbors), float(lam))


def _ridge_inverse(gram: np.ndarray, lam: float, block: int = 1024) -> np.ndarray:
    """``(gram + lam I)^-1`` by Cholesky (the matrix is symmetric positive definite):
    ~5x faster than a general inverse at 8,000 movies, computed in one copy of ``gram``."""
    a = gram.copy()
    a[np.diag_indices_from(a)] += lam
    # LAPACK is column-major: the transpose of a symmetric C-ordered matrix is itself
    factor, info = lapack.spotrf(a.T, lower=0, overwrite_a=1, clean=0)
    if info == 0:
        factor, info = lapack.spotri(factor, lower=0, overwrite_c=1)
    if info != 0:
        raise np.linalg.LinAlgError(f"ridge Gram matrix is not positive definite ({info})")
    inverse = np.ascontiguousarray(factor.T)  # lower triangle valid; a view of ``a``
    for start in range(0, inverse.shape[0], block):  # mirror it into the upper one
        stop = start + block
        inverse[:start, start:stop] = inverse[start:stop, :start].T
        diagonal = inverse[start:stop, start:stop]
        upper = np.triu_indices(diagonal.shape[0], 1)
        diagonal[upper] = diagonal.T[upper]
    return inverse


def _most_rated(counts: np.ndarray, max_movies: int) -> np.ndarray:
    rated = np.flatnonzero(counts > 0)
    if rated.size <= max_movies:
        return rated
    top = rated[np.argsort(-counts[rated], kind="stable")[:max_movies]]
    return np.sort(top)


def _pruned(
    b: np.ndarray, kept: np.ndarray, n_movies: int, neighbors: int, block: int = 1024
) -> sp.csr_matrix:
    """Keep each source row's ``neighbors`` largest |weights|, placed on the full catalog
    (a block of rows at a time: the whole argpartition would hold n² int64 indices)."""
    k = min(neighbors, b.shape[1])
    tops = []
    for start in range(0, b.shape[0], block):
        rows = b[start : start + block]
        if k < b.shape[1]:
            # a copy: the slice of a view would keep the whole block's int64 indices alive
            tops.append(np.argpartition(-np.abs(rows), k - 1, axis=1)[:, :k].copy())
        else:
            tops.append(np.broadcast_to(np.arange(b.shape[1]), rows.shape))
    top = np.concatenate(tops) if tops else np.zeros((0, k), dtype=np.int64)
    rows = np.repeat(kept, top.shape[1])
    cols = kept[top].reshape(-1)
    values = np.take_along_axis(b, top, axis=1).reshape(-1)
    nonzero = values != 0
    weights = sp.csr_matrix(
        (values[nonzero], (rows[nonzero], cols[nonzero])), shape=(n_movies, n_movies)
    )
    weights.sort_indices()
    return weights
