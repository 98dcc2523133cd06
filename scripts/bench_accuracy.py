"""Accuracy benchmark: the model against its baselines on several data sets, one JSON.

Tuned on u1 alone, a model can look good and fail on the next data set, so every change is
judged here on all of them (docs/evaluation.md's protocol each time):

- ``ml-100k``: the canonical u1..u5 splits (means; ``--quick``: u1 only);
- ``ml-1m-half``: the per-user holdout (seed 7, 20 %);
- ``sparse-100k``: a seeded 40 % of ml-100k's u.data, then the per-user holdout (sparse
  users, the regime where a model overfits);
- ``synthetic-large``: a seeded synthetic set with a large catalog (1,500 users x 8,000
  movies, ~150k half-star ratings, long-tailed popularity and activity, low-rank taste),
  then the per-user holdout;
- ``ml-1m-600``: every 5th user of ml-1m-half (user ids 1, 6, 11, ...: 600 users with all
  their ratings over ~3,300 movies), then the per-user holdout: real ratings, user-light and
  catalog-heavy, the regime where the model lost to EASE;
- ``gen25m-1500``: the first 1,500 users of scripts/generate_ml25m.py's 25M-shaped data with
  a 20,000-movie catalog (~230k ratings), then the per-user holdout.

Per data set it reports the model's RMSE, MAE, NDCG@10, coverage@10 and train seconds,
the baselines' (bias RMSE, EASE lambda 250 NDCG, tuned EASE NDCG and lambda, popularity
NDCG) and the ratios model/EASE, model/tuned EASE (NDCG) and model/bias (RMSE).

Data comes from ``MOVIELENS_DIR`` (a folder holding ml-100k/, ml-1m-half/, or the ml-100k
folder itself) or ../shared/data; a data set that is absent is skipped with a message.
JSON goes to stdout, progress to stderr.

    .venv/bin/python scripts/bench_accuracy.py [--datasets ml-1m-half,sparse-100k]
        [--preset fast] [--set epochs=3] [--quick] [--threads 2]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.ml.config import ModelConfig, config_from  # noqa: E402
from app.ml.evaluate import (  # noqa: E402
    BIAS_ROW,
    MODEL_ROW,
    TUNED_EASE_ROW,
    evaluate_holdout,
    evaluate_splits,
)
from app.movielens.ratings import Ratings, read_movielens  # noqa: E402

DATASETS = (
    "ml-100k",
    "ml-1m-half",
    "sparse-100k",
    "synthetic-large",
    "ml-1m-600",
    "gen25m-1500",
)
USER_STRIDE = 5  # ml-1m-600: every 5th user
GENERATED = {"users": 1_500, "movies": 20_000, "ratings": 230_000, "seed": 25}
SPARSE_SHARE, SPARSE_SEED = 0.4, 40
SYNTHETIC = {"n_users": 1_500, "n_movies": 8_000, "n_ratings": 150_000, "rank": 12, "seed": 11}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def data_dir() -> Path:
    """MOVIELENS_DIR (the data folder, or the ml-100k folder inside it) or ../shared/data."""
    env = os.environ.get("MOVIELENS_DIR")
    if not env:
        return ROOT.parent / "shared" / "data"
    path = Path(env)
    return path.parent if (path / "u.data").is_file() else path


# --------------------------------------------------------------------------- data sets


def synthetic_large(n_users: int, n_movies: int, n_ratings: int, rank: int, seed: int) -> Ratings:
    """Seeded ratings with a learnable structure: who rates what and how both follow taste.

    Popularity is Zipf-like over a shuffled catalog, activity log-normal (min 3 ratings);
    each user draws movies without replacement with weight popularity x exp(taste) (Gumbel
    top-k) and rates them mean + movie bias + user bias + taste + noise, in half stars.
    """
    rng = np.random.default_rng(seed)
    activity = rng.lognormal(0.0, 1.0, n_users)
    counts = np.clip(np.round(activity / activity.sum() * n_ratings), 3, n_movies // 4)
    log_pop = -0.9 * np.log(rng.permutation(n_movies) + 1.0)
    users_f = rng.normal(size=(n_users, rank)) / np.sqrt(rank)
    movies_f = rng.normal(size=(n_movies, rank))
    movie_bias = rng.normal(0.0, 0.4, n_movies) + 0.15 * log_pop
    user_bias = rng.normal(0.0, 0.35, n_users)
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    for user in range(n_users):
        taste = movies_f @ users_f[user]
        keys = log_pop + 1.5 * taste + rng.gumbel(size=n_movies)
        chosen = np.argpartition(-keys, int(counts[user]) - 1)[: int(counts[user])]
        noise = rng.normal(0.0, 0.6, chosen.size)
        raw = 3.6 + movie_bias[chosen] + user_bias[user] + 0.9 * taste[chosen] + noise
        stars = np.clip(np.round(raw * 2) / 2, 0.5, 5.0)
        parts.append((np.full(chosen.size, user + 1), chosen + 1, stars))
    users, movies, stars = (np.concatenate(p) for p in zip(*parts, strict=True))
    stamps = rng.integers(1_000_000_000, 1_600_000_000, users.size)
    return Ratings(
        users.astype(np.int64),
        movies.astype(np.int64),
        stars.astype(np.float32),
        stamps.astype(np.int64),
        np.arange(1, n_movies + 1, dtype=np.int64),
        name="synthetic-large",
        layout="synthetic",
    )


def sparse_100k(folder: Path) -> Ratings:
    """A seeded 40 % of ml-100k's ratings (same catalog): fewer ratings per user."""
    full = read_movielens(folder)
    rng = np.random.default_rng(SPARSE_SEED)
    keep = np.sort(rng.permutation(len(full))[: round(SPARSE_SHARE * len(full))])
    return full.subset(keep, name="sparse-100k")


