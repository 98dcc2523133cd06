"""One forward pass: the serving scorer equals the training network and its own batch path."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from app.ml.hybrid import BiasTerms, Blend, HybridModel
from app.ml.item_path import ItemToItem
from app.ml.model import StackedAutoencoder, config_from, rating_network_config
from app.ml.serving import (
    FoldInScorer,
    ItemTable,
    NetWeights,
    UserBatch,
    standardise_,
    top_many,
    zscore,
    zscore_one,
)

N_MOVIES = 50
PLAIN = Blend(item_weight=0.0, popularity_penalty=0.0, rating_weight=1.0)


def _net(**overrides: object) -> StackedAutoencoder:
    torch.manual_seed(0)
    net = StackedAutoencoder(N_MOVIES, config_from("fast", **overrides))
    with torch.no_grad():  # non-trivial biases so every term of the rating head matters
        net.global_mean.fill_(3.5)
        net.movie_bias.copy_(torch.linspace(-0.5, 0.5, N_MOVIES))
    return net.eval()


def _hybrid(net: StackedAutoencoder, blend: Blend = PLAIN) -> HybridModel:
    bias = BiasTerms(3.4, np.linspace(-0.3, 0.3, N_MOVIES).astype(np.float32), 5.0)
    popularity = np.log1p(np.arange(N_MOVIES, dtype=np.float32))
    return HybridModel(net.config, net, net, None, bias, blend, popularity, (1.0, 5.0))


def _random_user(rng: np.random.Generator, rated: int) -> tuple[np.ndarray, np.ndarray]:
    cols = np.sort(rng.choice(N_MOVIES, size=rated, replace=False))
    return cols, rng.choice(np.arange(1, 11) / 2, size=rated).astype(np.float32)


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
def test_fold_in_matches_the_training_forward(overrides: dict) -> None:
    net = _net(**overrides)
    scorer = _hybrid(net).scorer
    rng = np.random.default_rng(1)
    for rated in (1, 5, 30):
        cols, values = _random_user(rng, rated)
        row = np.zeros((1, N_MOVIES), dtype=np.float32)
        row[0, cols] = values
        with torch.inference_mode():
            expected = net(torch.from_numpy(row))
        state = scorer.encode(cols, values)
        want = zscore(expected.scores.numpy())[0]
        np.testing.assert_allclose(scorer.scores(state), want, atol=1e-4)
        wanted = np.array([0, 7, N_MOVIES - 1])
        np.testing.assert_allclose(
            scorer.ratings(state, wanted),
            expected.ratings[0, wanted].clamp(1.0, 5.0).numpy(),
            atol=1e-5,
        )


def test_one_user_and_a_batch_give_the_same_answers(trained, synthetic) -> None:
    """Serving (one user) and evaluation (batches) share the definitions, item path included,
    for users seen in training and for a user the model has never seen."""
    model = trained.model
    assert model.item_path is not None and model.blend.item_weight > 0
    scorer = model.scorer
    rng = np.random.default_rng(3)
    users = rng.choice(synthetic.shape[0], size=6, replace=False)
    rows = [synthetic.matrix[u] for u in users]
    cols = np.sort(rng.choice(synthetic.shape[1], size=12, replace=False))
    stranger = sp.csr_matrix(
        (rng.choice([1.0, 3.5, 5.0], size=cols.size), (np.zeros(cols.size, int), cols)),
        shape=(1, synthetic.shape[1]),
        dtype=np.float32,
    )
    batch = sp.vstack([*rows, stranger]).tocsr()
    scores, ratings = model.predict(batch)
    every = np.arange(synthetic.shape[1])
    for i in range(batch.shape[0]):
        row = batch[i]
        state = scorer.encode(row.indices, row.data)
        np.testing.assert_allclose(scorer.scores(state), scores[i], atol=1e-4)
        np.testing.assert_allclose(scorer.ratings(state, every), ratings[i], atol=1e-4)


def test_the_scorer_reads_the_networks_own_weights_without_a_copy() -> None:
    """A served 59k-movie model would otherwise hold every layer twice (~500 MB)."""
    net = _net()
    weights = FoldInScorer(_hybrid(net)).rank_net
    for array, tensor in (
        (weights.first_t, net.layers[0].weight_t),
        (weights.rate_w, net.rate_out.weight),
        (weights.rank[0] if weights.rank is not None else None, net.rank_out.weight),
    ):
        assert array is not None and np.shares_memory(array, tensor.detach().numpy())


def test_rating_blend_zero_is_exactly_the_bias_terms() -> None:
    model = _hybrid(_net(), Blend(rating_weight=0.0))
    cols, values = _random_user(np.random.default_rng(0), 8)
    state = model.scorer.encode(cols, values)
    every = np.arange(N_MOVIES)
    expected = np.clip(model.bias.predict(model.bias.user_bias(cols, values), every), 1, 5)
    np.testing.assert_allclose(model.scorer.ratings(state, every), expected, atol=1e-6)


def test_the_rating_network_and_the_joint_head_fold_in_from_their_own_forward() -> None:
    """Served ratings blend the rating network's training forward, the joint network's
    rating head (each folding in its user bias from its own movie biases) and the bias
    terms, for one user and for a batch alike."""
    rank = _net()
    torch.manual_seed(1)
    rate = StackedAutoencoder(N_MOVIES, rating_network_config(rank.config))
    with torch.no_grad():
        rate.global_mean.fill_(3.6)
        rate.movie_bias.copy_(torch.linspace(0.6, -0.6, N_MOVIES))
    blend = Blend(rating_weight=0.5, joint_rating_weight=0.3)
    model = replace(_hybrid(rank, blend), rate_net=rate.eval())
    scorer = model.scorer
    cols, values = _random_user(np.random.default_rng(4), 12)
    row = np.zeros((1, N_MOVIES), dtype=np.float32)
    row[0, cols] = values
    with torch.inference_mode():
        rated, joint = (net(torch.from_numpy(row)).ratings[0].numpy() for net in (rate, rank))
    bias = model.bias.predict(model.bias.user_bias(cols, values), np.arange(N_MOVIES))
    expected = np.clip(0.5 * rated + 0.3 * joint + 0.2 * bias, 1.0, 5.0)
    state = scorer.encode(cols, values)
    np.testing.assert_allclose(scorer.ratings(state, np.arange(N_MOVIES)), expected, atol=1e-5)
    batch = scorer.score_rows(sp.csr_matrix(row))[1][0]
    np.testing.assert_allclose(batch, expected, atol=1e-5)
    assert not np.allclose(rated, joint, atol=0.05)  # the two networks really differ


@pytest.mark.parametrize(
    ("dense_max_bytes", "product_from"),
    [(ItemTable.DENSE_MAX_BYTES, None), (0, None), (0, 0), (0, 10)],
)
def test_the_serving_item_table_scores_as_the_item_path(
    trained,
    synthetic,
    monkeypatch: pytest.MonkeyPatch,
    dense_max_bytes: int,
    product_from: int | None,
) -> None:
    """Both layouts of the precomputed table (dense rows, padded neighbours) give
    `ItemToItem.score_rows`, for users of every size, the empty one included; so does the
    padded layout's product over all the weights, which serves users with more than
    ``product_from`` rated movies (heavy users)."""
    monkeypatch.setattr(ItemTable, "DENSE_MAX_BYTES", dense_max_bytes)
    path = trained.model.item_path
    table = ItemTable(path.weights)
    assert (table.dense is None) == (dense_max_bytes == 0)
    if product_from is not None:
        share = product_from * table.targets.shape[1] / table.by_target.values().numel()
        monkeypatch.setattr(ItemTable, "GATHER_SHARE", share)
    rng = np.random.default_rng(5)
    for rated in (0, 1, 17, synthetic.shape[1]):
        cols = np.sort(rng.choice(synthetic.shape[1], size=rated, replace=False))
        got = table.score(cols)
        assert got.dtype == np.float32 and got.shape == (synthetic.shape[1],)
        np.testing.assert_allclose(got, _path_scores(path, [cols])[0], rtol=1e-5, atol=1e-5)
    users = [np.sort(rng.choice(synthetic.shape[1], size=k, replace=False)) for k in (3, 1, 30)]
    np.testing.assert_allclose(table.score_many(users), _path_scores(path, users), atol=1e-5)


def _path_scores(path: ItemToItem, users: list[np.ndarray]) -> np.ndarray:
    """The item path's own batch scores for users who rated movie indices ``users[i]``."""
    rows = np.repeat(np.arange(len(users)), [c.size for c in users])
    cols = np.concatenate(users) if users else np.zeros(0, np.int64)
    shape = (len(users), path.n_movies)
    return path.score_rows(sp.csr_matrix((np.ones(rows.size), (rows, cols)), shape=shape))


