"""Training: it must learn, keep each head at its best, and never lose to its own parts."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from app.ml.baselines import EASE, Bias, Popularity
from app.ml.config import config_from, rating_network_config
from app.ml.data import holdout_split
from app.ml.hybrid import BiasTerms
from app.ml.metrics import evaluate_scorer
from app.ml.model import StackedAutoencoder
from app.ml.network import EpochReport, HeadBest, validate
from app.ml.scoring import FoldInScorer
from app.ml.train import stage_deadlines, train_model


def test_training_beats_popularity_bias_and_ease(synthetic) -> None:
    rest, test = holdout_split(synthetic, 0.2, seed=11)
    train, valid = holdout_split(rest, 0.1, seed=12)
    config = config_from("fast", epochs=15, patience=5, seed=1)
    reports: list[EpochReport] = []
    result = train_model(train, valid, config, on_epoch=reports.append, threads=1)
    assert reports and reports[0].epochs == 15 and len(result.history) == len(reports)
    assert 1 <= result.best_epoch <= len(reports)
    assert result.metrics["best_epoch"] == result.best_epoch
    chunk = test.to_chunk()
    model = evaluate_scorer(FoldInScorer(result.model).score_rows, rest, chunk)
    pop = evaluate_scorer(Popularity().fit(rest), rest, chunk)
    bias = evaluate_scorer(Bias().fit(rest), rest, chunk)
    ease = evaluate_scorer(EASE(250.0).fit(rest), rest, chunk)
    assert model["ndcg@10"] > pop["ndcg@10"] + 0.03, (model, pop)
    assert model["ndcg@10"] > ease["ndcg@10"] - 0.01, (model, ease)
    assert model["rmse"] < bias["rmse"], (model, bias)


def test_training_is_reproducible(synthetic) -> None:
    train, valid = holdout_split(synthetic, 0.1, seed=0)
    config = config_from("fast", epochs=2, hidden=(16,))
    a = train_model(train, valid, config, device="cpu")
    b = train_model(train, valid, config, device="cpu")
    for (ka, va), (kb, vb) in zip(
        a.model.rank_net.state_dict().items(), b.model.rank_net.state_dict().items(), strict=True
    ):
        assert ka == kb and torch.equal(va, vb)
    assert a.history[0].train_loss == b.history[0].train_loss
    assert a.model.blend == b.model.blend


def test_each_head_keeps_its_own_best_epoch(synthetic) -> None:
    """The joint network's ranking snapshot is its best-NDCG epoch, its rating snapshot the
    best-RMSE one (which serves ratings when there is no rating network)."""
    train, valid = holdout_split(synthetic, 0.1, seed=0)
    config = config_from("fast", epochs=12, patience=12, lr=0.02, seed=3, rating_network=False)
    result = train_model(train, valid, config, threads=1)
    history = result.history
    rank_best = max(history, key=lambda r: r.valid_ndcg)
    rate_best = min(history, key=lambda r: r.valid_rmse)
    assert result.metrics["rank_epoch"] == rank_best.epoch
    assert result.metrics["rate_epoch"] == rate_best.epoch
    assert rank_best.epoch != rate_best.epoch, "pick a setting where the heads disagree"
    validated = result.model.as_validated()  # the snapshots, before their refit
    assert validated.rate_net is not validated.rank_net
    rank_figures = validate(validated.rank_net, train.matrix, valid.matrix, config)
    rate_figures = validate(validated.rate_net, train.matrix, valid.matrix, config)
    assert abs(rank_figures["ndcg@10"] - rank_best.valid_ndcg) < 1e-6
    assert abs(rate_figures["rmse"] - rate_best.valid_rmse) < 1e-6
    # training stops once neither head has improved for `patience` epochs
    short = train_model(train, valid, config.model_copy(update={"patience": 2}), threads=1)
    last_gain = max(short.metrics["rank_epoch"], short.metrics["rate_epoch"])
    assert len(short.history) <= last_gain + 2


def test_heads_that_keep_one_epoch_share_its_weights_and_restore_without_a_copy() -> None:
    """At 25M ratings each copy of the network is 283 MB: both heads keeping the same epoch
    hold one snapshot, and the restored network is made of the snapshot's tensors."""
    config = config_from("fast")
    net = StackedAutoencoder(30, config)
    rank, rate = HeadBest(), HeadBest()
    assert rank.offer(0.5, 1, net) and rate.offer(-1.0, 1, net, rank)
    assert rate.state is rank.state
    first = net.rate_out.weight.detach().clone()
    with torch.no_grad():
        net.rate_out.weight.add_(1.0)  # epoch 2 differs, and only the ranking improves
    assert rank.offer(0.6, 2, net) and not rate.offer(-2.0, 2, net, rank)
    assert (rank.epoch, rate.epoch) == (2, 1) and rate.state is not rank.state
    kept = rate.take()
    assert rate.state is None
    restored = StackedAutoencoder.from_state(30, config, kept)
    assert restored.rate_out.weight.data_ptr() == kept["rate_out.weight"].data_ptr()
    assert not restored.training
    assert torch.equal(restored.rate_out.weight, first)
    assert torch.equal(restored.layers[0].weight_t, net.layers[0].weight_t)


