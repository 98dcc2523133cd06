"""Id maps, chunked building, half stars, holdout splits, split files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from app.ml.data import IdMap, build_rating_matrix, holdout_split, iter_chunks, read_split_file


def test_id_map_arbitrary_ids() -> None:
    m = IdMap.from_ids(np.array([900, -5, 42, 900, 7]))
    assert len(m) == 4
    assert m.ids.tolist() == [-5, 7, 42, 900]
    assert m.index_of(np.array([42, 1, 900, -5, 10**12])).tolist() == [2, -1, 3, 0, -1]
    assert IdMap(np.zeros(0, np.int64)).index_of(np.array([1])).tolist() == [-1]
    with pytest.raises(ValueError):
        IdMap(np.array([3, 1]))


def test_half_stars_and_fixed_catalog() -> None:
    chunk = (np.array([5, 5, 9]), np.array([100, 300, 300]), np.array([0.5, 4.5, 3.0], np.float32))
    m = build_rating_matrix([chunk], movie_ids=np.array([300, 100, 200]))
    assert m.shape == (2, 3)
    assert m.movies.ids.tolist() == [100, 200, 300]
    assert m.matrix.toarray().tolist() == [[0.5, 0.0, 4.5], [0.0, 0.0, 3.0]]
    assert m.scale() == (0.5, 4.5)
    with pytest.raises(ValueError, match="outside"):
        build_rating_matrix([chunk], movie_ids=np.array([100]))
    with pytest.raises(ValueError, match="> 0"):
        build_rating_matrix([(np.array([1]), np.array([1]), np.array([0.0], np.float32))])


def test_chunked_equals_one_shot_and_last_write_wins(make_chunk) -> None:
    chunk = make_chunk(n_users=50, n_movies=40, per_user=10)
    one = build_rating_matrix([chunk])
    many = build_rating_matrix(iter_chunks(chunk, 37))
    assert one.users == many.users and one.movies == many.movies
    assert (one.matrix != many.matrix).nnz == 0
    upsert = build_rating_matrix(
        [(np.array([1, 1]), np.array([2, 2]), np.array([1.0, 4.0], np.float32))]
    )
    assert upsert.matrix.toarray().tolist() == [[4.0]]


def test_holdout_is_seeded_per_user_and_disjoint(synthetic) -> None:
    tr1, va1 = holdout_split(synthetic, 0.2, seed=3)
    tr2, va2 = holdout_split(synthetic, 0.2, seed=3)
    tr3, _ = holdout_split(synthetic, 0.2, seed=4)
    assert (tr1.matrix != tr2.matrix).nnz == 0 and (va1.matrix != va2.matrix).nnz == 0
    assert (tr1.matrix != tr3.matrix).nnz > 0
    assert tr1.matrix.nnz + va1.matrix.nnz == synthetic.nnz
    assert (tr1.matrix + va1.matrix != synthetic.matrix).nnz == 0
    assert tr1.matrix.multiply(va1.matrix).nnz == 0
    per_user_train = np.diff(tr1.matrix.indptr)
    per_user_valid = np.diff(va1.matrix.indptr)
    assert (per_user_train >= 1).all()
    assert abs(per_user_valid.mean() - 0.2 * 30) < 0.5  # every user holds out ~20 %
    assert per_user_valid.min() >= 4 and per_user_valid.max() <= 8


def test_read_split_file_keeps_first_row(tmp_path: Path) -> None:
    path = tmp_path / "u1.base"
    path.write_text("1\t1\t5\t874965758\n1\t2\t3\t876893171\n2\t1\t4\t876893172\n")
    users, movies, ratings = read_split_file(path)
    assert users.tolist() == [1, 1, 2] and movies.tolist() == [1, 2, 1]
    assert ratings.tolist() == [5.0, 3.0, 4.0] and ratings.dtype == np.float32
    with pytest.raises(FileNotFoundError):
        read_split_file(tmp_path / "missing")
