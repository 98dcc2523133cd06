"""One forward pass: serving's scores and ratings are the network's own forward
(`StackedAutoencoder.encode` and its heads), for a batch of users and for one alike."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from app.ml.config import config_from, rating_network_config
from app.ml.explain import NetArrays
from app.ml.hybrid import BiasTerms, Blend, HybridModel
from app.ml.item_path import ItemToItem
from app.ml.model import StackedAutoencoder, predict
from app.ml.scoring import FoldInScorer, ItemTable, top_many, zscore
from tests.ml.dense_reference import dense_forward

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


def _rows(users: list[tuple[np.ndarray, np.ndarray]]) -> sp.csr_matrix:
    rows = np.repeat(np.arange(len(users)), [cols.size for cols, _ in users])
    cols = np.concatenate([cols for cols, _ in users])
    values = np.concatenate([values for _, values in users])
    return sp.csr_matrix((values, (rows, cols)), shape=(len(users), N_MOVIES), dtype=np.float32)


def _bias_of(model: HybridModel, cols: np.ndarray, values: np.ndarray) -> np.ndarray:
    """The bias terms' prediction over the catalog for one user."""
    user_bias = model.bias.user_biases(_rows([(cols, values)]))[0]
    return model.bias.predict(user_bias, np.arange(N_MOVIES))


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
def test_serving_a_batch_is_the_networks_forward(overrides: dict) -> None:
    """Scores and ratings served for a batch (the empty user included) are the network's
    forward: its inference `predict`, and the dense statement of the network."""
    net = _net(**overrides)
    scorer = FoldInScorer(_hybrid(net))
    rng = np.random.default_rng(1)
    users = [_random_user(rng, rated) for rated in (1, 5, 30, 0)]
    batch = scorer.encode([c for c, _ in users], [v for _, v in users])
    rows = _rows(users)
    forward_scores, forward_ratings = predict(net, rows)
    with torch.inference_mode():
        dense = dense_forward(net, torch.from_numpy(rows.toarray()))
    served = scorer.scores(batch)
    np.testing.assert_allclose(served, zscore(forward_scores.copy()), atol=1e-4)
    np.testing.assert_allclose(served, zscore(dense.scores.numpy().copy()), atol=1e-4)
    every = [np.arange(N_MOVIES)] * len(users)
    ratings = np.stack(scorer.ratings(batch, every))
    np.testing.assert_allclose(ratings, forward_ratings, atol=1e-5)
    np.testing.assert_allclose(ratings, dense.ratings.clamp(1.0, 5.0).numpy(), atol=1e-5)


def test_a_lone_user_is_a_batch_of_one(trained, synthetic) -> None:
    """Each user served alone gets the row the batch gave them, scores and ratings."""
    scorer = FoldInScorer(trained.model)
    rng = np.random.default_rng(7)
    cols = [np.sort(rng.choice(synthetic.shape[1], size=k, replace=False)) for k in (1, 4, 25)]
    values = [rng.choice([1.0, 3.0, 4.5], size=c.size).astype(np.float32) for c in cols]
    batch = scorer.encode(cols, values)
    scores = scorer.scores(batch)
    asked = [rng.choice(synthetic.shape[1], size=k, replace=False) for k in (10, 1, 5)]
    ratings = scorer.ratings(batch, asked)
    assert scores.shape == (len(cols), synthetic.shape[1])
    for i in range(len(cols)):
        alone = scorer.encode([cols[i]], [values[i]])
        np.testing.assert_allclose(scorer.scores(alone)[0], scores[i], atol=1e-4)
        np.testing.assert_allclose(scorer.ratings(alone, [asked[i]])[0], ratings[i], atol=1e-5)


def test_serving_and_evaluation_give_the_same_answers(trained, synthetic) -> None:
    """Serving (users with their rated movies) and evaluation (rows of a rating matrix)
    share the definitions, item path included, for users seen in training and a stranger."""
    model = trained.model
    assert model.item_path is not None and model.blend.item_weight > 0
    scorer = FoldInScorer(model)
    rng = np.random.default_rng(3)
    users = rng.choice(synthetic.shape[0], size=6, replace=False)
    rows = [synthetic.matrix[u] for u in users]
    cols = np.sort(rng.choice(synthetic.shape[1], size=12, replace=False))
    stranger = sp.csr_matrix(
        (rng.choice([1.0, 3.5, 5.0], size=cols.size), (np.zeros(cols.size, int), cols)),
        shape=(1, synthetic.shape[1]),
        dtype=np.float32,
    )
    matrix = sp.vstack([*rows, stranger]).tocsr()
    scores, ratings = scorer.score_rows(matrix)
    batch = scorer.encode(
        [matrix[i].indices for i in range(matrix.shape[0])],
        [matrix[i].data for i in range(matrix.shape[0])],
    )
    np.testing.assert_allclose(scorer.scores(batch), scores, atol=1e-4)
    every = [np.arange(synthetic.shape[1])] * matrix.shape[0]
    np.testing.assert_allclose(np.stack(scorer.ratings(batch, every)), ratings, atol=1e-4)


def test_the_explainer_reads_the_networks_own_weights_without_a_copy() -> None:
    """A served 59k-movie model would otherwise hold every layer twice (~500 MB)."""
    net = _net()
    arrays = NetArrays(net)
    for array, tensor in (
        (arrays.first_t, net.layers[0].weight_t),
        (arrays.rate_w, net.rate_out.weight),
        (arrays.rank[0] if arrays.rank is not None else None, net.rank_out.weight),
    ):
        assert array is not None and np.shares_memory(array, tensor.detach().numpy())


