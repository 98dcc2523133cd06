"""The linear item-to-item path: a shallow, closed-form autoencoder beside the deep one.

EASE (Steck 2019) is itself an autoencoder: one item x item weight matrix with a zero
diagonal, fitted in closed form. Ours differs in two ways that measure better on every
data set we have (ml-100k u1, ml-1m-half, a sparse ml-100k subsample):

* which ratings count is chosen on validation among three variants (`VARIANTS`): the
  rated indicator as input with a target that weights *liked* movies up
  (``X + c * liked``, so "rated it" predicts "will like it"), plain EASE on every rating,
  and plain EASE on the liked ratings alone (input and target). The last is the strongest
  cheap peer on ml-100k; the first wins on others. Choosing keeps the path at least as
  good on validation as the better of the two EASE variants, on every data set;
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
    """Sparse weights, row = source movie (one the user rated at least ``min_rating``, or
    any rating when None), column = scored movie."""

    weights: sp.csr_matrix
    lam: float
    min_rating: float | None = None
    liked_weight: float = 0.0

    @property
    def n_movies(self) -> int:
        return int(self.weights.shape[0])

    def sources(self, cols: np.ndarray, values: np.ndarray) -> np.ndarray:
        """The movie indices among a user's ratings that feed the path."""
        return cols if self.min_rating is None else cols[values >= self.min_rating]

    def score_rows(self, rows: sp.csr_matrix) -> np.ndarray:
        """Scores for a batch of users' rating rows (B x n_movies, dense)."""
        indicator = input_indicator(rows, self.min_rating)
        return np.asarray((indicator @ self.weights).toarray(), dtype=np.float32)


@dataclass(frozen=True)
class Variant:
    """Which ratings are the path's input (``min_rating``; None = every rating) and how much
    extra target weight liked movies get (``liked_weight``; 0 = plain EASE)."""

    min_rating: float | None
    liked_weight: float


def variants(liked_weight: float, threshold: float) -> tuple[Variant, ...]:
    """The variants tried on validation: ours (rated input, liked-weighted target), EASE on
    every rating, EASE on the liked ratings alone (its target weight changes nothing: with
    liked input the target is the input scaled)."""
    ours = Variant(None, liked_weight)
    every, liked = Variant(None, 0.0), Variant(threshold, 0.0)
    return tuple(dict.fromkeys((ours, every, liked)))


def input_indicator(rows: sp.csr_matrix, min_rating: float | None) -> sp.csr_matrix:
    """1 where a rating feeds the path (every rating, or those at least ``min_rating``)."""
    indicator = sp.csr_matrix(rows, dtype=np.float32, copy=True)
    if min_rating is not None:
        indicator.data = (indicator.data >= min_rating).astype(np.float32)
        indicator.eliminate_zeros()
    else:
        indicator.data[:] = 1.0
    return indicator


def lambda_candidates(train: sp.csr_matrix) -> list[float]:
    """Ridge strengths to try: around 10x the mean rating count of a rated movie (of the
    ratings that are the path's input).

    EASE's best lambda grows with how often movies are rated (500 on ml-100k's u1 with ~48
    ratings per movie, 1000 on ml-1m-half with ~100); the grid spans 4x either way.
    """
    centre = lambda_centre(train)
    return [round(centre * f, 1) for f in LAMBDA_FACTORS]


LAMBDA_FACTORS = (0.5, 1.0, 2.0)


def lambda_centre(train: sp.csr_matrix) -> float:
    """10x the mean rating count of a rated movie (`lambda_candidates`' middle)."""
    counts = np.bincount(train.indices, minlength=train.shape[1])
    rated = counts[counts > 0]
    return round(10.0 * float(rated.mean()), 1) if rated.size else 100.0


@dataclass(frozen=True)
class CoOccurrence:
    """What the closed form takes from the ratings whatever the ridge strength, over the
    kept (most-rated) movies: ``X'X`` and ``X'L`` (X the input indicator, L the liked one).

    Computed once for all the lambdas tried: at 10M ratings each sparse product takes
    ~20 s. float32 throughout: the ridge keeps the Gram matrix well conditioned, and half
    the memory is what lets thousands of movies fit beside training.
    """

    kept: np.ndarray
    n_movies: int
    gram: np.ndarray
    co_liked: np.ndarray

    min_rating: float | None = None

    @classmethod
    def of(
        cls,
        train: sp.csr_matrix,
        threshold: float,
        max_movies: int,
        min_rating: float | None = None,
    ) -> CoOccurrence:
        """Over the ``max_movies`` movies with the most input ratings (``min_rating``)."""
        x = input_indicator(train, min_rating)
        counts = np.bincount(x.indices, minlength=x.shape[1])
        kept = _most_rated(counts, max_movies)
        sub = sp.csr_matrix(train[:, kept], dtype=np.float32)
        liked = (sub >= threshold).astype(np.float32).tocsc()
        del sub
        x_t = x[:, kept].T.tocsr()  # movies x users; its transpose is X in CSC, no copy
        gram = _dense_product(x_t, x_t.T)
        return cls(kept, train.shape[1], gram, _dense_product(x_t, liked), min_rating)


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
    diag_pc = 0.0  # diag(P X'L), the liked target's share (plain EASE: none)
    if liked_weight:
        diag_pc = np.einsum("ij,ji->i", b, co.co_liked, dtype=np.float64)
    mu = (liked_weight * diag_pc - lam * diag_p + 1.0) / diag_p
    scale = (lam + mu).astype(np.float32)[None, :]
    for start in range(0, b.shape[0], block):
        rows = b[start : start + block]
        if liked_weight:
            product = rows @ co.co_liked
            product *= liked_weight
            rows *= scale
            product -= rows
            rows[:] = product
        else:
            rows *= -scale
    np.fill_diagonal(b, 0.0)  # I's only entries, and the corrected diagonal (0 up to rounding)
    weights = _pruned(b, co.kept, co.n_movies, neighbors)
    return ItemToItem(weights, float(lam), co.min_rating, float(liked_weight))


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


def refitted(
    path: ItemToItem,
    before: sp.csr_matrix,
    after: sp.csr_matrix,
    threshold: float,
    max_movies: int,
    neighbors: int,
) -> ItemToItem:
    """The same variant fitted on ``after`` (``before`` and the ratings validation held
    out), its ridge strength grown with the count of input ratings: the best strength
    follows how often movies are rated (`lambda_candidates`)."""
    grown = input_indicator(after, path.min_rating).nnz
    scale = grown / max(input_indicator(before, path.min_rating).nnz, 1)
    co = CoOccurrence.of(after, threshold, max_movies, path.min_rating)
    return fit_item_to_item(co, path.lam * scale, path.liked_weight, neighbors)
