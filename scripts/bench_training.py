"""Training benchmark: the seed notebook's loop vs our trainer, u1 quality, scale.

1. The seed notebook's per-user loop (bugs kept: first row eaten as a header, dense
   users x movies tensor, no zero_grad, RMSprop with weight_decay 0.5) for a few epochs on
   u1.base, seconds per epoch, against our minibatch trainer on the same data.
2. The default preset trained to convergence on u1 with the docs/evaluation.md table.
3. Synthetic data shaped like ml-1m and ml-10m (generated sparse, never dense): seconds
   per epoch and peak RSS, each size in its own subprocess so each is measured alone.

JSON goes to stdout, progress to stderr.
    .venv/bin/python scripts/bench_training.py [--quick] [--skip-10m] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.ml.data import (  # noqa: E402
    RatingChunk,
    build_rating_matrix,
    holdout_split,
    read_split_file,
)
from app.ml.evaluate import evaluate_split, format_table  # noqa: E402
from app.ml.model import config_from  # noqa: E402
from app.ml.train import train_model  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "ml-100k"
SHAPES = {
    "ml-1m": (6_040, 3_706, 1_000_209),
    "ml-10m": (69_878, 10_677, 10_000_054),
}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def peak_rss_mb() -> float:
    """Peak resident set size of this process (ru_maxrss is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# --------------------------------------------------------------------------- 1. seed loop
def seed_notebook_epochs(base_path: Path, epochs: int) -> dict[str, Any]:
    """The notebook's training cell, reproduced with its bugs, timed per epoch."""
    import torch
    from torch import nn, optim

    raw = np.loadtxt(base_path, delimiter="\t", dtype=np.int64)
    training = raw[1:]  # bug kept: pd.read_csv(header=0) ate the first rating as a header
    nb_users, nb_movies = int(training[:, 0].max()), int(training[:, 1].max())
    dense = np.zeros((nb_users, nb_movies), dtype=np.float32)  # bug kept: dense matrix
    for user in range(1, nb_users + 1):  # the notebook's convert(): a python loop
        rows = training[training[:, 0] == user]
        dense[user - 1, rows[:, 1] - 1] = rows[:, 2]
    training_set = torch.from_numpy(dense)

    class SAE(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(nb_movies, 20), nn.Linear(20, 10)
            self.fc3, self.fc4 = nn.Linear(10, 20), nn.Linear(20, nb_movies)
            self.activation = nn.Sigmoid()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.activation(self.fc1(x))
            x = self.activation(self.fc2(x))
            x = self.activation(self.fc3(x))
            return self.fc4(x)

    torch.manual_seed(0)
    sae = SAE()
    criterion = nn.MSELoss()
    optimizer = optim.RMSprop(sae.parameters(), lr=0.01, weight_decay=0.5)
    seconds, losses = [], []
    for _ in range(epochs):
        started = time.perf_counter()
        train_loss, normalizer = 0.0, 0.0
        for id_user in range(nb_users):
            inputs = training_set[id_user].unsqueeze(0)
            target = inputs.clone()
            if torch.sum(target > 0) > 0:
                outputs = sae(inputs)
                outputs[target == 0] = 0
                loss = criterion(outputs, target)
                mean_corrector = nb_movies / float(torch.sum(target > 0) + 1e-10)
                loss.backward()  # bug kept: gradients are never zeroed
                train_loss += float(np.sqrt(loss.item() * mean_corrector))
                normalizer += 1.0
                optimizer.step()
        seconds.append(time.perf_counter() - started)
        losses.append(train_loss / normalizer)
    return {
        "epochs": epochs,
        "seconds_per_epoch": float(np.mean(seconds)),
        "train_loss (seed's per-user RMSE)": losses[-1],
    }


def trainer_epochs(
    base_path: Path, preset: str, epochs: int, threads: int | None
) -> dict[str, Any]:
    """Our trainer on the same u1.base for a fixed number of epochs.

    Two figures: a whole epoch as `train_model` runs it (training pass + validation on the
    held-out ratings), and the training pass alone, which is what the seed loop's epoch is
    (it never validates).
    """
    import torch

    from app.ml.network import build_model, make_optimizer, seed_everything, train_epoch

    full = build_rating_matrix([read_split_file(base_path)])
    config = config_from(preset, epochs=epochs, patience=epochs + 1)
    train, valid = holdout_split(full, config.validation_fraction, config.seed)
    result = train_model(train, valid, config, threads=threads)
    per_epoch = [r.seconds for r in result.history]

    rng = seed_everything(config.seed)
    model = build_model(train.shape[1], train.matrix, config, train.scale())
    optimizer = make_optimizer(model, config)
    users = np.flatnonzero(np.diff(train.matrix.indptr))
    device = torch.device("cpu")
    passes = []
    for _ in range(epochs):
        started = time.perf_counter()
        train_epoch(model, train.matrix, users, optimizer, config, rng, device)
        passes.append(time.perf_counter() - started)
    return {
        "preset": preset,
        "epochs": epochs,
        "seconds_per_epoch": float(np.mean(per_epoch)),
        "seconds_per_training_pass": float(np.mean(passes)),
    }


# ----------------------------------------------------------------------- 3. synthetic
def activity_counts(
    rng: np.random.Generator, n_users: int, n_movies: int, n_ratings: int
) -> np.ndarray:
    """Log-normal ratings per user, at least 20, at most half the catalog, summing to
    about ``n_ratings``."""
    activity = rng.lognormal(0.0, 1.0, n_users)
    scale = n_ratings / activity.sum()
    for _ in range(30):
        per_user = np.clip(np.round(activity * scale), 20, n_movies // 2)
        scale *= n_ratings / per_user.sum()
    return per_user.astype(np.int64)


def distinct_draws(rng: np.random.Generator, cdf: np.ndarray, count: int) -> np.ndarray:
    """``count`` distinct movies drawn from a popularity CDF, in draw order."""
    taken = np.zeros(0, dtype=np.int64)
    for _ in range(8):
        draws = np.searchsorted(cdf, rng.random(2 * (count - taken.size) + 10))
        draws = np.minimum(draws, cdf.size - 1)
        merged = np.concatenate([taken, draws])
        _, first = np.unique(merged, return_index=True)
        taken = merged[np.sort(first)][:count]
        if taken.size == count:
            break
    return taken


def synthetic_ratings(
    n_users: int, n_movies: int, n_ratings: int, seed: int = 0, groups: int = 32, rank: int = 8
) -> RatingChunk:
    """Long-tailed, low-rank ratings generated user-chunk by user-chunk (never dense).

    Activity is log-normal (min 20 ratings); each user belongs to a taste group whose
    movie popularity is a group-specific Zipf law mixed with the global one; ratings are
    mean + biases + a rank-``rank`` interaction + noise, rounded to half stars.
    """
    rng = np.random.default_rng(seed)
    per_user = activity_counts(rng, n_users, n_movies, n_ratings)
    zipf = 1.0 / np.arange(1, n_movies + 1) ** 0.9
    global_p = zipf[rng.permutation(n_movies)]
    group_cdf = np.empty((groups, n_movies))
    for g in range(groups):
        p = 0.5 * global_p / global_p.sum() + 0.5 * zipf[rng.permutation(n_movies)] / zipf.sum()
        group_cdf[g] = np.cumsum(p / p.sum())
    u_f = rng.normal(0, 0.5, (n_users, rank)).astype(np.float32)
    v_f = rng.normal(0, 0.5, (n_movies, rank)).astype(np.float32)
    u_b = rng.normal(0, 0.4, n_users).astype(np.float32)
    v_b = rng.normal(0, 0.5, n_movies).astype(np.float32)
    user_group = rng.integers(0, groups, n_users)
    users_out, movies_out, ratings_out = [], [], []
    for user in range(n_users):
        movies = distinct_draws(rng, group_cdf[user_group[user]], int(per_user[user]))
        users_out.append(np.full(movies.size, user, dtype=np.int64))
        movies_out.append(movies)
    users = np.concatenate(users_out)
    movies = np.concatenate(movies_out)
    del users_out, movies_out
    for start in range(0, users.size, 1_000_000):
        u, m = users[start : start + 1_000_000], movies[start : start + 1_000_000]
        r = 3.5 + u_b[u] + v_b[m] + np.einsum("ij,ij->i", u_f[u], v_f[m])
        r += rng.normal(0, 0.5, u.size).astype(np.float32)
        ratings_out.append(np.clip(np.round(r * 2) / 2, 0.5, 5.0).astype(np.float32))
    return users + 1, movies + 1, np.concatenate(ratings_out)


def scale_worker(name: str, preset: str, threads: int | None, max_users: int | None) -> None:
    """Child process: generate one size, train 1 epoch, report seconds and peak RSS."""
    n_users, n_movies, n_ratings = SHAPES[name]
    if max_users:
        n_ratings = int(n_ratings * max_users / n_users)
        n_users = max_users
    started = time.perf_counter()
    chunk = synthetic_ratings(n_users, n_movies, n_ratings)
    generated = time.perf_counter() - started
    full = build_rating_matrix([chunk], movie_ids=np.arange(1, n_movies + 1))
    del chunk
    built = time.perf_counter() - started - generated
    config = config_from(preset, epochs=1)
    train, valid = holdout_split(full, config.validation_fraction, config.seed)
    del full
    result = train_model(train, valid, config, threads=threads)
    epoch = result.history[0]
    print(
        json.dumps(
            {
                "shape": name,
                "users": n_users,
                "movies": n_movies,
                "ratings": train.nnz + valid.nnz,
                "preset": preset,
                "generate_seconds": round(generated, 2),
                "build_seconds": round(built, 2),
                "epoch_seconds": round(epoch.seconds, 2),
                # the rating network's epoch, then the rest of a 1-epoch train_model: item
                # path, bias terms, blend search, the rating parts refitted on all ratings
                "rating_network_seconds": round(
                    result.metrics["network_seconds"] - epoch.seconds, 2
                ),
                "after_epoch_seconds": round(result.seconds - result.metrics["network_seconds"], 2),
                "refit_seconds": round(result.metrics.get("refit_seconds", 0.0), 2),
                "train_loss": epoch.train_loss,
                "valid_rmse": epoch.valid_rmse,
                "valid_ndcg@10": epoch.valid_ndcg,
                "peak_rss_mb": round(peak_rss_mb(), 1),
                "load_average": os.getloadavg(),
            }
        )
    )


def run_scale(name: str, preset: str, threads: int | None, max_users: int | None) -> dict:
    cmd = [sys.executable, __file__, "--worker", name, "--preset", preset]
    if threads:
        cmd += ["--threads", str(threads)]
    if max_users:
        cmd += ["--max-users", str(max_users)]
    log(f"[scale] {name}: {' '.join(cmd[1:])}")
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return {"shape": name, "error": done.stderr[-2000:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data", type=Path, default=Path(os.environ.get("MOVIELENS_DIR", DEFAULT_DATA))
    )
    parser.add_argument("--preset", default="default")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed-epochs", type=int, default=2)
    parser.add_argument("--skip-10m", action="store_true")
    parser.add_argument("--skip-scale", action="store_true")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="1 seed epoch, fast preset, ml-1m at 1/10 of the users, no 10m",
    )
    parser.add_argument("--worker", choices=sorted(SHAPES), help=argparse.SUPPRESS)
    parser.add_argument("--max-users", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.worker:
        scale_worker(args.worker, args.preset, args.threads, args.max_users)
        return
    preset = "fast" if args.quick else args.preset
    seed_epochs = 1 if args.quick else args.seed_epochs
    base, test = args.data / "u1.base", args.data / "u1.test"
    out: dict[str, Any] = {
        "threads": args.threads,
        "preset": preset,
        "cpus": os.cpu_count(),
        "load_average_at_start": os.getloadavg(),
    }

    log(f"[1/3] seed notebook loop, {seed_epochs} epoch(s)")
    seed = seed_notebook_epochs(base, seed_epochs)
    ours = trainer_epochs(base, preset, 3, args.threads)
    ours_seed = trainer_epochs(base, "seed", 3, args.threads)
    out["per_epoch"] = {
        "seed_notebook_loop": seed,
        "trainer": ours,
        "trainer_seed_preset": ours_seed,
        "speedup_vs_seed_loop": seed["seconds_per_epoch"] / ours["seconds_per_epoch"],
        "speedup_seed_preset_vs_seed_loop": seed["seconds_per_epoch"]
        / ours_seed["seconds_per_epoch"],
        # like for like: a training pass over the same users, same architecture
        "speedup_training_pass_seed_preset_vs_seed_loop": seed["seconds_per_epoch"]
        / ours_seed["seconds_per_training_pass"],
        "speedup_training_pass_default_vs_seed_loop": seed["seconds_per_epoch"]
        / ours["seconds_per_training_pass"],
    }

    log(f"[2/3] {preset} preset to convergence on u1")
    config = config_from(preset)
    result = evaluate_split(
        base,
        test,
        config,
        threads=args.threads,
        on_epoch=lambda r: log(
            f"  epoch {r.epoch}: loss {r.train_loss:.4f} valid rmse {r.valid_rmse:.4f} "
            f"ndcg {r.valid_ndcg:.4f} ({r.seconds:.2f} s)"
        ),
    )
    out["u1"] = result
    out["u1_table"] = format_table(result)
    log(out["u1_table"])

    if not args.skip_scale:
        log("[3/3] synthetic scale")
        sizes = ["ml-1m"] if (args.quick or args.skip_10m) else ["ml-1m", "ml-10m"]
        out["scale"] = [
            run_scale(name, preset, args.threads, 604 if args.quick else None) for name in sizes
        ]
    out["load_average_at_end"] = os.getloadavg()
    print(json.dumps(out, indent=2, default=float))


if __name__ == "__main__":
    main()
