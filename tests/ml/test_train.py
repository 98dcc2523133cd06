"""Training: it must actually learn (beat popularity / bias on held-out data)."""

from __future__ import annotations

import numpy as np
import torch

from app.ml.baselines import Bias, Popularity
from app.ml.data import holdout_split
from app.ml.metrics import evaluate_scorer
from app.ml.model import config_from, predict
from app.ml.train import EpochReport, train_model


def test_training_beats_popularity_and_bias(synthetic) -> None:
    rest, test = holdout_split(synthetic, 0.2, seed=11)
    train, valid = holdout_split(rest, 0.1, seed=12)
    config = config_from("fast", epochs=15, patience=5, seed=1)
    reports: list[EpochReport] = []
    result = train_model(train, valid, config, on_epoch=reports.append, threads=1)
    assert reports and reports[0].epochs == 15 and len(result.history) == len(reports)
    assert 1 <= result.best_epoch <= len(reports)
    assert result.metrics["best_epoch"] == result.best_epoch

    def scorer(rows):
        return predict(result.model, rows)

    model = evaluate_scorer(scorer, rest, test.to_chunk())
    pop = evaluate_scorer(Popularity().fit(rest), rest, test.to_chunk())
    bias = evaluate_scorer(Bias().fit(rest), rest, test.to_chunk())
    assert model["ndcg@10"] > pop["ndcg@10"] + 0.03, (model, pop)
    assert model["rmse"] < bias["rmse"], (model, bias)


def test_training_is_reproducible(synthetic) -> None:
    train, valid = holdout_split(synthetic, 0.1, seed=0)
    config = config_from("fast", epochs=2, hidden=(16,))
    a = train_model(train, valid, config, device="cpu")
    b = train_model(train, valid, config, device="cpu")
    for (ka, va), (kb, vb) in zip(
        a.model.state_dict().items(), b.model.state_dict().items(), strict=True
    ):
        assert ka == kb and torch.equal(va, vb)
    assert a.history[0].train_loss == b.history[0].train_loss


def test_seed_preset_trains_and_early_stopping_restores_best(synthetic) -> None:
    train, valid = holdout_split(synthetic, 0.1, seed=0)
    config = config_from("seed", epochs=6, patience=2, batch_size=64)
    result = train_model(train, valid, config)
    best = max(result.history, key=lambda r: -r.valid_rmse)
    assert result.best_epoch == best.epoch
    _, ratings = predict(result.model, train.matrix)
    coo = valid.matrix.tocoo()
    rmse = float(np.sqrt(np.mean((ratings[coo.row, coo.col] - coo.data) ** 2)))
    assert abs(rmse - best.valid_rmse) < 1e-4


def test_validation_user_sample_is_fixed(synthetic) -> None:
    from app.ml.train import validation_users

    _, valid = holdout_split(synthetic, 0.1, seed=0)
    config = config_from("fast", max_valid_users=25)
    a = validation_users(valid.matrix, config)
    assert a.size == 25 and np.all(np.diff(a) > 0)
    np.testing.assert_array_equal(a, validation_users(valid.matrix, config))
    everyone = validation_users(valid.matrix, config_from("fast", max_valid_users=0))
    assert everyone.size == np.count_nonzero(np.diff(valid.matrix.indptr))
