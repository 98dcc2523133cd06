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

from typing import Literal, NamedTuple

import numpy as np
import scipy.sparse as sp
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from torch import nn

Activation = Literal["sigmoid", "tanh", "relu", "selu"]


class ModelConfig(BaseModel):
    """Every hyper-parameter of the model and its training (validated, immutable)."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    # architecture
    hidden: tuple[int, ...] = Field((400,), min_length=1)
    """hidden layer sizes, input side first (e.g. 20, 10, 20 for the seed's stack; a size
    above the number of movies makes an overcomplete layer)."""
    activation: Activation = "tanh"
    """activation of every hidden layer."""
    inputs: Literal["ratings", "implicit", "both"] = "both"
    """ratings: raw rating values (the seed); implicit: L2-normalised rated/unrated
    indicator; both: indicator plus bias-centred ratings, each scaled by 1/sqrt(n)."""
    ranking_head: bool = True
    """multinomial 'which movies will they rate' head; without it, scores = ratings."""
    rating_head: Literal["direct", "residual"] = "residual"
    """direct: decoder outputs ratings (the seed); residual: mean + movie bias + folded-in
    user bias + decoder output."""
    # regularisation
    dropout: float = Field(0.2, ge=0.0, lt=1.0)
    """dropout on hidden activations."""
    input_dropout: float = Field(0.3, ge=0.0, lt=1.0)
    """masking noise (denoising): probability that a rating is hidden from the encoder in
    training; the heads must still predict it."""
    sparsity_rho: float = Field(0.05, gt=0.0, lt=1.0)
    """target mean activation of the KL sparsity penalty."""
    sparsity_beta: float = Field(0.0, ge=0.0)
    """weight of KL(rho || mean activation) summed over hidden units and layers (0 = off)."""
    weight_decay: float = Field(3e-4, ge=0.0)
    """L2 penalty passed to the optimizer."""
    user_bias_reg: float = Field(5.0, ge=0.0)
    """shrinkage (pseudo-count) of the user bias folded in from the input ratings."""
    movie_bias_reg: float = Field(10.0, ge=0.0)
    """shrinkage of the initial movie biases (they are then learned)."""
    # loss
    ranking_weight: float = Field(1.0, ge=0.0)
    """weight of the multinomial ranking loss (per observed rating)."""
    rating_weight: float = Field(1.0, ge=0.0)
    """weight of the masked rating MSE (per observed rating)."""
    positive_weight: float = Field(5.0, ge=0.0)
    """extra multinomial target weight of liked movies (rating >= relevant_threshold)."""
    hidden_rating_weight: float = Field(1.0, ge=0.0)
    """weight of ratings masked from the input relative to visible ones in the MSE."""
    # optimisation
    optimizer: Literal["adam", "adamw", "rmsprop", "sgd"] = "adam"
    """optimizer (the seed used RMSprop)."""
    lr: float = Field(2e-3, gt=0.0)
    """learning rate."""
    batch_size: int = Field(128, ge=1)
    """users per minibatch."""
    epochs: int = Field(60, ge=1)
    """maximum number of epochs."""
    patience: int = Field(6, ge=1)
    """epochs without a better validation metric before stopping early."""
    monitor: Literal["ndcg", "rmse", "both"] = "both"
    """early-stopping metric on the validation split; both = NDCG@10 - RMSE."""
    validation_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    """share of each user's ratings held out for validation (0 = no early stopping)."""
    max_valid_users: int = Field(20_000, ge=0)
    """validation metrics on a fixed seeded sample of this many users (0 = all); keeps
    per-epoch validation cheap on large data."""
    seed: int = 0
    """seed of torch and numpy (initialisation, shuffling, masking, validation split)."""
    rating_scale: tuple[float, float] | None = None
    """clamp range of predicted ratings; None = (min, max) of the training ratings."""
    relevant_threshold: float = 4.0
    """a rating at or above this is a 'liked' movie (ranking relevance, positive weight)."""

    @model_validator(mode="after")
    def _check(self) -> ModelConfig:
        if any(h < 1 for h in self.hidden):
            raise ValueError("hidden layer sizes must be >= 1")
        if self.rating_scale is not None and self.rating_scale[0] >= self.rating_scale[1]:
            raise ValueError("rating_scale must be (min, max) with min < max")
        return self


PRESETS: dict[str, ModelConfig] = {
    # the product model (tuned on a validation split carved out of u1.base)
    "default": ModelConfig(),  # the field defaults above are the tuned product model
    # the seed notebook's 20-10-20 sigmoid SAE on raw ratings, trained correctly:
    # zero_grad every step, masked MSE on rated movies only, RMSprop lr 0.01; the
    # notebook's weight_decay 0.5 (which pins all weights near 0) is replaced by a small one
    "seed": ModelConfig(
        hidden=(20, 10, 20),
        activation="sigmoid",
        inputs="ratings",
        ranking_head=False,
        rating_head="direct",
        input_dropout=0.0,
        dropout=0.0,
        optimizer="rmsprop",
        lr=0.01,
        weight_decay=0.0,
        batch_size=64,
        epochs=200,
        patience=10,
        monitor="rmse",
        ranking_weight=0.0,
    ),
    # tiny and quick, for tests and smoke runs
    "fast": ModelConfig(hidden=(64,), batch_size=64, epochs=15, patience=4, lr=3e-3),
}


