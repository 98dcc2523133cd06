"""The fold-in matrix factorisation: its users are folded in as it was fitted, its share is
chosen on validation, served as evaluated, and stored in the one artifact."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from app.ml.artifacts import ArtifactMeta, ArtifactStore, load_artifact
from app.ml.blend import choose_blend
from app.ml.data import holdout_split
from app.ml.factors import ItemFactors, ridge_rows
from app.ml.scoring import FoldInScorer
from app.ml.train import make_validation


def _planted(n_users: int = 120, n_movies: int = 80, rank: int = 3, seed: int = 0):
    """Residuals of a planted rank-``rank`` matrix plus noise, ~30 % of the cells rated."""
    rng = np.random.default_rng(seed)
    full = rng.normal(size=(n_users, rank)) @ rng.normal(size=(rank, n_movies)) / np.sqrt(rank)
    full += rng.normal(scale=0.1, size=full.shape)
    mask = rng.random(full.shape) < 0.3
    mask[np.arange(n_users), rng.integers(0, n_movies, n_users)] = True  # none left empty
    return sp.csr_matrix(np.where(mask, full, 0.0), dtype=np.float32), full, mask


def test_a_training_users_fold_in_is_the_fit_and_new_users_are_served_alike() -> None:
    """After enough sweeps the fit is a fixed point: the item step on the folded-in users
    gives back the item factors, so folding a training user in from their ratings gives
    the factors the fit itself would. A user never seen in training (the planted matrix's
    held-out cells) is folded in the same way and predicted well."""
    train, full, mask = _planted()
    fit = ItemFactors.fit(train, rank=3, lam=0.02, sweeps=60, seed=0)
    users = fit.fold_in(train)
    again = ridge_rows(sp.csr_matrix(train.T), users, fit.lam)
    np.testing.assert_allclose(again, fit.factors, atol=2e-3)
    fitted = users @ fit.factors.T
    train_err = np.sqrt(np.mean((fitted - full)[mask] ** 2))
    held_err = np.sqrt(np.mean((fitted - full)[~mask] ** 2))
    assert train_err < 0.1 and held_err < 0.25 < np.std(full[~mask])
    new, _, _ = _planted(n_users=30, seed=0)  # same users' taste, rows scored as new ones
    single = np.vstack([fit.fold_in(new[i]) for i in range(new.shape[0])])
    np.testing.assert_allclose(single, fit.fold_in(new), atol=1e-5)  # one or a batch alike


def test_the_ridge_solve_of_each_row_whatever_its_block(monkeypatch) -> None:
    """Rows of every length (none, one, longer than a whole block) solved in blocks of
    like length give each row's own ridge solution, in the rows' own order."""
    from app.ml import factors as module

    rng = np.random.default_rng(1)
    n_rows, n_cols, k, lam = 400, 900, 6, 0.1
    lengths = np.minimum(rng.zipf(1.6, n_rows), n_cols)
    lengths[[0, 7]], lengths[3] = 0, n_cols
    indptr = np.r_[0, np.cumsum(lengths)]
    cols = np.concatenate([rng.choice(n_cols, n, replace=False) for n in lengths])
    rows = sp.csr_matrix((rng.normal(size=cols.size), cols, indptr), shape=(n_rows, n_cols))
    item = rng.normal(size=(n_cols, k)).astype(np.float32)
    monkeypatch.setattr(module, "BLOCK_CELLS", 256)  # dozens of blocks, one row over a block
    solved = ridge_rows(rows, item, lam)
    for i in range(n_rows):
        picked = rows.indices[indptr[i] : indptr[i + 1]]
        f = item[picked].astype(np.float64)
        gram = f.T @ f + lam * max(picked.size, 1) * np.eye(k)
        expected = np.linalg.solve(gram, f.T @ rows.data[indptr[i] : indptr[i + 1]])
        np.testing.assert_allclose(solved[i], expected, atol=1e-4, err_msg=f"row {i}")
    assert not solved[[0, 7]].any()


def test_a_request_in_any_order_folds_in_as_sorted(with_factors, synthetic) -> None:
    """A request lists its movies in any order; the fold-in must not depend on it."""
    scorer = FoldInScorer(with_factors)
    row = synthetic.matrix[3]
    cols, values = row.indices, row.data
    flip = np.random.default_rng(0).permutation(cols.size)
    every = np.arange(synthetic.shape[1])
    ordered = scorer.ratings(scorer.encode([cols], [values]), [every])[0]
    shuffled = scorer.ratings(scorer.encode([cols[flip]], [values[flip]]), [every])[0]
    np.testing.assert_allclose(shuffled, ordered, atol=1e-5)


def test_a_row_without_ratings_folds_in_to_zero_factors() -> None:
    train, _, _ = _planted()
    fit = ItemFactors.fit(train, rank=3, lam=0.05, sweeps=3, seed=0)
    empty = sp.csr_matrix((2, train.shape[1]), dtype=np.float32)
    assert np.array_equal(fit.fold_in(empty), np.zeros((2, 3), dtype=np.float32))


@pytest.fixture(scope="module")
def with_factors(trained, synthetic):
    """The trained model with a fitted matrix factorisation at a share of 0.3."""
    model = trained.model
    fit = ItemFactors.fit(model.bias.residuals(synthetic.matrix), 4, 0.05, 6, 0)
    return replace(model, factors=fit, blend=replace(model.blend, factor_weight=0.3))


def test_the_served_rating_is_the_validated_formula(with_factors, synthetic) -> None:
    """Serving (encode, ratings), evaluation (score_rows) and the hand-written blend agree:
    a * rating net + b * joint head + c * (bias + p . q) + (1 - a - b - c) * bias."""
    model, blend = with_factors, with_factors.blend
    scorer = FoldInScorer(model)
    rows = synthetic.matrix[np.arange(0, 50, 7)]
    every = np.arange(synthetic.shape[1])
    _, evaluated = scorer.score_rows(rows)
    cols = [rows[i].indices for i in range(rows.shape[0])]
    values = [rows[i].data for i in range(rows.shape[0])]
    served = scorer.ratings(scorer.encode(cols, values), [every] * rows.shape[0])
    np.testing.assert_allclose(np.vstack(served), evaluated, atol=1e-5)
    parts = scorer.rating_parts(rows)
    assert parts.factors is not None and parts.joint is not None
    users = model.factors.fold_in(model.bias.residuals(rows))
    mf_rating = parts.bias + users @ model.factors.factors.T
    a, b, c = blend.rating_weight, blend.joint_rating_weight, blend.factor_weight
    expected = a * parts.rate + b * parts.joint + c * mf_rating + (1 - a - b - c) * parts.bias
    lo, hi = model.rating_scale
    np.testing.assert_allclose(evaluated, np.clip(expected, lo, hi), atol=1e-4)
    assert not np.allclose(
        evaluated, FoldInScorer(replace(model, factors=None)).score_rows(rows)[1]
    )


def test_a_share_of_zero_leaves_the_ratings_as_they_were(with_factors, synthetic) -> None:
    rows = synthetic.matrix[:40]
    zero = with_factors.with_blend(replace(with_factors.blend, factor_weight=0.0))
    before = FoldInScorer(replace(zero, factors=None)).score_rows(rows)
    after = FoldInScorer(zero).score_rows(rows)
    np.testing.assert_array_equal(before[0], after[0])
    np.testing.assert_array_equal(before[1], after[1])


def test_a_fit_that_cannot_help_is_not_chosen_and_the_blend_stays(trained, synthetic) -> None:
    """A matrix factorisation that predicts nothing (zero factors) ties at every share:
    validation keeps the blend chosen without it, and no factors."""
    train, valid = holdout_split(synthetic, 0.1, seed=0)
    validation = make_validation(train, valid, trained.model.config)
    model = replace(trained.model.as_validated(), factors=None)
    without, none, _ = choose_blend(model, validation)
    useless = ItemFactors(np.zeros((synthetic.shape[1], 4), dtype=np.float32), 0.05)
    blend, chosen, report = choose_blend(model, validation, factors=[useless])
    assert none is None and chosen is None and blend == without and blend.factor_weight == 0.0
    assert report["factors"] and all(r["lambda"] == 0.05 for r in report["factors"])


def test_a_matrix_factorisation_round_trips_in_the_one_artifact(
    tmp_path: Path, with_factors, synthetic
) -> None:
    validated = ItemFactors.fit(with_factors.bias.residuals(synthetic.matrix), 4, 0.1, 2, 1)
    model = replace(with_factors, validated=replace(with_factors.validated, factors=validated))
    saved = ArtifactStore(tmp_path).save(model, synthetic.movies, ArtifactMeta("v1"))
    assert [p.name for p in saved.path.parent.iterdir()] == ["v1.pt"]
    loaded = load_artifact(saved.path).model
    assert loaded.blend == model.blend and loaded.factors is not None
    np.testing.assert_array_equal(loaded.factors.factors, model.factors.factors)
    assert loaded.validated is not None and loaded.validated.factors is not None
    np.testing.assert_array_equal(loaded.validated.factors.factors, validated.factors)
    rows = synthetic.matrix[:20]
    for a, b in ((model, loaded), (model.as_validated(), loaded.as_validated())):
        np.testing.assert_array_equal(FoldInScorer(a).score_rows(rows)[1],
                                      FoldInScorer(b).score_rows(rows)[1])  # fmt: skip
