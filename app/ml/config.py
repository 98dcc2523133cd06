"""Every hyper-parameter of the model and its training, its presets, and the checks on them.

Plain pydantic, no torch: the API validates a retrain request's settings, and a job row
stores them, without loading the network code.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

Activation = Literal["sigmoid", "tanh", "relu", "selu"]
LayerSizes = tuple[Annotated[int, Field(ge=1)], ...]
"""hidden layer sizes, input side first; each at least 1 (the retrain API's schema says so)."""


class ModelConfig(BaseModel):
    """Every hyper-parameter of the model and its training (validated, immutable)."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    # architecture
    hidden: LayerSizes = Field((400,), min_length=1)
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
    rating_weight: float = Field(0.3, ge=0.0)
    """weight of the masked rating MSE (per observed rating). The rating network serves
    most of the ratings, so the joint network's encoder is left to ranking: at 0.3 rather
    than 1 it ranks better on 5 of 7 data sets (docs/evaluation.md), and on user-light
    ones it trains for longer and earns a share of the ranking."""
    positive_weight: float = Field(5.0, ge=0.0)
    """extra multinomial target weight of liked movies (rating >= relevant_threshold)."""
    hidden_rating_weight: float = Field(1.0, ge=0.0)
    """weight of ratings masked from the input relative to visible ones in the MSE."""
    # optimisation
    optimizer: Literal["adam", "adamw", "rmsprop", "sgd"] = "adam"
    """optimizer (the seed used RMSprop)."""
    lr: float = Field(3e-3, gt=0.0)
    """learning rate."""
    batch_size: int = Field(128, ge=1)
    """users per minibatch (at least; see epoch_steps)."""
    epoch_steps: int = Field(64, ge=1)
    """most optimizer steps in an epoch: with more than batch_size x this many users,
    minibatches grow to users / epoch_steps. A step's fixed cost (Adam over every weight)
    grows with the catalog; bigger batches on big data keep an epoch's cost following
    the ratings (data sets under 8,192 users, ml-1m-half included, keep batch_size). At
    10M ratings 64 steps (1,092 users) matched 128 (546) epoch for epoch and ran faster."""
    epochs: int = Field(60, ge=1)
    """maximum number of epochs."""
    patience: int = Field(4, ge=1)
    """epochs in which neither head beat its best validation figure (NDCG@10 for ranking,
    RMSE for rating) before stopping early; each head keeps its own best epoch."""
    validation_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    """share of each user's ratings held out for validation (0 = no early stopping)."""
    max_valid_users: int = Field(5_000, ge=0)
    """validation metrics on a fixed seeded sample of this many users (0 = all); keeps
    per-epoch validation cheap on large data."""
    seed: int = 0
    """seed of torch and numpy (initialisation, shuffling, masking, validation split)."""
    rating_scale: tuple[float, float] | None = None
    """clamp range of predicted ratings; None = (min, max) of the training ratings."""
    relevant_threshold: float = 4.0
    """a rating at or above this is a 'liked' movie (ranking relevance, positive weight)."""
    softmax_negatives: int = Field(512, ge=0)
    """training cost that follows the ratings: on catalogs over 4x this many movies, the
    ranking softmax runs over each batch's rated movies plus this many movies sampled by
    popularity (with the log-probability correction) instead of the whole catalog; 0 =
    always the exact softmax."""
    # the linear item-to-item path and the blend (app/ml/item_path.py, app/ml/hybrid.py)
    item_path: bool = True
    """fit the closed-form item-to-item path and blend it into the ranking."""
    item_lambda: float | None = Field(None, gt=0.0)
    """its ridge strength; None = chosen on validation around 10x the mean movie count."""
    item_liked_weight: float = Field(3.0, ge=0.0)
    """extra target weight of liked movies (0 = plain EASE)."""
    item_neighbors: int = Field(512, ge=1)
    """weights kept per source movie (bounds serving memory and cost)."""
    item_max_movies: int = Field(8_000, ge=2)
    """the path covers at most this many most-rated movies (bounds the closed form)."""
    item_weight: float | None = Field(None, ge=0.0, le=1.0)
    """share of the item path in the ranking score; None = chosen on validation."""
    popularity_penalty: float | None = Field(None, ge=0.0)
    """ranking penalty per unit of log(1 + rating count); None = chosen on validation."""
    rating_blend: float | None = Field(None, ge=0.0, le=1.0)
    """share of the rating network against the bias terms; None = chosen on validation."""
    # the rating network (app/ml/train.py: train_rating_network)
    rating_network: bool = True
    """train a second, rating-only network (no ranking head) for the served ratings: the
    ranking loss pulls a shared encoder towards which movies a user rates, and a network
    of its own predicts better for a third of the joint one's training (docs/design.md).
    The joint network's rating head stays a part of the rating blend."""
    refit: bool = True
    """once validation has chosen epochs, the item path and the blend, fit every part the
    blend uses again on all the ratings, validation included."""
    # the fold-in matrix factorisation (app/ml/factors.py), a rating part of the blend
    factors: bool = True
    """fit a matrix factorisation of the bias terms' residuals and blend it into the
    served rating at the share validation chooses (0: not kept)."""
    factor_rank: int = Field(32, ge=1)
    """its number of factors."""
    factor_lambdas: tuple[Annotated[float, Field(gt=0.0)], ...] = Field((0.05, 0.1), min_length=1)
    """its ridge strengths per rating to fit; validation chooses one with the share."""
    factor_sweeps: int = Field(12, ge=1)
    """alternations of the ALS fit."""
    rating_hidden: LayerSizes = Field((200,), min_length=1)
    """hidden layer sizes of the rating network."""
    rating_lr: float = Field(1e-3, gt=0.0)
    """learning rate of the rating network (its other settings are the joint network's);
    slower than ``lr``, it predicts better on every set measured, for ~1.6x the epochs."""

    @model_validator(mode="after")
    def _check(self) -> ModelConfig:
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
        ranking_weight=0.0,
        rating_weight=1.0,
        item_path=False,
        popularity_penalty=0.0,
        rating_blend=1.0,
        rating_network=False,
    ),
    # tiny and quick, for tests and smoke runs
    "fast": ModelConfig(hidden=(64,), batch_size=64, epochs=15, patience=4, lr=3e-3),
}


def rating_network_config(config: ModelConfig) -> ModelConfig:
    """The rating network's settings: ``config`` with the rating head alone to train."""
    return config.model_copy(
        update={
            "hidden": config.rating_hidden,
            "lr": config.rating_lr,
            "ranking_head": False,
            "ranking_weight": 0.0,
            "rating_weight": 1.0,
            "item_path": False,
            "rating_network": False,
        }
    )


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
