"""docs/evaluation.md's per-user holdout, the DB-free MovieLens reader and `evaluate --dataset`."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from app.cli import cli
from app.ml import evaluate as ev
from app.ml.baselines import Popularity
from app.ml.config import config_from
from app.ml.data import build_rating_matrix, holdout_split, per_user_holdout
from app.movielens.files import MovieLensFormatError
from app.movielens.ratings import Ratings, read_movielens

# --------------------------------------------------------------------------- the split


def _ratings(seed: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Users with 1..40 ratings (several below 5), rows in random order."""
    rng = np.random.default_rng(seed)
    counts = np.concatenate([np.arange(1, 41), [4, 5, 6, 7]])
    users = np.repeat(100 + 3 * np.arange(counts.size), counts)
    movies = np.concatenate([rng.choice(500, size=c, replace=False) + 1 for c in counts])
    ratings = rng.integers(1, 11, users.size) / 2
    stamps = rng.integers(0, 5, users.size)  # many ties: the sort must still be defined
    order = rng.permutation(users.size)
    return users[order], movies[order], ratings[order].astype(np.float32), stamps[order]


def _rows(chunk: tuple[np.ndarray, ...]) -> set[tuple[int, int]]:
    return set(zip(chunk[0].tolist(), chunk[1].tolist(), strict=True))


def test_small_users_stay_in_train_and_counts_per_user_are_exact() -> None:
    users, movies, ratings, stamps = _ratings()
    train, test = per_user_holdout(users, movies, ratings, stamps)
    assert train[0].size + test[0].size == users.size
    assert _rows(train) | _rows(test) == _rows((users, movies))
    assert not _rows(train) & _rows(test)
    n_user = dict(zip(*np.unique(users, return_counts=True), strict=True))
    n_test = dict(zip(*np.unique(test[0], return_counts=True), strict=True))
    for user, n in n_user.items():
        expected = 0 if n < 5 else max(1, int(np.floor(0.2 * n + 0.5)))
        assert n_test.get(user, 0) == expected, (user, n)


def test_split_follows_the_documented_ordering_rule() -> None:
    """A plain per-user loop over docs/evaluation.md's wording picks exactly the same rows."""
    users, movies, ratings, stamps = _ratings()
    order = sorted(range(users.size), key=lambda i: (users[i], movies[i], stamps[i]))
    draws = np.random.default_rng(7).random(users.size)
    expected: set[tuple[int, int]] = set()
    by_user: dict[int, list[int]] = {}
    for position, row in enumerate(order):
        by_user.setdefault(int(users[row]), []).append(position)
    for positions in by_user.values():
        if len(positions) >= 5:
            chosen = sorted(positions, key=lambda p: draws[p])
            for p in chosen[: max(1, int(np.floor(0.2 * len(positions) + 0.5)))]:
                expected.add((int(users[order[p]]), int(movies[order[p]])))
    _, test = per_user_holdout(users, movies, ratings, stamps)
    assert _rows(test) == expected


def test_split_is_deterministic_and_ignores_input_order() -> None:
    users, movies, ratings, stamps = _ratings()
    first = per_user_holdout(users, movies, ratings, stamps)
    shuffled = np.random.default_rng(1).permutation(users.size)
    again = per_user_holdout(users[shuffled], movies[shuffled], ratings[shuffled], stamps[shuffled])
    for a, b in zip(first, again, strict=True):
        for x, y in zip(a, b, strict=True):
            np.testing.assert_array_equal(x, y)
    other_seed = per_user_holdout(users, movies, ratings, stamps, seed=8)
    assert _rows(other_seed[1]) != _rows(first[1])


def test_test_ratings_keep_their_values() -> None:
    users, movies, ratings, stamps = _ratings()
    value = {(int(u), int(m)): float(r) for u, m, r in zip(users, movies, ratings, strict=True)}
    _, test = per_user_holdout(users, movies, ratings, stamps)
    for u, m, r in zip(*test, strict=True):
        assert value[(int(u), int(m))] == float(r)


# --------------------------------------------------------------------------- the reader

RATINGS = [(1, 10, 4.0, 100), (1, 20, 3.5, 101), (2, 10, 5.0, 102), (2, 30, 1.0, 103)]
CATALOG = [(10, "Toy Story (1995)"), (20, "Heat, The (1995)"), (30, 'Say "Hi" (2000)')]


def _write_100k(folder: Path) -> None:
    folder.mkdir(parents=True)
    lines = [f"{u}\t{m}\t{r:g}\t{t}" for u, m, r, t in RATINGS if r == int(r)]
    (folder / "u.data").write_text("\n".join(lines) + "\n")
    flags = "|".join(["0"] * 19)
    items = [f"{m}|{title}|01-Jan-1995||http://x|{flags}" for m, title in CATALOG]
    (folder / "u.item").write_bytes("\n".join(items).encode("latin-1"))


