"""Shared fixtures: small synthetic low-rank rating data with long-tailed popularity."""

from __future__ import annotations

import numpy as np
import pytest

from app.ml.data import RatingChunk, RatingMatrix, build_rating_matrix


def synthetic_chunk(
    n_users: int = 300, n_movies: int = 200, per_user: int = 30, rank: int = 4, seed: int = 0
) -> RatingChunk:
    """Users pick movies by popularity + taste (low-rank); ratings follow the same taste."""
    rng = np.random.default_rng(seed)
    u = rng.normal(size=(n_users, rank))
    v = rng.normal(size=(n_movies, rank))
    popularity = -np.log(np.arange(1, n_movies + 1)) * 0.7
    users, movies, ratings = [], [], []
    for i in range(n_users):
        logits = popularity + 1.5 * (v @ u[i]) / np.sqrt(rank)
        p = np.exp(logits - logits.max())
        chosen = rng.choice(n_movies, size=per_user, replace=False, p=p / p.sum())
        r = 3.2 + (v[chosen] @ u[i]) / np.sqrt(rank) + rng.normal(scale=0.3, size=per_user)
        users.append(np.full(per_user, 1000 + 7 * i))
        movies.append(50 + 3 * chosen)
        ratings.append(np.clip(np.round(r), 1, 5))
    return (
        np.concatenate(users).astype(np.int64),
        np.concatenate(movies).astype(np.int64),
        np.concatenate(ratings).astype(np.float32),
    )


@pytest.fixture(scope="session")
def synthetic() -> RatingMatrix:
    return build_rating_matrix([synthetic_chunk()])


@pytest.fixture(scope="session")
def make_chunk():
    """The synthetic generator itself, for tests that need other sizes."""
    return synthetic_chunk


@pytest.fixture(scope="session")
def trained(synthetic):
    """A small trained model with every part (deep snapshots, item path, blend)."""
    from app.ml.config import config_from
    from app.ml.data import holdout_split
    from app.ml.train import train_model

    train, valid = holdout_split(synthetic, 0.1, seed=0)
    config = config_from("fast", hidden=(16,), epochs=4, seed=2)
    return train_model(train, valid, config, threads=1)
