"""The stacked autoencoder: configuration, presets, network and batched prediction.

The network is user-based: its input is one user's rating vector (0 = unrated), so a user
never seen in training is served by feeding their current ratings (fold-in). A shared
encoder feeds two heads:

* a ranking head, trained with a multinomial (softmax) likelihood on *which* movies the
  user rated (the Mult-DAE / CDAE family); its logits are the recommendation scores;
* a rating head predicting ratings as residuals on top of global mean + movie bias + a
  user bias folded in from the visible input (so a new user's bias needs no training).

Training corrupts the input by masking whole ratings (denoising), so both heads learn to
predict ratings and movies they cannot see, which is exactly the serving task.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any, NamedTuple, cast

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import nn

from app.ml.config import ModelConfig
from app.ml.sparse_ops import RatingPattern, cell_dots, encode, rated_dot


@dataclass(frozen=True)
class SparseBatch:
    """A minibatch of users as (row, column, rating) triplets: training never densifies it."""

    rows: torch.Tensor
    cols: torch.Tensor
    values: torch.Tensor
    size: int

    @cached_property
    def pattern(self) -> RatingPattern:
        """Where the ratings are, computed once however many networks encode the batch."""
        return RatingPattern.of(self.rows, self.cols, self.size)

    @classmethod
    def from_csr(cls, rows: sp.csr_matrix, device: torch.device | str = "cpu") -> SparseBatch:
        csr = rows if isinstance(rows, sp.csr_matrix) else sp.csr_matrix(rows)
        users = np.repeat(np.arange(csr.shape[0], dtype=np.int64), np.diff(csr.indptr))
        return cls(
            torch.from_numpy(users).to(device),
            torch.from_numpy(csr.indices.astype(np.int64)).to(device),
            torch.from_numpy(csr.data.astype(np.float32)).to(device),
            int(csr.shape[0]),
        )


class Encoded(NamedTuple):
    """`StackedAutoencoder.encode`'s result for a batch of users: the top hidden layer,
    every hidden layer, which ratings it saw, the folded-in bias per user, and where the
    batch's ratings are."""

    h: torch.Tensor
    hidden: tuple[torch.Tensor, ...]
    visible: torch.Tensor
    user_bias: torch.Tensor
    pattern: RatingPattern


class SparseOutput(NamedTuple):
    """Training forward on a SparseBatch: ranking log-probabilities and predicted ratings
    at the batch's rated cells, which of them the encoder saw, and the hidden layers."""

    log_probs: torch.Tensor | None
    ratings: torch.Tensor
    visible: torch.Tensor
    hidden: tuple[torch.Tensor, ...]


_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "selu": nn.SELU,
}


