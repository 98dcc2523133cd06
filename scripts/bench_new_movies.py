"""New-movies benchmark: movies added after training, ranked without a retrain, one JSON.

On ml-1m-half with docs/evaluation.md's per-user holdout (seed 7, 20 %), ``--share`` of the
movies with at least ``--min-ratings`` train ratings (drawn with ``--seed``) are "new": the
model trains on train minus their ratings; then their train ratings arrive and
`app.ml.new_movies` ties each to its trained neighbours (at most ``--raters`` latest raters
per movie, as serving reads them), exactly as a serving process does. Figures over the new
movies only: for each user with a test rating >= 4 of a new movie, the new movies the user
did not rate in train are ranked; relevant = those test ratings >= 4. Beside it, on the same
users and candidates: popularity among the new movies (train rating count), and a model
retrained with every train rating (the new movies as ordinary columns). Also the RMSE of the
new movies' test ratings (bias terms with their own movie bias vs the retrained model).

    .venv/bin/python scripts/bench_new_movies.py [--preset default] [--share 0.05]
        [--min-ratings 50] [--raters 500] [--data DIR] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.ml import new_movies  # noqa: E402
from app.ml.config import config_from  # noqa: E402
from app.ml.data import build_rating_matrix, holdout_split, per_user_holdout  # noqa: E402
from app.ml.hybrid import HybridModel  # noqa: E402
from app.ml.scoring import FoldInScorer  # noqa: E402
from app.ml.train import train_model  # noqa: E402
from app.movielens.ratings import read_movielens  # noqa: E402

K = 10
LONG = 20
Array = np.ndarray


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def ranking(scores: np.ndarray, relevant: list[np.ndarray]) -> dict[str, float]:
    """NDCG@10 (binary gains) and hit rate@10 of score rows (-inf: not a candidate)."""
    top = np.argsort(-scores, axis=1, kind="stable")[:, :K]
    discounts = 1.0 / np.log2(np.arange(2, K + 2))
    ndcg, hits = [], []
    for scored, row, rel in zip(scores, top, relevant, strict=True):
        listed = row[np.isfinite(scored[row])]
        gains = np.isin(listed, rel)
        ideal = discounts[: min(K, rel.size)].sum()
        ndcg.append(float((gains * discounts[: listed.size]).sum() / ideal))
        hits.append(float(gains.any()))
    return {
        "ndcg@10": round(float(np.mean(ndcg)), 4),
        "hit_rate@10": round(float(np.mean(hits)), 4),
    }


def in_top(scores: np.ndarray, rated: Any, n_old: int, relevant: list[np.ndarray]) -> Array:
    """Per user, over the whole catalog (trained movies first, then the new ones): whether a
    relevant new movie is in the top 20, and how many new movies are (calibration: do new
    movies reach a full list at all?). ``rated``: the users' train rows over trained movies;
    ``scores``: already -inf at the new movies they rated."""
    scores = scores.copy()
    rated = sp.csr_matrix(rated)
    scores[np.repeat(np.arange(rated.shape[0]), np.diff(rated.indptr)), rated.indices] = -np.inf
    top = np.argsort(-scores, axis=1, kind="stable")[:, :LONG]
    hits = [np.isin(row - n_old, rel).any() for row, rel in zip(top, relevant, strict=True)]
    return np.stack([np.array(hits, dtype=float), (top >= n_old).sum(axis=1)], axis=1)


def summed(parts: list[Array]) -> dict[str, float]:
    both = np.concatenate(parts)
    return {
        f"whole_catalog_hit_rate@{LONG}": round(float(both[:, 0].mean()), 4),
        f"new_movies_per_top{LONG}": round(float(both[:, 1].mean()), 3),
    }


def default_data() -> Path:
    """../shared/data/ml-1m-half beside the checkout (or beside its worktrees' folder)."""
    for root in (ROOT.parent, ROOT.parents[1]):
        if (root / "shared/data/ml-1m-half").is_dir():
            return root / "shared/data/ml-1m-half"
    return ROOT.parent / "shared/data/ml-1m-half"


def train(matrix: Any, preset: str, threads: int) -> tuple[HybridModel, float]:
    config = config_from(preset)
    fit, valid = holdout_split(matrix, config.validation_fraction, config.seed)
    started = time.perf_counter()
    result = train_model(fit, valid, config, threads=threads)
    return result.model, time.perf_counter() - started


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=default_data())
    parser.add_argument("--preset", default="default")
    parser.add_argument("--share", type=float, default=0.05)
    parser.add_argument("--min-ratings", type=int, default=50)
    parser.add_argument("--raters", type=int, default=500)
    parser.add_argument("--seed", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    with threadpool_limits(args.threads):
        print(json.dumps(run(args), indent=2))


def run(args: argparse.Namespace) -> dict[str, Any]:
    data = read_movielens(args.data)
    (tu, tm, tr), (su, sm, sr) = per_user_holdout(
        data.users, data.movies, data.ratings, data.timestamps
    )
    # each train rating's timestamp, by its (user, movie) key: the latest raters are read
    keys = data.users * 2**32 + data.movies
    order = np.argsort(keys)
    tt = data.timestamps[order][np.searchsorted(keys[order], tu * 2**32 + tm)]
    catalog = np.union1d(data.catalog, data.movies)
    counts = np.bincount(np.searchsorted(catalog, tm), minlength=catalog.size)
    eligible = catalog[counts >= args.min_ratings]
    rng = np.random.default_rng(args.seed)
    new_ids = np.sort(rng.choice(eligible, round(args.share * eligible.size), replace=False))
    is_new = np.isin(tm, new_ids)
    old_ids = np.setdiff1d(catalog, new_ids)
    log(f"{new_ids.size} new movies of {eligible.size} with >= {args.min_ratings} ratings")

    before = build_rating_matrix([(tu[~is_new], tm[~is_new], tr[~is_new])], movie_ids=old_ids)
    model, before_seconds = train(before, args.preset, args.threads)
    log(f"trained without the new movies in {before_seconds:.0f} s")
    full = build_rating_matrix([(tu, tm, tr)], movie_ids=catalog)
    retrained, after_seconds = train(full, args.preset, args.threads)
    log(f"retrained with them in {after_seconds:.0f} s")

    # the extension, as serving builds it: each new movie's latest raters and their ratings
    new_col = np.searchsorted(new_ids, tm[is_new])
    nu, nr, nt = tu[is_new], tr[is_new], tt[is_new]
    latest = np.lexsort((-nt, new_col))
    rank = np.arange(latest.size) - np.searchsorted(new_col[latest], new_col[latest])
    keep = latest[rank < args.raters]
    rater_ids = np.unique(nu[keep])
    rater_rows = np.searchsorted(before.users.ids, rater_ids)
    raters = before.matrix[rater_rows]
    rated_by = sp.csr_matrix(
        (nr[keep], (new_col[keep], np.searchsorted(rater_ids, nu[keep]))),
        shape=(new_ids.size, rater_ids.size),
    )
    new_counts = np.bincount(new_col, minlength=new_ids.size)
    trained_counts = np.expm1(model.log_popularity.astype(np.float64))
    columns = new_movies.fit(
        raters,
        rated_by,
        new_counts,
        trained_counts,
        model.bias,
        model.config.movie_bias_reg,
    )

    # evaluation users: a test rating >= 4 of a new movie
    test_new = np.isin(sm, new_ids)
    liked = test_new & (sr >= 4)
    users = np.unique(su[liked])
    users = users[before.users.index_of(users) >= 0]  # a user who rated only new movies
    relevant = [np.searchsorted(new_ids, sm[liked & (su == u)]) for u in users]
    rows_before = before.matrix[np.searchsorted(before.users.ids, users)]
    rows_full = full.matrix[np.searchsorted(full.users.ids, users)]
    # new movies a user rated in train are no candidates (the served "already rated")
    rated_new = (
        sp.csr_matrix(
            (np.ones(nu.size), (np.searchsorted(full.users.ids, nu), new_col)),
            shape=(full.shape[0], new_ids.size),
        )[np.searchsorted(full.users.ids, users)].toarray()
        > 0
    )

    scorer = FoldInScorer(model)
    n_old, extended, whole = before.shape[1], [], []
    for start in range(0, users.size, 500):
        rows = rows_before[start : start + 500]
        trained, _ = scorer.score_rows(rows)
        both = columns.scores(trained, scorer.popularity, model.blend.popularity_penalty)
        extended.append(both[:, n_old:].copy())
        both[:, n_old:][rated_new[start : start + 500]] = -np.inf
        whole.append(in_top(both, rows, n_old, relevant[start : start + 500]))
    served = np.concatenate(extended)
    served[rated_new] = -np.inf

    re_scorer = FoldInScorer(retrained)
    new_in_full = np.searchsorted(catalog, new_ids)
    re_scores = np.concatenate(
        [
            re_scorer.score_rows(rows_full[s : s + 500])[0][:, new_in_full]
            for s in range(0, users.size, 500)
        ]
    )
    re_scores[rated_new] = -np.inf
    re_whole = []
    for start in range(0, users.size, 500):
        rows = rows_full[start : start + 500]
        scores = re_scorer.score_rows(rows)[0]
        # the new movies last, as columns n_old.. of the served scores
        scores = np.concatenate(
            [scores[:, np.searchsorted(catalog, old_ids)], scores[:, new_in_full]], axis=1
        )
        re_whole.append(
            in_top(
                scores,
                rows[:, np.searchsorted(catalog, old_ids)],
                n_old,
                relevant[start : start + 500],
            )
        )
    popularity = np.broadcast_to(new_counts.astype(np.float32), served.shape).copy()
    popularity[rated_new] = -np.inf

    # rating accuracy on the new movies' test ratings
    tests = np.flatnonzero(test_new & (before.users.index_of(su) >= 0))
    user_bias = model.bias.user_biases(before.matrix[np.searchsorted(before.users.ids, su[tests])])
    predicted = columns.ratings(
        model.bias, user_bias, np.searchsorted(new_ids, sm[tests]), model.rating_scale
    )
    re_rows = full.matrix[np.searchsorted(full.users.ids, su[tests])]
    re_cells = (np.arange(tests.size), np.searchsorted(catalog, sm[tests]))
    re_pred = re_scorer.blend_ratings(re_scorer.rating_parts(re_rows, re_cells), retrained.blend)

    def rmse(p: np.ndarray) -> float:
        return round(float(np.sqrt(np.mean((p - sr[tests]) ** 2))), 4)

    new_row = ranking(served, relevant)
    pop_row = ranking(popularity, relevant)
    return {
        "data": str(args.data.name),
        "protocol": "per-user holdout (seed 7, 20 %); new movies: "
        f"{args.share:.0%} of movies with >= {args.min_ratings} train ratings (seed {args.seed})",
        "preset": args.preset,
        "new_movies": int(new_ids.size),
        "new_movie_train_ratings": int(is_new.sum()),
        "raters_per_movie": args.raters,
        "neighbours": new_movies.NEIGHBOURS,
        "evaluation_users": int(users.size),
        "new_movies_without_retrain": {**new_row, "rmse": rmse(predicted), **summed(whole)},
        "popularity_among_new": pop_row,
        "retrained_with_them": {
            **ranking(re_scores, relevant),
            "rmse": rmse(re_pred),
            **summed(re_whole),
        },
        "ratio_to_popularity": {
            key: round(new_row[key] / pop_row[key], 3) if pop_row[key] else None for key in new_row
        },
        "train_seconds": {
            "without": round(before_seconds, 1),
            "retrained": round(after_seconds, 1),
        },
    }


if __name__ == "__main__":
    main()
