"""Reference recommenders, scored with exactly the same protocol as the autoencoder.

Every baseline is fitted on the training RatingMatrix and then called like a Scorer on
rows of training ratings (so user-dependent parts are folded in from the row itself).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import scipy.sparse as sp

from app.ml.data import RatingMatrix

ScorerOutput = tuple[np.ndarray | None, np.ndarray | None]


class Baseline:
    """Base class: ``fit`` learns from training data, ``__call__`` scores rows."""

    name = "baseline"
    fit_seconds = 0.0

    def fit(self, train: RatingMatrix) -> Baseline:
        started = time.perf_counter()
        self._fit(train)
        self.fit_seconds = time.perf_counter() - started
        return self

    def _fit(self, train: RatingMatrix) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def __call__(self, rows: sp.csr_matrix) -> ScorerOutput:  # pragma: no cover
        raise NotImplementedError


class RandomRanking(Baseline):
    """Uniformly random scores (the floor every ranking must beat)."""

    name = "random ranking"

    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)

    def _fit(self, train: RatingMatrix) -> None:
        self.n_movies = train.shape[1]

    def __call__(self, rows: sp.csr_matrix) -> ScorerOutput:
        return self.rng.random((rows.shape[0], self.n_movies)), None


class GlobalMean(Baseline):
    """Predicts the training mean for every rating."""

    name = "global mean"

    def _fit(self, train: RatingMatrix) -> None:
        self.mean = train.mean()
        self.n_movies = train.shape[1]

    def __call__(self, rows: sp.csr_matrix) -> ScorerOutput:
        return None, np.full((rows.shape[0], self.n_movies), self.mean, dtype=np.float32)


class Popularity(Baseline):
    """Ranks movies by their number of training ratings."""

    name = "popularity (rating count)"

    def _fit(self, train: RatingMatrix) -> None:
        self.counts = np.bincount(train.matrix.indices, minlength=train.shape[1]).astype(np.float64)

    def __call__(self, rows: sp.csr_matrix) -> ScorerOutput:
        return np.broadcast_to(self.counts, (rows.shape[0], self.counts.size)), None


class Bias(Baseline):
    """mean + movie bias + user bias (regularised means); ranked by predicted rating."""

    name = "user + movie bias"

    def __init__(self, reg_movie: float = 3.0, reg_user: float = 3.0, iterations: int = 10) -> None:
        self.reg_movie = reg_movie
        self.reg_user = reg_user
        self.iterations = iterations

    def _fit(self, train: RatingMatrix) -> None:
        """Alternating regularised means; user biases are re-derived per row at scoring."""
        self.mean = train.mean()
        coo = train.matrix.tocoo()
        n_users, n_movies = train.shape
        user_counts = np.bincount(coo.row, minlength=n_users)
        movie_counts = np.bincount(coo.col, minlength=n_movies)
        user_bias = np.zeros(n_users)
        for _ in range(self.iterations):
            resid = coo.data - self.mean - user_bias[coo.row]
            self.movie_bias = np.bincount(coo.col, resid, n_movies) / (
                movie_counts + self.reg_movie
            )
            resid = coo.data - self.mean - self.movie_bias[coo.col]
            user_bias = np.bincount(coo.row, resid, n_users) / (user_counts + self.reg_user)

    def __call__(self, rows: sp.csr_matrix) -> ScorerOutput:
        rows = sp.csr_matrix(rows)
        coo = rows.tocoo()
        resid = coo.data - self.mean - self.movie_bias[coo.col]
        counts = np.diff(rows.indptr)
        user_bias = np.bincount(coo.row, resid, minlength=rows.shape[0]) / (counts + self.reg_user)
        pred = self.mean + self.movie_bias[None, :] + user_bias[:, None]
        return pred, pred


class EASE(Baseline):
    """EASE (Steck 2019): closed-form item-item linear autoencoder on the rated indicator.

    Fitted in whichever form is smaller: the movies x movies weights, or, where there are
    fewer users than movies (the catalog-heavy sets), the dual `EaseDual`: a 20,000-movie
    catalog's primal inverse is 1.6 GB and minutes of work, its 1,500-user dual a second.
    """

    name = "EASE"

    def __init__(self, lam: float = 250.0, form: Literal["smaller", "primal", "dual"] = "smaller"):
        self.lam = lam
        self.form = form
        self.name = f"EASE (lambda {lam:g})"

    def _fit(self, train: RatingMatrix) -> None:
        x = (train.matrix > 0).astype(np.float64)
        self.dual: EaseDual | None = None
        fewer_users = x.shape[0] < x.shape[1]
        if self.form == "dual" or (self.form == "smaller" and fewer_users):
            self.dual = EaseDual.fit(x, self.lam)
            return
        gram = (x.T @ x).toarray()
        gram[np.diag_indices_from(gram)] += self.lam
        inv = np.linalg.inv(gram)
        b = -inv / np.diag(inv)[None, :]
        np.fill_diagonal(b, 0.0)
        self.weights = b.astype(np.float32)

    def __call__(self, rows: sp.csr_matrix) -> ScorerOutput:
        x = (sp.csr_matrix(rows) > 0).astype(np.float32)
        if self.dual is not None:
            return self.dual.scores(x), None
        return np.asarray(x @ self.weights), None


@dataclass(frozen=True)
class EaseDual:
    """EASE through users x users systems (Woodbury), never movies x movies.

    P = (X'X + lambda I)^-1 = (I - X' K^-1 X) / lambda with K = X X' + lambda I, and EASE's
    scores x B = x - (x P) / diag(P): the same model as the primal weights, at a cost
    linear in the catalog.
    """

    x: sp.csr_matrix
    k_inv_x: np.ndarray  # K^-1 X, users x movies
    diag_p: np.ndarray
    lam: float

    @classmethod
    def fit(cls, x: sp.csr_matrix, lam: float) -> EaseDual:
        x = sp.csr_matrix(x, dtype=np.float64)
        gram_users = (x @ x.T).toarray()
        gram_users[np.diag_indices_from(gram_users)] += lam
        k_inv_x = np.linalg.solve(gram_users, x.toarray())
        diag_p = (1.0 - np.asarray(x.multiply(k_inv_x).sum(axis=0)).ravel()) / lam
        return cls(x, k_inv_x, diag_p, lam)

    def scores(self, rows: sp.csr_matrix) -> np.ndarray:
        dense = rows.astype(np.float64).toarray()
        xp = (dense - (rows @ self.x.T).toarray() @ self.k_inv_x) / self.lam  # x P
        return dense - xp / self.diag_p


BASELINES: dict[str, Callable[[], Baseline]] = {
    "random ranking": RandomRanking,
    "global mean": GlobalMean,
    "user + movie bias": Bias,
    "popularity (rating count)": Popularity,
    "EASE (lambda 250)": lambda: EASE(250.0),
}