def test_one_user_z_score_is_the_batch_z_score() -> None:
    rng = np.random.default_rng(6)
    for values in (rng.normal(3.0, 2.0, 500), np.full(20, 1.5), rng.normal(size=1)):
        row = values.astype(np.float32)
        np.testing.assert_allclose(zscore_one(row.copy()), zscore(row[None, :])[0], atol=1e-5)


def test_the_in_place_standardisation_is_the_z_score_times_its_weight() -> None:
    rng = np.random.default_rng(12)
    rows = np.vstack([rng.normal(3.0, 2.0, 700), np.full(700, 1.5), rng.exponential(size=700)])
    rows = rows.astype(np.float32)
    for scale in (1.0, 0.3):
        got = standardise_(rows.copy(), scale)
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, scale * zscore(rows), atol=1e-5)


def test_a_batch_of_users_scores_as_each_user_alone(trained, synthetic) -> None:
    """`scores_many` (the batched request path) gives each user's `scores`."""
    scorer = trained.model.scorer
    rng = np.random.default_rng(7)
    states = []
    for rated in (1, 4, 25, 60):
        cols = np.sort(rng.choice(synthetic.shape[1], size=rated, replace=False))
        states.append(scorer.encode(cols, rng.choice([1.0, 3.0, 4.5], size=rated)))
    batch = scorer.scores_many(UserBatch.of(states))
    assert batch.shape == (len(states), synthetic.shape[1])
    for row, state in zip(batch, states, strict=True):
        np.testing.assert_allclose(row, scorer.scores(state), atol=1e-4)
    single = scorer.scores_many(UserBatch.of(states[:1]))[0]
    np.testing.assert_allclose(single, scorer.scores(states[0]))