def test_a_rating_only_network_serves_ratings(synthetic) -> None:
    """By default a second network, without a ranking head, is trained for ratings and kept
    at its best validation RMSE; the served blend of it, the joint network's rating head and
    the bias terms is never worse on validation than the rating network or the bias alone."""
    train, valid = holdout_split(synthetic, 0.1, seed=0)
    config = config_from("fast", epochs=10, patience=3, seed=3, refit=False)
    result = train_model(train, valid, config, threads=1)
    model, metrics = result.model, result.metrics
    assert model.rank_net.rank_out is not None
    assert model.rate_net.rank_out is None and model.rate_net.config.hidden == (200,)
    assert metrics["rating_network_epochs"] >= metrics["rating_network_epoch"] >= 1
    alone = validate(model.rate_net, train.matrix, valid.matrix, rating_network_config(config))
    assert metrics["valid_deep_rmse"] == pytest.approx(alone["rmse"], abs=1e-4)
    assert metrics["valid_rmse"] <= min(metrics["valid_deep_rmse"], metrics["valid_bias_rmse"])
    assert 0.0 <= metrics["rating_weight"] + metrics["joint_rating_weight"] <= 1.0 + 1e-9
    joint_only = config.model_copy(update={"rating_network": False, "refit": False})
    joint = train_model(train, valid, joint_only, threads=1).model
    assert joint.rate_net.rank_out is not None  # without it, the joint network's snapshot


def test_every_served_part_is_refitted_on_every_rating(synthetic) -> None:
    """Validation picks epochs, the item path's variant and strength, and the blend; every
    part the blend uses is then fitted again with the validation ratings given back. The
    validated parts travel with the model: the quality gate scores exactly them."""
    rest, test = holdout_split(synthetic, 0.2, seed=31)
    train, valid = holdout_split(rest, 0.1, seed=32)
    config = config_from("fast", epochs=10, patience=3, seed=4, item_weight=0.5, rating_blend=0.7)
    result = train_model(train, valid, config, threads=1)
    served, metrics = result.model, result.metrics
    validated = train_model(train, valid, config.model_copy(update={"refit": False})).model
    assert served.blend == validated.blend
    assert served.validated is not None
    # the joint network again, for the epochs validation chose
    assert metrics["refit_joint_network"] == 1.0
    assert served.rank_net.config.epochs == metrics["rank_epoch"]
    assert not torch.equal(served.rank_net.rank_out.weight, validated.rank_net.rank_out.weight)
    # the rating network too
    assert served.rate_net.config.epochs == metrics["rating_network_epoch"]
    assert not torch.equal(served.rate_net.rate_out.weight, validated.rate_net.rate_out.weight)
    # the item path: the same variant, its strength grown with the ratings
    path, chosen = served.item_path, validated.item_path
    assert path is not None and chosen is not None
    assert (path.min_rating, path.liked_weight) == (chosen.min_rating, chosen.liked_weight)
    assert chosen.lam < path.lam == pytest.approx(metrics["refit_item_lambda"])
    assert (path.weights != chosen.weights).nnz > 0
    # bias terms and popularity from every rating
    everyone = BiasTerms.fit(rest, config.movie_bias_reg, config.user_bias_reg)
    np.testing.assert_allclose(served.bias.movie_bias, everyone.movie_bias, rtol=1e-6)
    counts = np.bincount(rest.matrix.indices, minlength=rest.shape[1])
    np.testing.assert_allclose(served.log_popularity, np.log1p(counts), rtol=1e-6)
    # what the gate scores: the validated parts, to the bit
    gate = served.as_validated()
    assert gate.validated is None and validated.as_validated() is validated
    rows = rest.matrix[:40]
    for got, want in zip(
        FoldInScorer(gate).score_rows(rows), FoldInScorer(validated).score_rows(rows), strict=True
    ):
        np.testing.assert_array_equal(got, want)
    assert metrics["refit_seconds"] > 0
    chunk = test.to_chunk()
    refitted = evaluate_scorer(FoldInScorer(served).score_rows, rest, chunk)
    before = evaluate_scorer(FoldInScorer(validated).score_rows, rest, chunk)
    assert refitted["rmse"] < before["rmse"] + 0.005, (refitted, before)
    assert refitted["ndcg@10"] > before["ndcg@10"] - 0.02, (refitted, before)


