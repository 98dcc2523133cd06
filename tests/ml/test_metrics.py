"""Metrics against tiny hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp

from app.ml.data import build_rating_matrix
from app.ml.metrics import evaluate_scorer, ranking_metrics, rating_metrics


def test_rating_metrics_clamps_to_scale() -> None:
    got = rating_metrics(np.array([6.0, 0.0, 3.0]), np.array([5.0, 1.0, 4.0]), scale=(1, 5))
    assert got["rmse"] == pytest.approx(math.sqrt(1 / 3))
    assert got["mae"] == pytest.approx(1 / 3)
    raw = rating_metrics(np.array([6.0, 0.0, 3.0]), np.array([5.0, 1.0, 4.0]))
    assert raw["rmse"] == pytest.approx(1.0)


def test_ranking_metrics_hand_computed() -> None:
    # 2 users x 12 movies; k = 10
    scores = np.tile(np.arange(12, 0, -1, dtype=float), (2, 1))  # movie 0 best
    train_dense = np.zeros((2, 12))
    train_dense[0, 0] = 5  # user 0 rated movie 0 -> excluded; top 10 = movies 1..10
    train = sp.csr_matrix(train_dense)
    test = np.zeros((2, 12))
    test[0, 1] = 4  # relevant, rank 1
    test[0, 3] = 5  # relevant, rank 3
    test[0, 11] = 5  # relevant, outside the top 10
    test[0, 2] = 3  # not relevant (< 4)
    test[1, 11] = 4  # user 1: only relevant movie ranked 12th -> no hit
    got = ranking_metrics(scores, train, sp.csr_matrix(test), k=10)
    dcg0 = 1 / math.log2(2) + 1 / math.log2(4)
    idcg0 = 1 / math.log2(2) + 1 / math.log2(3) + 1 / math.log2(4)
    assert got["users_evaluated"] == 2
    assert got["precision@10"] == pytest.approx((2 / 10 + 0) / 2)
    assert got["recall@10"] == pytest.approx((2 / 3 + 0) / 2)
    assert got["ndcg@10"] == pytest.approx((dcg0 / idcg0) / 2)
    assert got["hit_rate@10"] == pytest.approx(0.5)
    # user 0 top10 = 1..10, user 1 top10 = 0..9 -> 11 distinct of 12 movies
    assert got["coverage@10"] == pytest.approx(11 / 12)


def test_recall_denominator_is_min_k_relevant() -> None:
    scores = np.arange(30, 0, -1, dtype=float)[None, :]
    test = np.zeros((1, 30))
    test[0, :15] = 5  # 15 relevant, all top 10 are hits
    got = ranking_metrics(scores, sp.csr_matrix((1, 30)), sp.csr_matrix(test), k=10)
    assert got["recall@10"] == pytest.approx(1.0)
    assert got["ndcg@10"] == pytest.approx(1.0)
    assert got["precision@10"] == pytest.approx(1.0)


def test_evaluate_scorer_falls_back_to_training_mean_for_unknown() -> None:
    train = build_rating_matrix(
        [(np.array([1, 1, 2]), np.array([10, 20, 10]), np.array([4.0, 2.0, 3.0], dtype=np.float32))]
    )
    # user 3 unknown, movie 99 unknown -> both get the mean 3.0
    test = (np.array([2, 3, 1]), np.array([20, 10, 99]), np.array([5.0, 1.0, 3.0], np.float32))

    def scorer(rows: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray]:
        return np.zeros(rows.shape), np.full(rows.shape, 4.0)

    got = evaluate_scorer(scorer, train, test)
    assert got["fallback_ratings"] == 2
    # errors: user 2/movie 20 -> 4 vs 5; user 3 -> 3 vs 1; movie 99 -> 3 vs 3
    assert got["rmse"] == pytest.approx(math.sqrt((1 + 4 + 0) / 3))
    assert got["users_evaluated"] == 1  # only user 2 has a relevant (>= 4) test rating
