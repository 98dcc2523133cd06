"""The item-to-item path's closed form, checked against EASE and its own definition."""

from __future__ import annotations

import numpy as np
import pytest

from app.ml.baselines import EASE
from app.ml.data import RatingMatrix
from app.ml.item_path import CoOccurrence, fit_item_to_item


def test_without_liked_weight_or_pruning_the_path_is_ease(synthetic) -> None:
    """c = 0, every movie kept, no pruning: EASE's weights (float64 general inverse),
    reproduced by the float32 Cholesky inverse computed in blocks."""
    n = synthetic.shape[1]
    co = CoOccurrence.of(synthetic.matrix, threshold=4.0, max_movies=n)
    path = fit_item_to_item(co, lam=50.0, liked_weight=0.0, neighbors=n)
    ease = EASE(50.0, form="primal").fit(synthetic)
    got = path.weights.toarray()
    np.testing.assert_allclose(got, ease.weights, atol=2e-5)


def test_liked_weight_solves_its_ridge_regression_with_a_zero_diagonal(synthetic) -> None:
    """B minimises |X + cL - XB|² + lam|B|² subject to diag(B) = 0: the gradient of the
    objective is zero off the diagonal (checked in float64 from the fitted weights)."""
    n = synthetic.shape[1]
    lam, c = 30.0, 3.0
    co = CoOccurrence.of(synthetic.matrix, threshold=4.0, max_movies=n)
    b = fit_item_to_item(co, lam, liked_weight=c, neighbors=n).weights.toarray()
    assert np.all(np.diag(b) == 0.0)
    x = (synthetic.matrix > 0).astype(np.float64).toarray()
    liked = (synthetic.matrix >= 4.0).astype(np.float64).toarray()
    gradient = x.T @ (x @ b - x - c * liked) + lam * b
    np.fill_diagonal(gradient, 0.0)
    assert np.abs(gradient).max() < 1e-3 * np.abs(x.T @ x).max()


def test_pruning_and_the_movie_cap_bound_the_weights(synthetic) -> None:
    counts = np.bincount(synthetic.matrix.indices, minlength=synthetic.shape[1])
    co = CoOccurrence.of(synthetic.matrix, threshold=4.0, max_movies=40)
    path = fit_item_to_item(co, lam=50.0, liked_weight=3.0, neighbors=7)
    weights = path.weights.tocsr()
    assert np.diff(weights.indptr).max() == 7
    touched = np.union1d(np.flatnonzero(np.diff(weights.indptr)), weights.indices)
    assert set(touched) <= set(np.argsort(-counts, kind="stable")[:40])
    assert co.gram.shape == (40, 40)


def test_a_gram_matrix_that_is_not_positive_definite_is_refused(synthetic) -> None:
    co = CoOccurrence.of(synthetic.matrix, threshold=4.0, max_movies=20)
    with pytest.raises(np.linalg.LinAlgError):
        fit_item_to_item(co, lam=-1e9, liked_weight=0.0, neighbors=5)


@pytest.mark.parametrize("users", [12, 200])
def test_ease_dual_form_scores_as_its_primal_weights(synthetic, users: int) -> None:
    """The users x users form (chosen where users are fewer than movies) is the same model."""
    sample = RatingMatrix(synthetic.matrix[:users], synthetic.users, synthetic.movies)
    primal = EASE(50.0, form="primal").fit(sample)
    dual = EASE(50.0, form="dual").fit(sample)
    rows = synthetic.matrix[users - 5 : users + 5]  # trained and unseen users alike
    np.testing.assert_allclose(dual(rows)[0], primal(rows)[0], rtol=1e-4, atol=1e-4)
