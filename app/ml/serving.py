"""Fast fold-in for one user at a time: the forward pass of the serving hot path.

`StackedAutoencoder.forward` takes dense B x n_movies batches, right for training. A
request scores one user who rated perhaps 1-5 % of the movies, so here the first layer
gathers only the weight rows of the rated movies (an embedding-bag), and the rating head
is evaluated only for the movies a caller asks for (the top n), not for all of them.
The result is the model's own eval-mode output; tests compare it with `forward`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from app.ml.model import StackedAutoencoder


@dataclass(frozen=True)
class UserState:
    """One user's encoding: hidden activations plus the bias terms of the rating head."""

    hidden: torch.Tensor
    user_bias: float


class FoldInScorer:
    """Precomputed weights of one (eval-mode) model for single-user inference."""

    def __init__(self, model: StackedAutoencoder) -> None:
        model.eval()
        self.model = model
        self.config = model.config
        self.n_movies = model.n_movies
        with torch.no_grad():
            first = model.layers[0]
            self._first_weight_t = first.weight.detach().t().contiguous()  # in_dim x hidden
            self._first_bias = first.bias.detach()
            self._base = (model.global_mean + model.movie_bias).detach()
            self._rate_w = model.rate_out.weight.detach()
            self._rate_b = model.rate_out.bias.detach()
        self._scale = tuple(float(v) for v in model.rating_scale)

    def encode(self, cols: np.ndarray, values: np.ndarray) -> UserState:
        """Hidden state for ratings `values` of movie indices `cols` (unique, valid)."""
        cfg = self.config
        idx = torch.from_numpy(np.asarray(cols, dtype=np.int64))
        vals = torch.from_numpy(np.asarray(values, dtype=np.float32))
        n = float(len(cols))
        base = self._base[idx]
        user_bias = float((vals - base).sum()) / (n + cfg.user_bias_reg)
        feature_idx, feature_vals = self._features(idx, vals, base + user_bias, n)
        with torch.inference_mode():
            h = feature_vals @ self._first_weight_t[feature_idx] + self._first_bias
            h = self.model.activation(h)
            for layer in self.model.layers[1:]:
                h = self.model.activation(layer(h))
        return UserState(h, user_bias)

    def _features(
        self, idx: torch.Tensor, vals: torch.Tensor, baseline: torch.Tensor, n: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.config.inputs == "ratings":
            return idx, vals
        norm = max(n, 1.0) ** -0.5
        implicit = torch.full_like(vals, norm)
        if self.config.inputs == "implicit":
            return idx, implicit
        centred = (vals - baseline) * norm
        return torch.cat([idx, idx + self.n_movies]), torch.cat([implicit, centred])

    def scores(self, state: UserState) -> np.ndarray:
        """Ranking scores for every movie (higher = recommend first)."""
        with torch.inference_mode():
            if self.model.rank_out is not None:
                out = self.model.rank_out(state.hidden)
            else:
                out = self._ratings_tensor(state, None)
        return out.numpy()

    def ratings(self, state: UserState, cols: np.ndarray) -> np.ndarray:
        """Predicted ratings, clamped to the rating scale, for movie indices `cols` only."""
        idx = torch.from_numpy(np.asarray(cols, dtype=np.int64))
        with torch.inference_mode():
            out = self._ratings_tensor(state, idx)
        return out.clamp(*self._scale).numpy()

    def _ratings_tensor(self, state: UserState, idx: torch.Tensor | None) -> torch.Tensor:
        weight = self._rate_w if idx is None else self._rate_w[idx]
        bias = self._rate_b if idx is None else self._rate_b[idx]
        out = weight @ state.hidden + bias
        if self.config.rating_head == "residual":
            base = self._base if idx is None else self._base[idx]
            out = out + base + state.user_bias
        return out
