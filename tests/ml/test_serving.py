"""The single-user fold-in path must equal the model's own eval-mode forward pass."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from app.ml.model import StackedAutoencoder, config_from
from app.ml.serving import FoldInScorer

N_MOVIES = 50


def _model(**overrides: object) -> StackedAutoencoder:
    torch.manual_seed(0)
    model = StackedAutoencoder(N_MOVIES, config_from("fast", **overrides))
    with torch.no_grad():  # non-trivial biases so every term of the rating head matters
        model.global_mean.fill_(3.5)
        model.movie_bias.copy_(torch.linspace(-0.5, 0.5, N_MOVIES))
    return model.eval()


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"inputs": "implicit"},
        {"inputs": "ratings", "rating_head": "direct", "ranking_head": False},
        {"hidden": [20, 10, 20], "activation": "sigmoid"},
        {"hidden": [32, 16], "activation": "selu", "dropout": 0.3},
    ],
)
def test_fold_in_matches_forward(overrides: dict) -> None:
    model = _model(**overrides)
    scorer = FoldInScorer(model)
    rng = np.random.default_rng(1)
    for rated_count in (1, 5, 30):
        cols = np.sort(rng.choice(N_MOVIES, size=rated_count, replace=False))
        values = rng.choice(np.arange(1, 11) / 2, size=rated_count).astype(np.float32)
        row = np.zeros((1, N_MOVIES), dtype=np.float32)
        row[0, cols] = values
        with torch.inference_mode():
            expected = model(torch.from_numpy(row))
        lo, hi = (float(v) for v in model.rating_scale)
        state = scorer.encode(cols, values)
        np.testing.assert_allclose(scorer.scores(state), expected.scores[0].numpy(), atol=1e-5)
        wanted = np.array([0, 7, N_MOVIES - 1])
        np.testing.assert_allclose(
            scorer.ratings(state, wanted),
            expected.ratings[0, wanted].clamp(lo, hi).numpy(),
            atol=1e-5,
        )