def every_nth_user(folder: Path, stride: int) -> Ratings:
    """Users 1, 1 + stride, 1 + 2 stride, ... with all their ratings (the catalog stays whole)."""
    full = read_movielens(folder)
    keep = np.flatnonzero((full.users - 1) % stride == 0)
    return full.subset(keep, name=f"{folder.name}-every-{stride}th-user")


def generated_25m_shape(users: int, movies: int, ratings: int, seed: int) -> Ratings:
    """scripts/generate_ml25m.py's data at a user-light, catalog-heavy size, read back."""
    import tempfile

    from generate_ml25m import generate  # scripts/ is on sys.path when run as a script

    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp), users=users, movies=movies, ratings=ratings, seed=seed)
        loaded = read_movielens(tmp)
    # named by its shape, not by the temporary folder: bench_peers matches splits by name
    return dataclasses.replace(loaded, name=f"generated-{users}x{movies}")


# --------------------------------------------------------------------------- runs


ML100K_SPLITS = ("u1", "u2", "u3", "u4", "u5")


def load_dataset(name: str, root: Path) -> Path | Ratings | str:
    """ml-100k: its folder (the u1..u5 files); any other set: its ratings; a str: why absent."""
    ml100k = root / "ml-100k"
    if name == "ml-100k":
        if not (ml100k / "u1.base").is_file():
            return f"skipped: MovieLens 100k splits not found in {ml100k} (set MOVIELENS_DIR)"
        return ml100k
    if name in ("ml-1m-half", "ml-1m-600"):
        folder = root / "ml-1m-half"
        if not (folder / "ratings.dat").is_file():
            return f"skipped: {folder}/ratings.dat not found (set MOVIELENS_DIR)"
        if name == "ml-1m-half":
            return read_movielens(folder)
        return every_nth_user(folder, USER_STRIDE)
    if name == "sparse-100k":
        if not (ml100k / "u.data").is_file():
            return f"skipped: {ml100k}/u.data not found (set MOVIELENS_DIR)"
        return sparse_100k(ml100k)
    if name == "gen25m-1500":
        return generated_25m_shape(**GENERATED)
    return synthetic_large(**SYNTHETIC)