def test_a_part_the_blend_does_not_use_is_not_refitted(synthetic) -> None:
    """With the item path ranking alone and the bias terms rating alone, the networks serve
    nothing: they are not trained again, and the validated parts share them."""
    train, valid = holdout_split(synthetic, 0.1, seed=0)
    config = config_from(
        "fast", epochs=3, seed=2, item_weight=1.0, rating_blend=0.0, popularity_penalty=0.0
    )
    result = train_model(train, valid, config, threads=1)
    model = result.model
    assert model.validated is not None
    assert model.validated.rank_net is model.rank_net
    assert model.validated.rate_net is model.rate_net
    assert "refit_joint_network" not in result.metrics
    assert "refit_rating_network" not in result.metrics
    assert model.validated.item_path is not model.item_path


def test_few_users_and_many_movies_rank_at_least_as_well_as_ease_on_validation(
    make_chunk,
) -> None:
    """User-light, catalog-heavy data is where the model lost to EASE: the served ranking
    on validation is never below EASE on every rating nor EASE on the liked ratings,
    fitted on the same training ratings at the strength selection tries each variant at."""
    from app.ml.blend import Validation, validation_figures
    from app.ml.data import build_rating_matrix
    from app.ml.item_path import CoOccurrence, fit_item_to_item, input_indicator, lambda_centre
    from app.ml.train import make_validation

    data = build_rating_matrix([make_chunk(n_users=80, n_movies=600, per_user=40, seed=9)])
    train, valid = holdout_split(data, 0.1, seed=5)
    config = config_from("fast", epochs=6, seed=3, refit=False)
    model = train_model(train, valid, config, threads=1).model
    validation: Validation = make_validation(train, valid, config)
    served = validation_figures(model, validation)["ndcg@10"]
    for min_rating in (None, config.relevant_threshold):
        co = CoOccurrence.of(train.matrix, config.relevant_threshold, 8_000, min_rating)
        lam = lambda_centre(input_indicator(train.matrix, min_rating))
        ease = fit_item_to_item(co, lam, 0.0, config.item_neighbors)
        figures = validation.new_figures()
        for rows, truth in validation.batches():
            figures.ranking.add(ease.score_rows(rows), rows, truth)
        assert served >= figures.result()["ndcg@10"] - 1e-9, (min_rating, lam)


def test_rating_never_loses_to_its_bias_terms(synthetic) -> None:
    """A deep rating head that learned nothing is blended away, on validation and on test."""
    rest, test = holdout_split(synthetic, 0.2, seed=21)
    train, valid = holdout_split(rest, 0.1, seed=22)
    untrained = config_from("fast", epochs=1, lr=1e-7, rating_head="direct", item_path=False)
    result = train_model(train, valid, untrained, threads=1)
    metrics = result.metrics
    assert metrics["valid_deep_rmse"] > metrics["valid_bias_rmse"] + 0.5
    assert metrics["rating_weight"] + metrics["joint_rating_weight"] <= 0.1
    assert metrics["valid_rmse"] <= metrics["valid_bias_rmse"] + 1e-9
    served = evaluate_scorer(FoldInScorer(result.model).score_rows, rest, test.to_chunk())
    bias = evaluate_scorer(Bias(10.0, 5.0).fit(train), rest, test.to_chunk())
    assert served["rmse"] <= bias["rmse"] + 0.01, (served, bias)