def _write_1m(folder: Path) -> None:
    folder.mkdir(parents=True)
    lines = [f"{u}::{m}::{r:g}::{t}" for u, m, r, t in RATINGS]
    (folder / "ratings.dat").write_text("\n".join(lines))  # no final newline
    (folder / "movies.dat").write_text("".join(f"{m}::{t}::Drama\n" for m, t in CATALOG))


def _write_latest(folder: Path, rows: list[tuple[int, int, float, int]] = RATINGS) -> None:
    folder.mkdir(parents=True)
    lines = ["userId,movieId,rating,timestamp"] + [f"{u},{m},{r:g},{t}" for u, m, r, t in rows]
    (folder / "ratings.csv").write_text("\r\n".join(lines) + "\r\n")
    quoted = [f'{m},"{t.replace(chr(34), chr(34) * 2)}",Drama|Comedy' for m, t in CATALOG]
    (folder / "movies.csv").write_text("movieId,title,genres\n" + "\n".join(quoted) + "\n")


@pytest.mark.parametrize(
    ("writer", "layout"),
    [(_write_100k, "ml-100k"), (_write_1m, "ml-1m"), (_write_latest, "ml-latest")],
)
def test_reader_reads_every_layout_from_folder_and_zip(tmp_path: Path, writer, layout) -> None:
    folder = tmp_path / "data" / "ml-x"
    writer(folder)
    archive = tmp_path / "ml-x.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        for file in folder.iterdir():
            zipped.write(file, f"ml-x/{file.name}")
    expected = [row for row in RATINGS if layout != "ml-100k" or row[2] == int(row[2])]
    for path in (folder, tmp_path / "data", archive):  # the folder, its parent, the zip
        data = read_movielens(path)
        assert data.layout == layout
        assert data.catalog.tolist() == [10, 20, 30]
        got = list(
            zip(
                data.users.tolist(),
                data.movies.tolist(),
                data.ratings.tolist(),
                data.timestamps.tolist(),
                strict=True,
            )
        )
        assert got == expected


def test_reader_drops_what_the_importer_drops(tmp_path: Path) -> None:
    rows = [*RATINGS, (1, 10, 2.0, 200), (3, 99, 4.0, 1), (3, 20, 7.0, 1), (3, 20, 0.0, 1)]
    _write_latest(tmp_path / "d", rows)
    with (tmp_path / "d" / "ratings.csv").open("a") as handle:
        handle.write("4,not-a-number,3,5\n\n4,20,3\n")
    data = read_movielens(tmp_path / "d")
    assert len(data) == len(RATINGS)
    assert data.ratings[0] == 4.0  # the first copy of (1, 10) wins
    assert data.skipped == {
        "ratings.bad_rating": 2,
        "ratings.duplicate": 1,
        "ratings.malformed": 2,
        "ratings.unknown_movie": 1,
    }


def test_reader_explains_missing_files(tmp_path: Path) -> None:
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "ratings.dat").write_text("1::2::3::4\n")
    with pytest.raises(MovieLensFormatError, match="has ratings.dat but not movies.dat"):
        read_movielens(tmp_path / "half")
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(MovieLensFormatError, match="no MovieLens data"):
        read_movielens(tmp_path / "empty")
    (tmp_path / "not.zip").write_text("x")
    with pytest.raises(MovieLensFormatError, match="neither a folder nor a .zip"):
        read_movielens(tmp_path / "not.zip")


# --------------------------------------------------------------------------- evaluation


def _tiny_latest(folder: Path, make_chunk) -> Path:
    """A small ml-latest-style data set with learnable taste and half-star ratings."""
    users, movies, ratings = make_chunk(n_users=80, n_movies=60, per_user=20, seed=2)
    halves = np.clip(ratings + np.where(np.arange(ratings.size) % 3 == 0, -0.5, 0.0), 0.5, 5)
    stamps = np.arange(users.size) + 1_000
    rows = list(zip(users.tolist(), movies.tolist(), halves.tolist(), stamps.tolist(), strict=True))
    folder.mkdir(parents=True)
    lines = ["userId,movieId,rating,timestamp"] + [f"{u},{m},{r:g},{t}" for u, m, r, t in rows]
    (folder / "ratings.csv").write_text("\n".join(lines) + "\n")
    catalog = sorted(set(movies.tolist()) | {9_999})  # one movie nobody rated
    (folder / "movies.csv").write_text(
        "movieId,title,genres\n" + "".join(f'{m},"Movie {m}, The (2001)",Drama\n' for m in catalog)
    )
    return folder