def test_rating_blend_zero_is_exactly_the_bias_terms() -> None:
    model = _hybrid(_net(), Blend(rating_weight=0.0))
    scorer = FoldInScorer(model)
    cols, values = _random_user(np.random.default_rng(0), 8)
    served = scorer.ratings(scorer.encode([cols], [values]), [np.arange(N_MOVIES)])[0]
    np.testing.assert_allclose(served, np.clip(_bias_of(model, cols, values), 1, 5), atol=1e-6)


def test_the_rating_network_and_the_joint_head_fold_in_from_their_own_forward() -> None:
    """Served ratings blend the rating network's forward, the joint network's rating head
    (each folding in its user bias from its own movie biases) and the bias terms, served
    and evaluated alike."""
    rank = _net()
    torch.manual_seed(1)
    rate = StackedAutoencoder(N_MOVIES, rating_network_config(rank.config))
    with torch.no_grad():
        rate.global_mean.fill_(3.6)
        rate.movie_bias.copy_(torch.linspace(0.6, -0.6, N_MOVIES))
    blend = Blend(rating_weight=0.5, joint_rating_weight=0.3)
    model = replace(_hybrid(rank, blend), rate_net=rate.eval())
    scorer = FoldInScorer(model)
    cols, values = _random_user(np.random.default_rng(4), 12)
    row = _rows([(cols, values)])
    with torch.inference_mode():
        x = torch.from_numpy(row.toarray())
        rated, joint = (dense_forward(net, x).ratings[0].numpy() for net in (rate, rank))
    expected = np.clip(0.5 * rated + 0.3 * joint + 0.2 * _bias_of(model, cols, values), 1, 5)
    served = scorer.ratings(scorer.encode([cols], [values]), [np.arange(N_MOVIES)])[0]
    np.testing.assert_allclose(served, expected, atol=1e-5)
    np.testing.assert_allclose(scorer.score_rows(row)[1][0], expected, atol=1e-5)
    assert not np.allclose(rated, joint, atol=0.05)  # the two networks really differ


def test_a_blend_of_the_item_path_alone_serves_without_the_deep_product(
    trained, synthetic, monkeypatch: pytest.MonkeyPatch
) -> None:
    """item_weight 1 (what models of 25M ratings chose): serving gives evaluation's scores
    without ever computing the ranking layer's product over the catalog."""
    model = trained.model.with_blend(replace(trained.model.blend, item_weight=1.0))
    rows = synthetic.matrix[np.arange(0, 60, 12)]
    scorer = FoldInScorer(model)
    want, _ = scorer.score_rows(rows)  # evaluation computes every part

    def computed(*_: object) -> None:
        raise AssertionError("the deep ranking product was computed")

    monkeypatch.setattr(scorer.rank_net, "rank_logits", computed)
    batch = scorer.encode(
        [rows[i].indices for i in range(rows.shape[0])],
        [rows[i].data for i in range(rows.shape[0])],
    )
    np.testing.assert_allclose(scorer.scores(batch), want, atol=1e-5)


def test_a_blend_without_the_rating_network_serves_ratings_without_it(
    trained, synthetic, monkeypatch: pytest.MonkeyPatch
) -> None:
    """rating_weight 0 (what models of 25M ratings chose): serving gives evaluation's
    ratings without ever running the rating network."""
    blend = replace(trained.model.blend, rating_weight=0.0, joint_rating_weight=0.6)
    model = trained.model.with_blend(blend)
    assert model.rate_net is not model.rank_net
    rows = synthetic.matrix[np.arange(0, 60, 12)]
    scorer = FoldInScorer(model)
    _, want = scorer.score_rows(rows)  # evaluation computes every part

    def computed(*_: object) -> None:
        raise AssertionError("the rating network was computed")

    for name in ("encode", "ratings_at"):
        monkeypatch.setattr(scorer.rate_net, name, computed)
    cols = [rows[i].indices for i in range(rows.shape[0])]
    values = [rows[i].data for i in range(rows.shape[0])]
    everything = [np.arange(synthetic.shape[1])] * len(cols)
    served = scorer.ratings(scorer.encode(cols, values), everything)
    np.testing.assert_allclose(np.stack(served), want, atol=1e-5)


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
    """The item path's own batch scores for users who rated (5 stars: every variant's input)
    movie indices ``users[i]``."""
    rows = np.repeat(np.arange(len(users)), [c.size for c in users])
    cols = np.concatenate(users) if users else np.zeros(0, np.int64)
    shape = (len(users), path.n_movies)
    return path.score_rows(sp.csr_matrix((np.full(rows.size, 5.0), (rows, cols)), shape=shape))


def test_zscore_standardises_each_row_in_place() -> None:
    rng = np.random.default_rng(6)
    rows = np.vstack([rng.normal(3.0, 2.0, 700), np.full(700, 1.5), rng.exponential(size=700)])
    rows = rows.astype(np.float32)
    want = (rows - rows.mean(axis=1, keepdims=True)) / (rows.std(axis=1, keepdims=True) + 1e-6)
    copy = rows.copy()
    got = zscore(copy)
    assert got is copy and got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=1e-5)


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