def test_validation_user_sample_is_fixed(synthetic) -> None:
    from app.ml.network import validation_users

    _, valid = holdout_split(synthetic, 0.1, seed=0)
    config = config_from("fast", max_valid_users=25)
    a = validation_users(valid.matrix, config)
    assert a.size == 25 and np.all(np.diff(a) > 0)
    np.testing.assert_array_equal(a, validation_users(valid.matrix, config))
    everyone = validation_users(valid.matrix, config_from("fast", max_valid_users=0))
    assert everyone.size == np.count_nonzero(np.diff(valid.matrix.indptr))


def test_an_epoch_takes_at_most_epoch_steps_steps(synthetic) -> None:
    """Big data gets bigger batches (a step's fixed cost grows with the catalog); data with
    at most batch_size x epoch_steps users keeps batch_size, whatever its size."""
    from app.ml.network import build_model, make_optimizer, seed_everything, train_epoch

    users = np.flatnonzero(np.diff(synthetic.matrix.indptr))
    assert users.size > 30
    for epoch_steps, batch_size, expected_steps in ((3, 8, 3), (1_000, 8, -(-users.size // 8))):
        config = config_from("fast", batch_size=batch_size, epoch_steps=epoch_steps)
        model = build_model(synthetic.shape[1], synthetic.matrix, config, (1.0, 5.0))
        optimizer = make_optimizer(model, config)
        steps: list[int] = []
        optimizer.register_step_post_hook(lambda *_, taken=steps: taken.append(1))
        rng = seed_everything(0)
        train_epoch(model, synthetic.matrix, users, optimizer, config, rng, torch.device("cpu"))
        assert len(steps) == expected_steps, (epoch_steps, batch_size)


def test_validation_batches_follow_the_catalog_and_leave_the_figures(
    synthetic, monkeypatch
) -> None:
    """Each validation batch is a dense users x catalog array per part, so its users are
    bounded by BATCH_CELLS / catalog; how users are batched never changes a figure."""
    from app.ml import blend
    from app.ml.train import make_validation

    train, valid = holdout_split(synthetic, 0.1, seed=0)
    config = config_from("fast", epochs=2, seed=1)
    model = train_model(train, valid, config, threads=1).model
    validation = make_validation(train, valid, config)
    whole = blend.validation_figures(model, validation)
    monkeypatch.setattr(blend, "BATCH_CELLS", 7 * synthetic.shape[1])
    sizes = [rows.shape[0] for rows, _ in validation.batches()]
    assert max(sizes) == 7 and sum(sizes) == validation.rows.shape[0]
    assert blend.validation_figures(model, validation) == pytest.approx(whole, rel=1e-6)


def test_the_time_limit_is_shared_out_between_the_stages() -> None:
    """TRAIN_MAX_SECONDS: the joint network may use 40 % of the time, the rating network up
    to 50 %, the refit of every part the rest; no deadline, no limit."""
    start = time.monotonic()
    joint, rating = stage_deadlines(start + 100.0)
    assert joint is not None and rating is not None
    assert joint - start == pytest.approx(40.0, abs=0.5)
    assert rating - start == pytest.approx(50.0, abs=0.5)
    assert stage_deadlines(None) == (None, None)


def test_a_spent_time_limit_keeps_every_part_at_its_best_so_far(synthetic, monkeypatch) -> None:
    """Out of time, each network stops after the epoch it is in, keeping its best epoch so
    far, the matrix factorisation is not fitted, the refit is skipped, and the model still
    has every other part and serves."""
    from app.ml import train as train_module

    fits: list[int] = []
    fit_factors = train_module.fit_factors
    monkeypatch.setattr(train_module, "fit_factors", lambda *a: fits.append(1) or fit_factors(*a))
    train, valid = holdout_split(synthetic, 0.1, seed=0)
    config = config_from("fast", epochs=30, patience=30, seed=2)
    limited = train_model(train, valid, config, threads=1, deadline=time.monotonic())
    assert not fits and limited.model.factors is None
    assert limited.metrics["epochs_run"] == 1
    assert limited.metrics["rating_network_epochs"] == 1
    assert limited.metrics["time_limited"] == 1.0
    assert "refit_seconds" not in limited.metrics
    assert limited.model.item_path is not None
    scores, ratings = FoldInScorer(limited.model).score_rows(valid.matrix[:5])
    assert np.isfinite(scores).all() and np.isfinite(ratings).all()
    free = train_model(train, valid, config.model_copy(update={"epochs": 2}), threads=1)
    assert free.metrics["time_limited"] == 0.0 and "refit_seconds" in free.metrics
    assert fits == [1]