class InputLayer(nn.Module):
    """The first layer, stored input-major (``weight_t``: in_features x out_features).

    The sparse training forward gathers the rows of the rated movies straight from this
    parameter; ``nn.Linear``'s out x in layout needed a transposed copy of the whole layer
    every batch, and again in the backward (most of a first-layer step at a 59k catalog).
    It reads and saves as ``nn.Linear`` does (``weight`` is out x in, a view), so artifacts
    and state dicts are unchanged.
    """

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight_t = nn.Parameter(torch.empty(in_features, out_features))
        self.bias = nn.Parameter(torch.zeros(out_features))

    @property
    def weight(self) -> torch.Tensor:
        """``nn.Linear``'s view of the weights (out x in), no copy."""
        return self.weight_t.t()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addmm(self.bias, x, self.weight_t)

    def _save_to_state_dict(self, destination: Any, prefix: str, keep_vars: bool) -> None:
        weight = self.weight if keep_vars else self.weight.detach()
        destination[prefix + "weight"] = weight
        destination[prefix + "bias"] = self.bias if keep_vars else self.bias.detach()

    def _load_from_state_dict(
        self, state_dict: Any, prefix: str, *args: Any, **kwargs: Any
    ) -> None:
        weight = state_dict.pop(prefix + "weight", None)
        if weight is not None:
            state_dict[prefix + "weight_t"] = weight.t()
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class StackedAutoencoder(nn.Module):
    """Encoder layers ``hidden`` (e.g. 20-10-20) followed by a ranking and a rating head."""

    global_mean: torch.Tensor
    rating_scale: torch.Tensor

    def __init__(self, n_movies: int, config: ModelConfig) -> None:
        super().__init__()
        self.n_movies = n_movies
        self.config = config
        in_dim = 2 * n_movies if config.inputs == "both" else n_movies
        sizes = (in_dim, *config.hidden)
        self.layers = nn.ModuleList(
            [InputLayer(sizes[0], sizes[1])]
            + [nn.Linear(a, b) for a, b in zip(sizes[1:], sizes[2:], strict=False)]
        )
        self.activation = _ACTIVATIONS[config.activation]()
        self.hidden_dropout = nn.Dropout(config.dropout)
        self.rank_out = nn.Linear(sizes[-1], n_movies) if config.ranking_head else None
        self.rate_out = nn.Linear(sizes[-1], n_movies)
        self.movie_bias = nn.Parameter(torch.zeros(n_movies))
        self.register_buffer("global_mean", torch.tensor(0.0))
        self.register_buffer("rating_scale", torch.tensor([1.0, 5.0]))
        for layer in [*self.layers, self.rate_out, *([self.rank_out] if self.rank_out else [])]:
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)

    @classmethod
    def from_state(
        cls, n_movies: int, config: ModelConfig, state: dict[str, torch.Tensor]
    ) -> StackedAutoencoder:
        """An eval-mode network whose weights are the tensors of ``state`` themselves: built
        on the meta device and assigned, so no initial weights are drawn only to be
        overwritten and no second copy is made (283 MB for a 59k-movie network)."""
        with torch.device("meta"):
            net = cls(n_movies, config)
        net.load_state_dict(state, strict=True, assign=True)
        return net.eval()

    @property
    def first_layer(self) -> InputLayer:
        """The input layer (the one that sees the sparse rating features)."""
        return cast(InputLayer, self.layers[0])

    def set_statistics(
        self, global_mean: float, movie_bias: np.ndarray, rating_scale: tuple[float, float]
    ) -> None:
        """Initialise the rating baseline from training data (kept in the state_dict)."""
        with torch.no_grad():
            self.global_mean.fill_(float(global_mean))
            self.movie_bias.copy_(torch.as_tensor(movie_bias, dtype=torch.float32))
            self.rating_scale.copy_(torch.tensor(rating_scale, dtype=torch.float32))

    def forward(
        self,
        batch: SparseBatch,
        negatives: torch.Tensor | None = None,
        log_q: torch.Tensor | None = None,
    ) -> SparseOutput:
        """The training forward (called through ``__call__``, so that DDP sees it):
        `encode`, then both heads at the batch's rated cells.

        The rating head runs on the batch's rated movies alone. The ranking head's softmax
        runs over the whole catalog, or, given ``negatives`` (sampled movie indices) and
        ``log_q`` (log of their sampling probability times the sample size), over each
        user's rated movies plus the corrected negatives, so the cost follows the ratings.
        """
        enc = self.encode(batch)
        ratings = self.ratings_at(enc.h, enc.user_bias, enc.pattern)
        log_probs = None
        if self.rank_out is not None:
            log_probs = self._log_probs(enc.h, enc.pattern, negatives, log_q)
        return SparseOutput(log_probs, ratings, enc.visible, enc.hidden)

    def score_cells(
        self, batch: SparseBatch, rows: torch.Tensor, cols: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """What validation needs: ranking scores over the catalog (B x n_movies) and
        predicted ratings (unclamped) at the cells (rows, cols) alone (``rows`` sorted)."""
        enc = self.encode(batch)
        cells = RatingPattern.of(rows, cols, batch.size)
        return self.rank_logits(enc.h, enc.user_bias), self.ratings_at(enc.h, enc.user_bias, cells)

    def encode(self, batch: SparseBatch) -> Encoded:
        """The network's one encoder, over a batch's rated cells: training (where it hides
        ratings at random: denoising), validation and serving all run it. The first layer
        gathers only the weight rows of the rated movies (see `sparse_ops.encode`)."""
        rows, cols, values = batch.rows, batch.cols, batch.values
        visible = torch.ones_like(values, dtype=torch.bool)
        if self.training and self.config.input_dropout > 0:
            visible = torch.rand_like(values) >= self.config.input_dropout
        vis = visible.to(values.dtype)
        n = values.new_zeros(batch.size).index_add_(0, rows, vis)
        base = self.global_mean + self.movie_bias.index_select(0, cols)
        sums = values.new_zeros(batch.size).index_add_(0, rows, (values - base) * vis)
        user_bias = sums / (n + self.config.user_bias_reg)
        pattern = batch.pattern
        # the encoder sees the baseline as a constant: biases learn through the rating head
        features = self._features(batch, vis, n, (base + user_bias.index_select(0, rows)).detach())
        first = encode(pattern, features, self.first_layer.weight_t)
        h, hidden = self.code(first)
        return Encoded(h, hidden, visible, user_bias, pattern)

    def code(self, first: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """The top hidden layer and every hidden layer, from the first layer's product
        without its bias (the rest of `encode`; the explainer feeds it leave-one-out
        products)."""
        h = first + self.first_layer.bias
        hidden = []
        for i, layer in enumerate(self.layers):
            h = layer(h) if i else h
            h = self.hidden_dropout(self.activation(h))
            hidden.append(h)
        return h, tuple(hidden)

    def rank_logits(
        self, h: torch.Tensor, user_bias: torch.Tensor, head_t: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Ranking scores over the catalog (B x n_movies): the ranking head, or the rating
        head where there is none. ``head_t``: the ranking head's weights laid out hidden x
        movies, contiguous, where a caller keeps them so (`FoldInScorer`)."""
        if self.rank_out is None:
            return self.ratings_all(h, user_bias)
        weight_t = self.rank_out.weight.t() if head_t is None else head_t
        return torch.addmm(self.rank_out.bias, h, weight_t)

    def ratings_all(self, h: torch.Tensor, user_bias: torch.Tensor) -> torch.Tensor:
        """The rating head (unclamped) over the catalog (B x n_movies)."""
        ratings = torch.addmm(self.rate_out.bias, h, self.rate_out.weight.t())
        if self.config.rating_head == "residual":
            ratings = ratings + (self.global_mean + self.movie_bias) + user_bias[:, None]
        return ratings

    def ratings_at(
        self, h: torch.Tensor, user_bias: torch.Tensor, cells: RatingPattern
    ) -> torch.Tensor:
        """The rating head (unclamped) at ``cells`` alone, for the users of ``h``."""
        ratings = cell_dots(cells, h, self.rate_out.weight)
        ratings = ratings + self.rate_out.bias.index_select(0, cells.cols)
        if self.config.rating_head == "residual":
            base = self.global_mean + self.movie_bias.index_select(0, cells.cols)
            ratings = ratings + base + user_bias.index_select(0, cells.rows)
        return ratings

    def _log_probs(
        self,
        h: torch.Tensor,
        pattern: RatingPattern,
        negatives: torch.Tensor | None,
        log_q: torch.Tensor | None,
    ) -> torch.Tensor:
        """Log-probabilities of the rated cells: exact, or over rated + sampled movies."""
        assert self.rank_out is not None
        weight, bias = self.rank_out.weight, self.rank_out.bias
        rows, cols = pattern.rows, pattern.cols
        if negatives is None or log_q is None:
            return torch.log_softmax(torch.addmm(bias, h, weight.t()), dim=1)[rows, cols]
        picked = F.embedding(torch.cat([pattern.movies, negatives]), weight)
        rated_rows, sampled_rows = picked.split([pattern.n_slots, negatives.numel()])
        rated = rated_dot(pattern, h, rated_rows) + bias[cols]
        sampled = torch.addmm(bias[negatives] - log_q, h, sampled_rows.t())
        top = sampled.max(dim=1).values.detach()
        top = top.scatter_reduce(0, rows, rated.detach(), reduce="amax")
        total = torch.exp(sampled - top[:, None]).sum(1)
        total = total.index_add(0, rows, torch.exp(rated - top[rows]))
        return rated - (top + torch.log(total))[rows]

    def _features(
        self, batch: SparseBatch, vis: torch.Tensor, n: torch.Tensor, baseline: torch.Tensor
    ) -> torch.Tensor:
        """The encoder input at the rated cells, one column per block of the first layer's
        rows: the visible ratings (``inputs="ratings"``), or the rated indicator scaled by
        1/sqrt(n) (implicit), or both it and the bias-centred ratings so scaled."""
        values = batch.values
        if self.config.inputs == "ratings":
            return (values * vis)[:, None]
        implicit = vis * n.clamp(min=1.0).rsqrt().index_select(0, batch.rows)
        if self.config.inputs == "implicit":
            return implicit[:, None]
        return torch.stack([implicit, (values - baseline) * implicit], dim=1)


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def predict(
    model: StackedAutoencoder, rows: sp.csr_matrix, batch_size: int = 1024
) -> tuple[np.ndarray, np.ndarray]:
    """(scores, clamped ratings) over the catalog for each row of current ratings, through
    `StackedAutoencoder.encode` in eval mode (the mode it found is restored).

    Works for any user, seen in training or not: the row is the user's current ratings.
    """
    rows = sp.csr_matrix(rows)
    if rows.shape[1] != model.n_movies:
        raise ValueError(f"rows have {rows.shape[1]} movies, the model {model.n_movies}")
    was_training = model.training
    model.eval()
    device = model_device(model)
    lo, hi = (float(v) for v in model.rating_scale)
    scores = np.empty(rows.shape, dtype=np.float32)
    ratings = np.empty(rows.shape, dtype=np.float32)
    try:
        with torch.inference_mode():
            for start in range(0, rows.shape[0], batch_size):
                stop = min(start + batch_size, rows.shape[0])
                enc = model.encode(SparseBatch.from_csr(rows[start:stop], device))
                scores[start:stop] = model.rank_logits(enc.h, enc.user_bias).float().cpu().numpy()
                rated = model.ratings_all(enc.h, enc.user_bias).clamp(lo, hi)
                ratings[start:stop] = rated.float().cpu().numpy()
    finally:
        model.train(was_training)
    return scores, ratings


def kl_sparsity(hidden: tuple[torch.Tensor, ...], activation: str, rho: float) -> torch.Tensor:
    """Sum over hidden units of KL(rho || mean activation), activations mapped into (0, 1)."""
    total = hidden[0].new_zeros(())
    for h in hidden:
        if activation == "sigmoid":
            p = h
        elif activation == "tanh":
            p = (h + 1) / 2
        else:
            p = torch.sigmoid(h)
        p_hat = p.mean(dim=0).clamp(1e-6, 1 - 1e-6)
        total = (
            total
            + (rho * torch.log(rho / p_hat) + (1 - rho) * torch.log((1 - rho) / (1 - p_hat))).sum()
        )
    return total


__all__ = [
    "Encoded",
    "SparseBatch",
    "StackedAutoencoder",
    "kl_sparsity",
    "predict",
]
