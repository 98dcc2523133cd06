"""Inference: the one forward pass that evaluation, /predictions and /recommendations share.

A trained model (`app.ml.hybrid.HybridModel`) has up to four parts: the deep autoencoder's
ranking snapshot, its rating snapshot (each kept at its own best validation epoch), the
linear item-to-item path and the bias terms the rating head is built on. `FoldInScorer`
turns a user's current ratings into scores and predicted ratings from numpy copies of
those parts, for one user (the request hot path: the first layer gathers only the weight
rows of the rated movies, the rating head runs only for the movies asked for) or for a
batch of users (evaluation), with the same feature and blend functions either way.
The torch forward (`StackedAutoencoder.forward`) is the training-side definition; a test
pins this pass to it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import scipy.sparse as sp

if TYPE_CHECKING:
    from app.ml.hybrid import Blend, HybridModel
    from app.ml.model import StackedAutoencoder

Array = np.ndarray
SELU_ALPHA, SELU_SCALE = 1.6732632423543772, 1.0507009873554805


def _sigmoid(x: Array) -> Array:
    return 0.5 * (np.tanh(0.5 * x) + 1.0)  # overflow-free logistic


def _selu(x: Array) -> Array:
    return SELU_SCALE * np.where(x > 0, x, SELU_ALPHA * np.expm1(np.minimum(x, 0)))


ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "sigmoid": _sigmoid,
    "tanh": np.tanh,
    "relu": lambda x: np.maximum(x, 0),
    "selu": _selu,
}


def _np(tensor: object) -> Array:
    return tensor.detach().cpu().numpy().astype(np.float32, copy=True)  # type: ignore[attr-defined]


class Features(NamedTuple):
    """The encoder's sparse input as (row, column, value) triplets over a batch."""

    rows: Array
    cols: Array
    values: Array


class NetWeights:
    """Numpy copies of one eval-mode autoencoder snapshot."""

    def __init__(self, net: StackedAutoencoder) -> None:
        config = net.config
        self.inputs = config.inputs
        self.residual = config.rating_head == "residual"
        self.user_bias_reg = config.user_bias_reg
        self.n_movies = net.n_movies
        self.activation = ACTIVATIONS[config.activation]
        self.first_t = np.ascontiguousarray(_np(net.layers[0].weight).T)  # in_dim x hidden
        self.first_bias = _np(net.layers[0].bias)
        self.deeper = [(_np(layer.weight), _np(layer.bias)) for layer in net.layers[1:]]
        self.base = _np(net.global_mean + net.movie_bias)
        self.rank = (
            (_np(net.rank_out.weight), _np(net.rank_out.bias)) if net.rank_out is not None else None
        )
        self.rate_w, self.rate_b = _np(net.rate_out.weight), _np(net.rate_out.bias)

    def user_biases(self, rows: Array, cols: Array, values: Array, counts: Array) -> Array:
        resid = np.bincount(rows, values - self.base[cols], minlength=counts.size)
        return (resid / (counts + self.user_bias_reg)).astype(np.float32)

    def features(self, rows: Array, cols: Array, values: Array, counts: Array) -> Features:
        """Indicator and bias-centred ratings, each scaled by 1/sqrt(n), as in training."""
        if self.inputs == "ratings":
            return Features(rows, cols, values)
        norm = (np.maximum(counts, 1.0) ** -0.5).astype(np.float32)[rows]
        if self.inputs == "implicit":
            return Features(rows, cols, norm)
        bias = self.user_biases(rows, cols, values, counts)
        centred = (values - self.base[cols] - bias[rows]) * norm
        return Features(
            np.concatenate([rows, rows]),
            np.concatenate([cols, cols + self.n_movies]),
            np.concatenate([norm, centred]),
        )

    def hidden(self, first: Array) -> Array:
        """Activations of the last hidden layer given the first layer's pre-activation."""
        h = self.activation(first + self.first_bias)
        for weight, bias in self.deeper:
            h = self.activation(h @ weight.T + bias)
        return h.astype(np.float32, copy=False)

    def encode_user(self, cols: Array, values: Array) -> tuple[Array, float]:
        counts = np.array([float(cols.size)], dtype=np.float32)
        rows = np.zeros(cols.size, dtype=np.int64)
        f = self.features(rows, cols, values, counts)
        h = self.hidden(f.values @ self.first_t[f.cols])
        return h, float(self.user_biases(rows, cols, values, counts)[0])

    def encode_rows(self, csr: sp.csr_matrix) -> tuple[Array, Array]:
        counts = np.diff(csr.indptr).astype(np.float32)
        rows = np.repeat(np.arange(csr.shape[0]), np.diff(csr.indptr))
        cols, values = csr.indices.astype(np.int64), csr.data.astype(np.float32)
        f = self.features(rows, cols, values, counts)
        width = self.first_t.shape[0]
        x = sp.csr_matrix((f.values, (f.rows, f.cols)), shape=(csr.shape[0], width))
        return self.hidden(np.asarray(x @ self.first_t)), self.user_biases(
            rows, cols, values, counts
        )

    def logits(self, h: Array) -> Array:
        """Ranking scores over the catalog (the rating head when there is no ranking head)."""
        if self.rank is None:
            return self.ratings(h, np.zeros(h.shape[0], np.float32), None)
        weight, bias = self.rank
        return h @ weight.T + bias

    def ratings(self, h: Array, user_bias: Array, cols: Array | None) -> Array:
        """Unclamped rating-head output for movie indices ``cols`` (None = all)."""
        weight = self.rate_w if cols is None else self.rate_w[cols]
        out = h @ weight.T + (self.rate_b if cols is None else self.rate_b[cols])
        if self.residual:
            base = self.base if cols is None else self.base[cols]
            out = out + base + user_bias[:, None]
        return out


