"""`app.ml.new_movies` on hand-computed cases: neighbours, scores, bias terms."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from app.ml.hybrid import BiasTerms
from app.ml.new_movies import NewMovieColumns, fit

BIAS = BiasTerms(mean=3.0, movie_bias=np.zeros(4, np.float32), user_reg=0.0)


def test_neighbours_are_the_trained_movies_its_raters_rated_most_alike() -> None:
    # raters 0, 1 rated trained movies 0 and 1; rater 2 rated movie 2; nobody movie 3
    raters = sp.csr_matrix(np.array([[4, 5, 0, 0], [5, 4, 0, 0], [0, 0, 3, 0]], dtype=np.float32))
    # new movie 0: rated by raters 0 and 1; new movie 1: by nobody read
    rated_by = sp.csr_matrix(np.array([[5, 5, 0], [0, 0, 0]], dtype=np.float32))
    trained_counts = np.array([2.0, 8.0, 1.0, 0.0])
    columns = fit(raters, rated_by, np.array([2, 0]), trained_counts, BIAS, 2.0, k=3, shrink=1.0)
    # cosine x shrinkage: movie 0: 2 / sqrt(2 * 2) * 2/3; movie 1: 2 / sqrt(2 * 8) * 2/3
    sims = np.array([2 / 2 * 2 / 3, 2 / 4 * 2 / 3])
    assert columns.neighbours[0, :2].tolist() == [0, 1]
    np.testing.assert_allclose(columns.weights[0, :2], sims / sims.sum(), rtol=1e-6)
    assert columns.weights[0, 2] == 0 and columns.weights[1].sum() == 0
    # user biases (mean 3, reg 0): rater 0 (4+5)/2 - 3 = 1.5, rater 1 1.5
    # movie bias: ((5 - 3 - 1.5) * 2) / (2 + 2) = 0.25
    np.testing.assert_allclose(columns.movie_bias, [0.25, 0.0], rtol=1e-6)
    np.testing.assert_allclose(columns.log_popularity, np.log1p([2, 0]), rtol=1e-6)


def test_scores_are_the_weighted_mean_of_the_neighbours_before_the_penalty() -> None:
    columns = NewMovieColumns(
        neighbours=np.array([[0, 2], [1, 0]]),
        weights=np.array([[0.75, 0.25], [0.0, 0.0]], dtype=np.float32),
        log_popularity=np.array([1.0, 2.0], dtype=np.float32),
        movie_bias=np.array([0.5, -0.5], dtype=np.float32),
    )
    popularity = np.array([2.0, 0.0, 4.0], dtype=np.float32)
    trained = np.array([[1.0, 5.0, 3.0], [0.0, 0.0, -2.0]], dtype=np.float32)
    scores = columns.scores(trained, popularity, penalty=0.5)
    assert scores.shape == (2, 5)
    np.testing.assert_array_equal(scores[:, :3], trained)
    # 0.75 * (1 + 0.5 * 2) + 0.25 * (3 + 0.5 * 4) - 0.5 * 1
    np.testing.assert_allclose(scores[:, 3], [0.75 * 2 + 0.25 * 5 - 0.5, 0.75 * 1 + 0.25 * 0 - 0.5])
    assert np.isneginf(scores[:, 4]).all(), "tied to no trained movie: never ranked"
    ratings = columns.ratings(BIAS, np.array([1.0, 2.0], np.float32), np.array([0, 0]), (1, 5))
    np.testing.assert_allclose(ratings, [4.5, 5.0])  # 3 + 0.5 + 1, then clamped to 5


def test_take_and_concat_keep_each_movie_whole() -> None:
    a = NewMovieColumns(
        np.array([[1]]),
        np.array([[1.0]], np.float32),
        np.ones(1, np.float32),
        np.zeros(1, np.float32),
    )
    b = NewMovieColumns(
        np.array([[2, 3]]),
        np.array([[0.5, 0.5]], np.float32),
        np.full(1, 2.0, np.float32),
        np.ones(1, np.float32),
    )
    both = NewMovieColumns.concat([NewMovieColumns.empty(), a, b]).take(np.array([1, 0]))
    assert both.neighbours.tolist() == [[2, 3], [1, 0]]
    assert both.weights.tolist() == [[0.5, 0.5], [1.0, 0.0]]
    assert both.log_popularity.tolist() == [2.0, 1.0] and len(both) == 2