def test_a_blend_of_the_item_path_alone_serves_without_the_deep_product(
    trained, synthetic, monkeypatch: pytest.MonkeyPatch
) -> None:
    """item_weight 1 (what models of 25M ratings chose): serving gives evaluation's scores,
    for one user and for a batch, without ever computing the ranking layer's product over
    the catalog."""
    model = trained.model.with_blend(replace(trained.model.blend, item_weight=1.0))
    rows = synthetic.matrix[np.arange(0, 60, 12)]
    want, _ = model.predict(rows)  # evaluation computes every part
    scorer = FoldInScorer(model)

    def computed(*_: object) -> None:
        raise AssertionError("the deep ranking product was computed")

    monkeypatch.setattr(NetWeights, "logits", computed)
    monkeypatch.setattr(NetWeights, "logits_one", computed)
    states = [scorer.encode(rows[i].indices, rows[i].data) for i in range(rows.shape[0])]
    batch = scorer.scores_many(UserBatch.of(states))
    np.testing.assert_allclose(batch, want, atol=1e-5)
    for state, row in zip(states, want, strict=True):
        np.testing.assert_allclose(scorer.scores(state), row, atol=1e-5)


def test_a_blend_without_the_rating_network_serves_ratings_without_it(
    trained, synthetic, monkeypatch: pytest.MonkeyPatch
) -> None:
    """rating_weight 0 (what models of 25M ratings chose): serving gives evaluation's
    ratings, for one user and for a batch, without ever encoding the rating network."""
    blend = replace(trained.model.blend, rating_weight=0.0, joint_rating_weight=0.6)
    model = trained.model.with_blend(blend)
    assert model.rate_net is not model.rank_net
    rows = synthetic.matrix[np.arange(0, 60, 12)]
    _, want = model.predict(rows)  # evaluation computes every part
    scorer = FoldInScorer(model)
    rate_net = scorer.rate_net

    def computed(*_: object) -> None:
        raise AssertionError("the rating network was computed")

    for name in ("encode_user", "encode_batch", "cell_ratings"):
        monkeypatch.setattr(rate_net, name, computed)
    cols = [rows[i].indices for i in range(rows.shape[0])]
    values = [rows[i].data for i in range(rows.shape[0])]
    everything = [np.arange(synthetic.shape[1])] * len(cols)
    batch = scorer.ratings_many(scorer.encode_many(cols, values), everything)
    np.testing.assert_allclose(np.stack(batch), want, atol=1e-5)
    for user_cols, user_values, row in zip(cols, values, want, strict=True):
        state = scorer.encode(user_cols, user_values)
        np.testing.assert_allclose(scorer.ratings(state, everything[0]), row, atol=1e-5)