def test_evaluate_dataset_prints_the_table_with_tuned_ease(tmp_path: Path, make_chunk) -> None:
    folder = _tiny_latest(tmp_path / "ml-latest-tiny", make_chunk)
    result = CliRunner().invoke(
        cli, ["evaluate", "--dataset", str(folder), "--preset", "fast", "--set", "epochs=2"]
    )
    assert result.exit_code == 0, result.output
    out = result.output
    assert "ml-latest-tiny per-user holdout (seed 7, 20%)" in out
    for row in ("random ranking", "user + movie bias", "popularity (rating count)"):
        assert f"| {row} |" in out
    assert "| EASE (lambda 250) |" in out and "| stacked autoencoder |" in out
    tuned = [line for line in out.splitlines() if line.startswith("| EASE (tuned lambda): ")]
    assert len(tuned) == 1
    assert float(tuned[0].split(":")[1].split("|")[0]) in ev.EASE_LAMBDAS


def test_evaluate_rejects_mixed_inputs(tmp_path: Path, make_chunk) -> None:
    folder = _tiny_latest(tmp_path / "d", make_chunk)
    result = CliRunner().invoke(
        cli, ["evaluate", "--dataset", str(folder), "--splits", str(tmp_path), "--preset", "fast"]
    )
    assert result.exit_code == 2 and "exactly one of" in result.output


def _fake_fit(calls: list[tuple[int, int]]):
    """A stand-in trainer: records its inputs and ranks by popularity (fast, deterministic)."""

    def fit(train, valid, config, **_: object) -> ev.FittedModel:
        calls.append((train.nnz, valid.nnz))
        return ev.FittedModel(Popularity().fit(train), (1.0, 5.0), 0.0, {"best_epoch": 1})

    return fit


def test_every_evaluation_trains_through_fit_model(monkeypatch, tmp_path: Path, make_chunk):
    """The trainer is called in one place only, with validation carved out of training."""
    calls: list[tuple[int, int]] = []
    monkeypatch.setattr(ev, "fit_model", _fake_fit(calls))
    config = config_from("fast")
    data = read_movielens(_tiny_latest(tmp_path / "d", make_chunk))
    result = ev.evaluate_holdout(data, config)
    full_train = result["n_train"]
    assert calls and calls[0][0] + calls[0][1] == full_train
    model_row = result["rows"][ev.MODEL_ROW]
    assert model_row["best_epoch"] == 1 and model_row["train_seconds"] == 0.0  # the stand-in's
    assert model_row["ndcg@10"] > result["rows"]["random ranking"]["ndcg@10"]
    assert result["n_movies"] == data.catalog.size  # the catalog, unrated movie included
    base, test = tmp_path / "u1.base", tmp_path / "u1.test"
    for path, part in zip((base, test), (slice(0, 1200), slice(1200, None)), strict=True):
        rows = np.column_stack([data.users[part], data.movies[part], data.ratings[part]])
        np.savetxt(path, rows, fmt="%d\t%d\t%g")
    ev.evaluate_split(base, test, config, baselines=False)
    assert len(calls) == 2


def test_tuned_ease_picks_the_best_validation_lambda(synthetic) -> None:
    train, valid = holdout_split(synthetic, 0.1, 0)
    lam, scores = ev.tune_ease(train, valid)
    assert set(scores) == set(ev.EASE_LAMBDAS)
    assert scores[lam] == max(scores.values())


def test_holdout_bias_uses_shrinkage_ten() -> None:
    bias = ev.holdout_baselines()[ev.BIAS_ROW]()
    assert (bias.reg_movie, bias.reg_user) == (10.0, 10.0)  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- real data


def _ml_1m_half() -> Path:
    env = os.environ.get("MOVIELENS_DIR")
    roots = [Path(env), Path(env).parent] if env else []
    roots.append(Path(__file__).parents[2].parent / "shared" / "data")
    for root in roots:
        if (root / "ml-1m-half" / "ratings.dat").is_file():
            return root / "ml-1m-half"
    pytest.skip(f"ml-1m-half not found under {[str(r) for r in roots]} (set MOVIELENS_DIR)")


def test_ml_1m_half_reproduces_the_reference_split_and_baselines() -> None:
    """docs/evaluation.md: train 390,011 / test 97,504, 2,991 users, bias 0.908, pop 0.174."""
    data: Ratings = read_movielens(_ml_1m_half())
    assert len(data) == 487_515 and data.catalog.size == 3_883
    train, test = per_user_holdout(data.users, data.movies, data.ratings, data.timestamps)
    assert (train[0].size, test[0].size) == (390_011, 97_504)
    full = build_rating_matrix([train], movie_ids=data.catalog)
    makers = ev.holdout_baselines()
    bias = ev.evaluate_scorer(makers[ev.BIAS_ROW]().fit(full), full, test)
    popularity = ev.evaluate_scorer(Popularity().fit(full), full, test)
    assert bias["rmse"] == pytest.approx(0.908, abs=0.0005)
    assert bias["mae"] == pytest.approx(0.720, abs=0.0005)
    assert popularity["ndcg@10"] == pytest.approx(0.174, abs=0.0005)
    assert popularity["users_evaluated"] == 2_991
