"""The trained model as served: deep snapshots, the item path, bias terms and their blend.

Training keeps each head of the autoencoder at its own best validation epoch (ranking by
NDCG@10, rating by RMSE), fits the linear item-to-item path on the same training split,
and then chooses on validation how to mix them:

* ranking = (1 - w) * z(deep scores) + w * z(item path) - p * log(1 + popularity);
* rating = a * rating network + b * the ranking network's own rating head
  + c * the fold-in matrix factorisation (`app.ml.factors`) + (1 - a - b - c) * bias
  terms, so ``a = b = c = 0`` is the bias model and the served rating is never worse on
  validation than the bias model it is built on.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import scipy.sparse as sp

from app.ml.baselines import Bias
from app.ml.config import ModelConfig
from app.ml.data import RatingMatrix
from app.ml.factors import ItemFactors
from app.ml.item_path import ItemToItem
from app.ml.model import StackedAutoencoder


@dataclass(frozen=True)
class BiasTerms:
    """mean + movie bias + a user bias folded in from the user's own ratings."""

    mean: float
    movie_bias: np.ndarray
    user_reg: float

    @classmethod
    def fit(cls, train: RatingMatrix, movie_reg: float, user_reg: float) -> BiasTerms:
        bias = Bias(reg_movie=movie_reg, reg_user=user_reg)
        bias.fit(train)
        return cls(float(bias.mean), bias.movie_bias.astype(np.float32), float(user_reg))

    def user_biases(self, rows: sp.csr_matrix) -> np.ndarray:
        """Each row's user bias, folded in from its ratings."""
        users = np.repeat(np.arange(rows.shape[0]), np.diff(rows.indptr))
        return self.user_biases_of(users, rows.indices, rows.data, rows.shape[0])

    def user_biases_of(
        self, users: np.ndarray, cols: np.ndarray, values: np.ndarray, n_users: int
    ) -> np.ndarray:
        """`user_biases` of ratings given as (user, movie index, rating) triplets."""
        resid = values - self.mean - self.movie_bias[cols]
        sums = np.bincount(users, resid, minlength=n_users)
        counts = np.bincount(users, minlength=n_users)
        return (sums / (counts + self.user_reg)).astype(np.float32)

    def residuals(self, rows: sp.csr_matrix, user_bias: np.ndarray | None = None) -> sp.csr_matrix:
        """Each rating minus its bias terms (the user's bias folded in from the row, unless
        ``user_bias`` gives the rows' already): what the matrix factorisation fits and
        folds users in from."""
        csr = sp.csr_matrix(rows, dtype=np.float32)
        users = np.repeat(np.arange(csr.shape[0]), np.diff(csr.indptr))
        user_bias = self.user_biases(csr) if user_bias is None else user_bias
        bias = self.predict(user_bias[users], csr.indices)
        return sp.csr_matrix((csr.data - bias, csr.indices, csr.indptr), shape=csr.shape)

    def predict(self, user_bias: float | np.ndarray, cols: np.ndarray) -> np.ndarray:
        """At movie indices ``cols``: one user's bias, or each cell's user's."""
        return self.mean + self.movie_bias[cols] + np.float32(user_bias)


@dataclass(frozen=True)
class Blend:
    """How the parts are mixed; every field chosen on the validation split."""

    item_weight: float = 0.0
    """share of the item path in the ranking score, 0..1."""
    popularity_penalty: float = 0.0
    """subtracted per unit of log(1 + rating count): spreads recommendations past the head."""
    rating_weight: float = 1.0
    """share of the rating network's prediction, 0..1."""
    joint_rating_weight: float = 0.0
    """share of the ranking network's own rating head, 0..1 - rating_weight; the rest is
    the bias terms. The two networks err differently: together they beat either."""
    factor_weight: float = 0.0
    """share of the fold-in matrix factorisation, 0..1 - the two networks' shares."""


@dataclass(frozen=True)
class ValidatedParts:
    """The fitted parts as validated, before their refit on every rating: what the quality
    gate scores, since the refitted ones have trained on the validation ratings. A part the
    refit left alone is the served object itself (stored once)."""

    rank_net: StackedAutoencoder
    rate_net: StackedAutoencoder
    item_path: ItemToItem | None
    bias: BiasTerms
    log_popularity: np.ndarray
    factors: ItemFactors | None = None


@dataclass(frozen=True)
class HybridModel:
    """Everything the scorer needs (`app.ml.scoring.FoldInScorer`), as plain data.
    ``rate_net`` serves ratings: the rating-only network, or the joint network's best rating
    epoch (``rank_net`` itself when one epoch won both)."""

    config: ModelConfig
    rank_net: StackedAutoencoder
    rate_net: StackedAutoencoder
    item_path: ItemToItem | None
    bias: BiasTerms
    blend: Blend
    log_popularity: np.ndarray
    rating_scale: tuple[float, float]
    validated: ValidatedParts | None = None
    """the parts before `app.ml.train.refit_on_all` (None: never refitted)."""
    factors: ItemFactors | None = None
    """the matrix factorisation's item factors (None where the blend gives it no share)."""

    @property
    def n_movies(self) -> int:
        return self.rank_net.n_movies

    def with_blend(self, blend: Blend) -> HybridModel:
        return replace(self, blend=blend)

    def parts(self) -> ValidatedParts:
        """The fitted parts as they are now (what a refit starts from)."""
        return ValidatedParts(
            self.rank_net,
            self.rate_net,
            self.item_path,
            self.bias,
            self.log_popularity,
            self.factors,
        )

    def as_validated(self) -> HybridModel:
        """The model as validated: none of its parts saw the validation ratings."""
        if self.validated is None:
            return self
        v = self.validated
        return replace(
            self,
            rank_net=v.rank_net,
            rate_net=v.rate_net,
            item_path=v.item_path,
            bias=v.bias,
            log_popularity=v.log_popularity,
            factors=v.factors,
            validated=None,
        )


def log_popularity(train: sp.csr_matrix) -> np.ndarray:
    return np.log1p(np.bincount(train.indices, minlength=train.shape[1])).astype(np.float32)
