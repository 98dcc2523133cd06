"""A dense, plain-autograd statement of the network, for tests only: the oracle that the
model's one (sparse) forward, `StackedAutoencoder.encode` and its heads, is checked
against. Written from the model's definition, not from its code."""

from __future__ import annotations

from typing import NamedTuple

import torch

from app.ml.model import StackedAutoencoder


class DenseOutput(NamedTuple):
    scores: torch.Tensor
    ratings: torch.Tensor
    hidden: tuple[torch.Tensor, ...]


def dense_forward(net: StackedAutoencoder, x: torch.Tensor) -> DenseOutput:
    """x: B x n_movies ratings (0 = unrated), every rating visible (eval mode)."""
    config = net.config
    vis = (x > 0).to(x.dtype)
    n = vis.sum(dim=1, keepdim=True)
    base = net.global_mean + net.movie_bias
    user_bias = ((x - base) * vis).sum(dim=1, keepdim=True) / (n + config.user_bias_reg)
    norm = n.clamp(min=1.0).rsqrt()
    if config.inputs == "ratings":
        features = x * vis
    elif config.inputs == "implicit":
        features = vis * norm
    else:
        centred = (x - (base + user_bias).detach()) * vis * norm
        features = torch.cat([vis * norm, centred], dim=1)
    h = features @ net.first_layer.weight_t + net.first_layer.bias
    hidden = []
    for i, layer in enumerate(net.layers):
        h = net.activation(layer(h) if i else h)
        hidden.append(h)
    ratings = net.rate_out(h)
    if config.rating_head == "residual":
        ratings = ratings + base + user_bias
    scores = net.rank_out(h) if net.rank_out is not None else ratings
    return DenseOutput(scores, ratings, tuple(hidden))