class Components(NamedTuple):
    """Each part's output for a batch of users, before blending (B x n_movies each); the
    two ranking parts are already standardised per user."""

    deep_scores: Array
    item_scores: Array | None
    deep_ratings: Array
    bias_ratings: Array


def zscore(a: Array) -> Array:
    """Per-user standardisation, so parts on different scales can be mixed by weights."""
    mean = a.mean(axis=1, keepdims=True)
    std = a.std(axis=1, keepdims=True)
    return (a - mean) / (std + 1e-6)


@dataclass(frozen=True)
class UserState:
    """One user's encoding: what the scores and ratings of any movie need."""

    rank_hidden: Array
    rate_hidden: Array
    deep_user_bias: float
    bias_user_bias: float
    cols: Array


class FoldInScorer:
    """A user's current ratings in, ranking scores and clamped predicted ratings out."""

    def __init__(self, model: HybridModel) -> None:
        self.n_movies = model.n_movies
        self.rank_net = NetWeights(model.rank_net)
        self.rate_net = (
            self.rank_net if model.rate_net is model.rank_net else NetWeights(model.rate_net)
        )
        self.item_path = model.item_path
        self.bias = model.bias
        self.blend = model.blend
        self.popularity = model.log_popularity.astype(np.float32)
        self.scale = model.rating_scale

    # -- one user (serving) ------------------------------------------------------------
    def encode(self, cols: Array, values: Array) -> UserState:
        """State for ratings ``values`` of movie indices ``cols`` (unique, valid)."""
        idx = np.asarray(cols, dtype=np.int64)
        vals = np.asarray(values, dtype=np.float32)
        rank_h, deep_bias = self.rank_net.encode_user(idx, vals)
        rate_h = (
            rank_h if self.rate_net is self.rank_net else self.rate_net.encode_user(idx, vals)[0]
        )
        return UserState(rank_h, rate_h, deep_bias, self.bias.user_bias(idx, vals), idx)

    def scores(self, state: UserState) -> Array:
        """Blended ranking scores for every movie (higher = recommend first)."""
        deep = zscore(self.rank_net.logits(state.rank_hidden[None, :]))
        item = None
        if self.item_path is not None and self.blend.item_weight > 0:
            item = zscore(self.item_path.score_user(state.cols)[None, :])
        return self.blend_scores(deep, item, self.blend)[0]

    def ratings(self, state: UserState, cols: Array) -> Array:
        """Predicted ratings, clamped to the rating scale, for movie indices ``cols`` only."""
        idx = np.asarray(cols, dtype=np.int64)
        deep_bias = np.array([state.deep_user_bias], dtype=np.float32)
        deep = self.rate_net.ratings(state.rate_hidden[None, :], deep_bias, idx)[0]
        bias = self.bias.predict(state.bias_user_bias, idx)
        return self.blend_ratings(deep, bias, self.blend.rating_weight)

    # -- a batch of users (evaluation) -----------------------------------------------------
    def components(self, rows: sp.csr_matrix) -> Components:
        csr = sp.csr_matrix(rows, dtype=np.float32)
        rank_h, deep_bias = self.rank_net.encode_rows(csr)
        rate_h = rank_h if self.rate_net is self.rank_net else self.rate_net.encode_rows(csr)[0]
        item = zscore(self.item_path.score_rows(csr)) if self.item_path is not None else None
        bias = self.bias.user_biases(csr)
        return Components(
            zscore(self.rank_net.logits(rank_h)),
            item,
            self.rate_net.ratings(rate_h, deep_bias, None),
            self.bias.mean + self.bias.movie_bias[None, :] + bias[:, None],
        )

    def score_rows(self, rows: sp.csr_matrix) -> tuple[Array, Array]:
        """(scores, clamped ratings) for each row of current ratings: a metrics Scorer."""
        return self.combine(self.components(rows), self.blend)

    def combine(self, parts: Components, blend: Blend) -> tuple[Array, Array]:
        """Blend precomputed parts with ``blend`` (training tries several on one pass)."""
        scores = self.blend_scores(parts.deep_scores, parts.item_scores, blend)
        ratings = self.blend_ratings(parts.deep_ratings, parts.bias_ratings, blend.rating_weight)
        return scores, ratings

    # -- the blend, shared by both paths -----------------------------------------------------
    def blend_scores(self, deep: Array, item: Array | None, blend: Blend) -> Array:
        """Mix standardised deep and item-path scores, then penalise popularity."""
        if item is None or blend.item_weight <= 0:
            mixed = deep.copy()
        else:
            mixed = (1.0 - blend.item_weight) * deep + blend.item_weight * item
        if blend.popularity_penalty:
            mixed -= blend.popularity_penalty * self.popularity
        return mixed.astype(np.float32, copy=False)

    def blend_ratings(self, deep: Array, bias: Array, weight: float) -> Array:
        """``weight`` of the deep rating head, the rest bias terms, clamped to the scale."""
        mixed = weight * deep + (1.0 - weight) * bias
        return np.clip(mixed, *self.scale).astype(np.float32, copy=False)