def config_from(preset: str = "default", **overrides: object) -> ModelConfig:
    """A preset with some fields replaced; ValueError naming the bad preset or field."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    unknown = sorted(set(overrides) - set(ModelConfig.model_fields))
    if unknown:
        raise ValueError(
            f"unknown config field(s) {unknown}; valid fields: {sorted(ModelConfig.model_fields)}"
        )
    data = PRESETS[preset].model_dump()
    data.update(overrides)
    try:
        return ModelConfig(**data)
    except ValidationError as exc:
        raise ValueError(f"invalid config: {exc}") from exc


class ModelOutput(NamedTuple):
    """Forward result: scores rank movies (higher = recommend), ratings are on the
    rating scale (not yet clamped), hidden holds each hidden layer's activations."""

    scores: torch.Tensor
    ratings: torch.Tensor
    hidden: tuple[torch.Tensor, ...]
    visible: torch.Tensor


_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "selu": nn.SELU,
}


class StackedAutoencoder(nn.Module):
    """Encoder layers ``hidden`` (e.g. 20-10-20) followed by a ranking and a rating head."""

    def __init__(self, n_movies: int, config: ModelConfig) -> None:
        super().__init__()
        self.n_movies = n_movies
        self.config = config
        in_dim = 2 * n_movies if config.inputs == "both" else n_movies
        sizes = (in_dim, *config.hidden)
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes, sizes[1:], strict=False))
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

    def set_statistics(
        self, global_mean: float, movie_bias: np.ndarray, rating_scale: tuple[float, float]
    ) -> None:
        """Initialise the rating baseline from training data (kept in the state_dict)."""
        with torch.no_grad():
            self.global_mean.fill_(float(global_mean))
            self.movie_bias.copy_(torch.as_tensor(movie_bias, dtype=torch.float32))
            self.rating_scale.copy_(torch.tensor(rating_scale, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> ModelOutput:
        """x: B x n_movies dense ratings (0 = unrated) -> scores, ratings, hidden."""
        rated = x > 0
        visible = rated
        if self.training and self.config.input_dropout > 0:
            keep = torch.rand_like(x) >= self.config.input_dropout
            visible = rated & keep
        vis = visible.to(x.dtype)
        n = vis.sum(dim=1, keepdim=True)
        base = self.global_mean + self.movie_bias
        user_bias = ((x - base) * vis).sum(dim=1, keepdim=True) / (n + self.config.user_bias_reg)
        # the encoder sees the baseline as a constant: biases learn through the rating head
        h = self._features(x * vis, vis, n, (base + user_bias).detach())
        hidden = []
        for i, layer in enumerate(self.layers):
            h = sparse_linear(layer, h) if i == 0 else layer(h)
            h = self.hidden_dropout(self.activation(h))
            hidden.append(h)
        ratings = self.rate_out(h)
        if self.config.rating_head == "residual":
            ratings = ratings + base + user_bias
        scores = self.rank_out(h) if self.rank_out is not None else ratings
        return ModelOutput(scores, ratings, tuple(hidden), visible)

    def _features(
        self, x: torch.Tensor, vis: torch.Tensor, n: torch.Tensor, baseline: torch.Tensor
    ) -> torch.Tensor:
        if self.config.inputs == "ratings":
            return x
        norm = n.clamp(min=1.0).rsqrt()
        implicit = vis * norm
        if self.config.inputs == "implicit":
            return implicit
        return torch.cat([implicit, (x - baseline) * vis * norm], dim=1)


SPARSE_MIN_WIDTH = 64


def sparse_linear(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """layer(x) for a mostly-zero input (rating vectors are ~1-5 % dense): sparse matmul
    skips the zeros in the forward pass and in the weight gradient."""
    if x.requires_grad or x.device.type != "cpu" or x.shape[0] == 0:
        return layer(x)
    if layer.out_features < SPARSE_MIN_WIDTH:  # narrow layers: converting costs more
        return layer(x)
    return torch.sparse.mm(x.to_sparse(), layer.weight.t()) + layer.bias


def dense_rows(rows: sp.csr_matrix, device: torch.device | str = "cpu") -> torch.Tensor:
    """Densify one minibatch of CSR rows into a float32 tensor (never the whole matrix)."""
    return torch.from_numpy(sp.csr_matrix(rows).toarray().astype(np.float32, copy=False)).to(device)


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def predict(
    model: StackedAutoencoder, rows: sp.csr_matrix, batch_size: int = 1024
) -> tuple[np.ndarray, np.ndarray]:
    """(scores, ratings) for each row of training-style ratings; ratings clamped.

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
                out = model(dense_rows(rows[start : start + batch_size], device))
                stop = start + out.scores.shape[0]
                scores[start:stop] = out.scores.float().cpu().numpy()
                ratings[start:stop] = out.ratings.clamp(lo, hi).float().cpu().numpy()
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


def parameter_count(model: nn.Module) -> int:
    return int(sum(p.numel() for p in model.parameters()))


__all__ = [
    "PRESETS",
    "ModelConfig",
    "ModelOutput",
    "StackedAutoencoder",
    "config_from",
    "dense_rows",
    "kl_sparsity",
    "predict",
]
