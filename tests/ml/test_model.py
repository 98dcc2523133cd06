"""Model shapes, presets, config validation, prediction for unknown users."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from app.ml.config import PRESETS, config_from
from app.ml.model import SparseBatch, StackedAutoencoder, predict
from tests.ml.dense_reference import dense_forward


def test_forward_shapes() -> None:
    model = StackedAutoencoder(30, config_from("fast"))
    rows = sp.csr_matrix(([4.0, 0.5, 3.0], ([0, 1, 1], [3, 5, 9])), shape=(4, 30))
    enc = model.encode(SparseBatch.from_csr(rows))
    assert enc.h.shape == (4, 64) and enc.user_bias.shape == (4,)
    assert model.rank_logits(enc.h, enc.user_bias).shape == (4, 30)
    assert model.ratings_all(enc.h, enc.user_bias).shape == (4, 30)
    out = model(SparseBatch.from_csr(rows))
    assert out.ratings.shape == out.log_probs.shape == (3,)  # the rated cells alone


def test_seed_preset_is_20_10_20_sigmoid() -> None:
    cfg = PRESETS["seed"]
    model = StackedAutoencoder(1682, cfg)
    shapes = [tuple(layer.weight.shape) for layer in model.layers]
    assert shapes == [(20, 1682), (10, 20), (20, 10)]
    assert tuple(model.rate_out.weight.shape) == (1682, 20)
    assert model.rank_out is None and cfg.activation == "sigmoid"
    assert cfg.optimizer == "rmsprop" and cfg.lr == pytest.approx(0.01)


def test_config_from_errors_and_overrides() -> None:
    assert config_from("default", epochs=3).epochs == 3
    with pytest.raises(ValueError, match="unknown preset"):
        config_from("nope")
    with pytest.raises(ValueError, match="unknown config field"):
        config_from("default", epochz=3)
    with pytest.raises(ValueError, match="invalid config"):
        config_from("default", activation="swish")
    for name in ("tanh", "relu", "selu", "sigmoid"):
        assert config_from("fast", activation=name).activation == name


def test_predict_unknown_user_and_clamping() -> None:
    torch.manual_seed(0)
    model = StackedAutoencoder(25, config_from("fast", rating_scale=(0.5, 5.0)))
    model.set_statistics(3.5, np.zeros(25), (0.5, 5.0))
    with torch.no_grad():
        model.rate_out.bias.fill_(10.0)  # absurd outputs must be clamped
    row = sp.csr_matrix((np.array([4.5, 1.0], np.float32), ([0, 0], [2, 7])), shape=(1, 25))
    empty = sp.csr_matrix((1, 25), dtype=np.float32)
    scores, ratings = predict(model, sp.vstack([row, empty]).tocsr())
    assert scores.shape == ratings.shape == (2, 25)
    assert ratings.max() <= 5.0 and ratings.min() >= 0.5
    assert np.isfinite(scores).all()
    assert model.training  # predict restores the mode it found
    with pytest.raises(ValueError):
        predict(model, sp.csr_matrix((1, 3)))


def test_kl_sparsity_penalty() -> None:
    from app.ml.model import kl_sparsity

    at_target = (torch.full((8, 5), 0.05),)
    assert float(kl_sparsity(at_target, "sigmoid", 0.05)) == pytest.approx(0.0, abs=1e-6)
    busy = (torch.full((8, 5), 0.5),)
    assert float(kl_sparsity(busy, "sigmoid", 0.05)) > 1.0
    tanh_at_target = (torch.full((8, 5), -0.9),)  # (h + 1) / 2 = 0.05
    assert float(kl_sparsity(tanh_at_target, "tanh", 0.05)) == pytest.approx(0.0, abs=1e-5)


def test_sparse_and_overcomplete_configs_train_a_step() -> None:
    cfg = config_from("fast", hidden=(64, 32), sparsity_beta=0.1, activation="sigmoid")
    model = StackedAutoencoder(40, cfg)
    x = np.zeros((6, 40), dtype=np.float32)
    x[:, :5] = 3.0
    out = model(SparseBatch.from_csr(sp.csr_matrix(x)))
    loss = out.ratings.pow(2).mean() + kl_sparsity_value(out.hidden)
    loss.backward()
    assert all(p.grad is not None for p in model.layers.parameters())


def kl_sparsity_value(hidden: tuple[torch.Tensor, ...]) -> torch.Tensor:
    from app.ml.model import kl_sparsity

    return kl_sparsity(hidden, "sigmoid", 0.05)


def test_sparse_training_forward_equals_the_dense_one(synthetic) -> None:
    """Training runs on sparse batches; with noise off it must be the network as stated
    densely (`dense_forward`)."""
    torch.manual_seed(0)
    for inputs in ("both", "implicit", "ratings"):
        net = StackedAutoencoder(synthetic.shape[1], config_from("fast", inputs=inputs)).eval()
        rows = synthetic.matrix[:17]
        batch = SparseBatch.from_csr(rows)
        with torch.no_grad():
            dense = dense_forward(net, torch.from_numpy(rows.toarray()))
            sparse = net(batch)
        r, c = batch.rows, batch.cols
        torch.testing.assert_close(sparse.ratings, dense.ratings[r, c], atol=1e-5, rtol=1e-5)
        expected = torch.log_softmax(dense.scores, dim=1)[r, c]
        torch.testing.assert_close(sparse.log_probs, expected, atol=1e-5, rtol=1e-5)


def _gradients(net: StackedAutoencoder, loss: torch.Tensor) -> dict[str, torch.Tensor]:
    net.zero_grad(set_to_none=True)
    loss.backward()
    return {k: p.grad.clone() for k, p in net.named_parameters() if p.grad is not None}


def test_sparse_training_gradients_equal_the_dense_ones(synthetic) -> None:
    """The sparse products (app/ml/sparse_ops.py) have hand-written backwards: each
    parameter's gradient must match autograd's through the dense network, for the exact
    softmax and for the sampled one (rated movies + corrected negatives)."""
    torch.manual_seed(0)
    net = StackedAutoencoder(synthetic.shape[1], config_from("fast")).eval()
    rows = synthetic.matrix[:23]
    batch = SparseBatch.from_csr(rows)
    r, c = batch.rows, batch.cols
    weights = torch.rand(r.numel())  # any loss that weighs every rated cell differently
    negatives = torch.randint(0, synthetic.shape[1], (40,))
    log_q = torch.log(torch.rand(40) + 0.5)
    for sampled in (False, True):
        out = net(batch, negatives, log_q) if sampled else net(batch)
        got = _gradients(net, (weights * (out.ratings + out.log_probs)).sum())
        dense = dense_forward(net, torch.from_numpy(rows.toarray()))
        if sampled:
            rated = dense.scores[r, c]
            others = dense.scores[:, negatives] - log_q
            per_user = torch.cat([others, torch.full_like(dense.scores, -torch.inf)], dim=1)
            per_user = per_user.index_put((r, c + negatives.numel()), rated)
            log_probs = rated - torch.logsumexp(per_user, dim=1)[r]
        else:
            log_probs = torch.log_softmax(dense.scores, dim=1)[r, c]
        want = _gradients(net, (weights * (dense.ratings[r, c] + log_probs)).sum())
        assert got.keys() == want.keys()
        for name in want:
            torch.testing.assert_close(got[name], want[name], atol=2e-5, rtol=1e-4, msg=name)


def test_validation_scores_equal_predict(synthetic) -> None:
    """Validation scores (ratings at the held-out cells alone): the same numbers as
    ``predict`` (every cell) and as the dense statement of the network."""
    from app.ml.network import validation_scores

    torch.manual_seed(0)
    rows, cells = synthetic.matrix[:40], synthetic.matrix[40:80]
    for preset, overrides in (("fast", {}), ("seed", {}), ("fast", {"rating_head": "direct"})):
        net = StackedAutoencoder(synthetic.shape[1], config_from(preset, **overrides)).train()
        scores, ratings = validation_scores(net, rows, cells)
        assert net.training  # restored
        want_scores, want_ratings = predict(net, rows)
        coo = cells.tocoo()
        np.testing.assert_allclose(scores, want_scores, atol=2e-5, rtol=1e-5)
        np.testing.assert_allclose(ratings, want_ratings[coo.row, coo.col], atol=2e-5, rtol=1e-5)
        with torch.no_grad():
            dense = dense_forward(net.eval(), torch.from_numpy(rows.toarray()))
        np.testing.assert_allclose(scores, dense.scores.numpy(), atol=2e-5, rtol=1e-5)