def run_dataset(
    name: str, root: Path, config: ModelConfig, quick: bool, threads: int | None
) -> dict[str, Any] | str:
    """The evaluation result of one data set, or a string saying why it was skipped."""
    source = load_dataset(name, root)
    if isinstance(source, str):
        return source
    if isinstance(source, Path):
        splits = ML100K_SPLITS[:1] if quick else ML100K_SPLITS
        return evaluate_splits(source, config, splits=splits, threads=threads)
    return evaluate_holdout(source, config, threads=threads)


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 4) if a is not None and b else None


def summarize(result: dict[str, Any], seconds: float) -> dict[str, Any]:
    """The figures the issue judges a model by, and its ratios to the baselines."""
    rows = result["rows"]

    def get(row: str, key: str) -> float | None:
        value = rows.get(row, {}).get(key)
        return None if value is None else round(float(value), 4)

    model = {
        k: get(MODEL_ROW, k) for k in ("rmse", "mae", "ndcg@10", "coverage@10", "train_seconds")
    }
    baselines: dict[str, Any] = {
        "bias_rmse": get(BIAS_ROW, "rmse"),
        "ease_ndcg@10": get("EASE (lambda 250)", "ndcg@10"),
        "tuned_ease_ndcg@10": get(TUNED_EASE_ROW, "ndcg@10"),
        "tuned_ease_lambda": get(TUNED_EASE_ROW, "lambda"),
        "popularity_ndcg@10": get("popularity (rating count)", "ndcg@10"),
    }
    if "splits" in result:  # u1..u5: the lambda above is a mean, name each split's
        baselines["tuned_ease_lambdas"] = [
            s["rows"][TUNED_EASE_ROW]["lambda"] for s in result["splits"].values()
        ]
    return {
        "protocol": result.get("split", ""),
        "model": model,
        "baselines": baselines,
        "ratios": {
            "ndcg_model/ease": _ratio(model["ndcg@10"], baselines["ease_ndcg@10"]),
            "ndcg_model/tuned_ease": _ratio(model["ndcg@10"], baselines["tuned_ease_ndcg@10"]),
            "rmse_model/bias": _ratio(model["rmse"], baselines["bias_rmse"]),
        },
        "seconds": round(seconds, 1),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--datasets",
        default=",".join(DATASETS),
        help=f"comma-separated subset of {', '.join(DATASETS)} (default: all)",
    )
    parser.add_argument("--preset", default="default", help="model preset (default: default)")
    parser.add_argument(
        "--set",
        dest="pairs",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a model setting, e.g. --set epochs=3 (repeatable)",
    )
    parser.add_argument("--quick", action="store_true", help="ml-100k: u1 only, not u1..u5")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch and BLAS threads (default: all cores)"
    )
    args = parser.parse_args(argv)
    args.datasets = [d.strip() for d in args.datasets.split(",") if d.strip()]
    unknown = sorted(set(args.datasets) - set(DATASETS))
    if unknown:
        parser.error(f"unknown data set(s) {unknown}; choose from {', '.join(DATASETS)}")
    return args


def model_config(preset: str, pairs: list[str]) -> ModelConfig:
    """The preset with --set overrides (values parsed as JSON when they are, else text)."""
    overrides: dict[str, object] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep:
            raise SystemExit(f"--set needs KEY=VALUE, got {pair!r}")
        try:
            overrides[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            overrides[key.strip()] = raw
    return config_from(preset, **overrides)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    with threadpool_limits(limits=args.threads):  # BLAS (EASE) threads; None = no limit
        run(args)


def run(args: argparse.Namespace) -> None:
    """Each chosen data set in turn; prints the one JSON object at the end."""
    config = model_config(args.preset, args.pairs)
    root = data_dir()
    out: dict[str, Any] = {
        "preset": args.preset,
        "overrides": args.pairs,
        "data_dir": str(root),
        "datasets": {},
        "skipped": {},
    }
    for name in args.datasets:
        log(f"[bench_accuracy] {name} ...")
        started = time.perf_counter()
        result = run_dataset(name, root, config, args.quick, args.threads)
        if isinstance(result, str):
            log(f"[bench_accuracy] {name}: {result}")
            out["skipped"][name] = result
            continue
        out["datasets"][name] = summarize(result, time.perf_counter() - started)
        log(f"[bench_accuracy] {name}: {json.dumps(out['datasets'][name])}")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
