"""Fast fold-in for one user at a time: the forward pass of the serving hot path.

`StackedAutoencoder.forward` takes dense B x n_movies batches, right for training. A
request scores one user who rated perhaps 1-5 % of the movies, so here the first layer
gathers only the weight rows of the rated movies (an embedding-bag), and the rating head
is evaluated only for the movies a caller asks for (the top n), not for all of them.
It runs on numpy copies of the weights: for one vector, per-call overhead is what costs,
and numpy's is a fraction of torch's. Tests pin the result to the model's own forward.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

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


@dataclass(frozen=True)
class UserState:
    """One user's encoding: last hidden activations and the user's rating bias."""

    hidden: Array
    user_bias: float


class FoldInScorer:
    """Numpy copies of one (eval-mode) model's weights, for single-user inference."""

    def __init__(self, model: StackedAutoencoder) -> None:
        model.eval()
        self.config = model.config
        self.n_movies = model.n_movies
        self._activation = ACTIVATIONS[model.config.activation]
        first = model.layers[0]
        self._first_weight_t = np.ascontiguousarray(_np(first.weight).T)  # in_dim x hidden
        self._first_bias = _np(first.bias)
        self._deeper = [(_np(layer.weight), _np(layer.bias)) for layer in model.layers[1:]]
        self._base = _np(model.global_mean + model.movie_bias)
        self._rank = (
            (_np(model.rank_out.weight), _np(model.rank_out.bias))
            if model.rank_out is not None
            else None
        )
        self._rate_w, self._rate_b = _np(model.rate_out.weight), _np(model.rate_out.bias)
        self._scale = tuple(float(v) for v in model.rating_scale)

    def encode(self, cols: Array, values: Array) -> UserState:
        """Hidden state for ratings `values` of movie indices `cols` (unique, valid)."""
        idx = np.asarray(cols, dtype=np.int64)
        vals = np.asarray(values, dtype=np.float32)
        n = float(idx.size)
        base = self._base[idx]
        user_bias = float((vals - base).sum()) / (n + self.config.user_bias_reg)
        feature_idx, feature_vals = self._features(idx, vals, base + user_bias, n)
        h = self._activation(feature_vals @ self._first_weight_t[feature_idx] + self._first_bias)
        for weight, bias in self._deeper:
            h = self._activation(weight @ h + bias)
        return UserState(h.astype(np.float32, copy=False), user_bias)

    def _features(self, idx: Array, vals: Array, baseline: Array, n: float) -> tuple[Array, Array]:
        if self.config.inputs == "ratings":
            return idx, vals
        norm = np.float32(max(n, 1.0) ** -0.5)
        implicit = np.full(idx.size, norm, dtype=np.float32)
        if self.config.inputs == "implicit":
            return idx, implicit
        centred = (vals - baseline) * norm
        return np.concatenate([idx, idx + self.n_movies]), np.concatenate([implicit, centred])

    def scores(self, state: UserState) -> Array:
        """Ranking scores for every movie (higher = recommend first)."""
        if self._rank is None:
            return self._ratings(state, None)
        weight, bias = self._rank
        return weight @ state.hidden + bias

    def ratings(self, state: UserState, cols: Array) -> Array:
        """Predicted ratings, clamped to the rating scale, for movie indices `cols` only."""
        return np.clip(self._ratings(state, np.asarray(cols, dtype=np.int64)), *self._scale)

    def _ratings(self, state: UserState, idx: Array | None) -> Array:
        weight = self._rate_w if idx is None else self._rate_w[idx]
        bias = self._rate_b if idx is None else self._rate_b[idx]
        out = weight @ state.hidden + bias
        if self.config.rating_head == "residual":
            base = self._base if idx is None else self._base[idx]
            out = out + base + state.user_bias
        return out