def test_a_batch_of_users_encodes_as_each_user_alone(trained, synthetic) -> None:
    """`encode_many` (the batch path the request batches use) gives each user's `encode`."""
    scorer = trained.model.scorer
    rng = np.random.default_rng(8)
    cols = [np.sort(rng.choice(synthetic.shape[1], size=k, replace=False)) for k in (1, 9, 40)]
    values = [rng.choice([0.5, 2.0, 4.0, 5.0], size=c.size).astype(np.float32) for c in cols]
    batch = scorer.encode_many(cols, values)
    for i, c, v in zip(range(len(batch)), cols, values, strict=True):
        got, want = batch.user(i), scorer.encode(c, v)
        np.testing.assert_allclose(got.rank_hidden, want.rank_hidden, atol=1e-5)
        np.testing.assert_allclose(got.rate_hidden, want.rate_hidden, atol=1e-5)
        assert got.rank_user_bias == pytest.approx(want.rank_user_bias, abs=1e-5)
        assert got.rate_user_bias == pytest.approx(want.rate_user_bias, abs=1e-5)
        assert got.bias_user_bias == pytest.approx(want.bias_user_bias, abs=1e-5)
        np.testing.assert_array_equal(got.cols, c)


def test_a_batch_of_users_rates_as_each_user_alone(trained, synthetic) -> None:
    """`ratings_many` (each user's top movies, rated in one pass) gives each user's
    `ratings`, whatever the number of movies asked per user."""
    scorer = trained.model.scorer
    rng = np.random.default_rng(9)
    cols = [np.sort(rng.choice(synthetic.shape[1], size=k, replace=False)) for k in (3, 12, 30)]
    values = [rng.choice([1.0, 2.5, 4.0, 5.0], size=c.size).astype(np.float32) for c in cols]
    asked = [rng.choice(synthetic.shape[1], size=k, replace=False) for k in (10, 1, 5)]
    batch = scorer.encode_many(cols, values)
    got = scorer.ratings_many(batch, asked)
    for i, (c, v, movies) in enumerate(zip(cols, values, asked, strict=True)):
        want = scorer.ratings(scorer.encode(c, v), movies)
        assert got[i].shape == movies.shape
        np.testing.assert_allclose(got[i], want, atol=1e-4)


def test_the_padded_item_table_keeps_rows_only_for_movies_with_weights() -> None:
    """Source movies without weights (outside the closed form's most-rated movies) share
    one padding row, and score nothing."""
    rng = np.random.default_rng(10)
    dense = rng.normal(size=(N_MOVIES, N_MOVIES)).astype(np.float32)
    dense[rng.random(dense.shape) < 0.8] = 0.0
    dense[::3] = 0.0  # every third movie has no weights
    table = ItemTable(sp.csr_matrix(dense))
    assert table.dense is not None
    with pytest.MonkeyPatch.context() as patch:  # the same weights in the padded layout
        patch.setattr(ItemTable, "DENSE_MAX_BYTES", 0)
        padded = ItemTable(sp.csr_matrix(dense))
    with_weights = int((np.abs(dense).sum(axis=1) > 0).sum())
    assert with_weights < N_MOVIES and padded.weights.shape[0] == with_weights + 1
    users = [np.array([0, 3, 6]), np.array([1, 2, 3, 4]), np.arange(N_MOVIES)]
    for cols in users:
        np.testing.assert_allclose(padded.score(cols), dense[cols].sum(axis=0), atol=1e-5)
    np.testing.assert_allclose(padded.score_many(users), table.score_many(users), atol=1e-5)


def test_top_many_lists_the_best_finite_scores_best_first_ties_by_index() -> None:
    rng = np.random.default_rng(14)
    scores = rng.normal(size=(3, 500)).astype(np.float32)
    scores[1, 100:110] = 5.0  # ten tied best movies
    scores[2, 3:] = -np.inf  # three movies left to list
    for n in (1, 10, 50):
        for row, (cols, found) in enumerate(top_many(scores, [n] * 3)):
            finite = np.flatnonzero(np.isfinite(scores[row]))
            want = finite[np.lexsort((finite, -scores[row, finite]))][:n]
            np.testing.assert_array_equal(cols, want)
            np.testing.assert_array_equal(found, scores[row, want])
