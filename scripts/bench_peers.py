"""Peers benchmark: well-kept recommender libraries on bench_accuracy's splits, one JSON.

The model is only as good as the strongest thing a user could run instead, so every peer is
scored by the code that scores the model (app/ml/metrics.py's protocol) on the very split
bench_accuracy uses (the same DATASETS and loaders, imported): ml-100k u1..u5 (means;
``--quick``: u1 only) and docs/evaluation.md's per-user holdout of every other set.

Each peer is tuned on a validation carve-out of the train part alone (the protocol's
per-user holdout applied to train: seed 17, 20 %); the chosen configuration is fitted once
on the whole train part and only then meets the test ratings.

Peers (ranking by validation NDCG@10, rating by validation RMSE):

- ``ease-all`` / ``ease-pos4``: EASE (Steck 2019) on every rating / on ratings >= 4;
- ``als``: implicit's weighted ALS (confidence 1 + alpha x on a binary x);
- ``vaecf`` (Mult-VAE), ``recvae``, ``bivaecf``: cornac's VAECF, RecVAE and BiVAECF;
- ``svd``, ``svdpp``: scikit-surprise's SVD and SVD++ (rating peers);
- ``mf``: cornac's biased MF (rating peer).

The implicit peers also choose their input (every rating or ratings >= 4) on validation.
A peer ranks only the movies in its own input (a library cannot score the others); a user
whose input row is empty gets the popularity order. Rating peers predict the training mean
for a movie they cannot score, as the protocol's fallback does. Epoch counts are grid
points (each a fit of its own: the libraries restart their optimisers on every fit). The
grids are small, so a full run stays practical on two cores: the aim is a fair,
validation-tuned figure, not the best one a long search could find. RecVAE's seconds
include the train-set NDCG@100 that cornac's fit computes after every epoch.

Output: per data set, each peer's NDCG@10, coverage@10, RMSE (rating peers), chosen
hyperparameters and seconds, the strongest peer (NDCG@10) and the best peer (RMSE);
with ``--model-json`` (bench_accuracy's output) also the model's ratios to them. ``--out``
keeps a JSON file up to date after every peer (merged into what the file holds), so a long
run that stops keeps what it finished. JSON goes to stdout, progress to stderr.

Needs the bench extra: ``.venv/bin/pip install -e '.[bench]'``.

    .venv/bin/python scripts/bench_peers.py [--datasets ml-1m-600,gen25m-1500]
        [--peers ease-all,ease-pos4,als] [--quick] [--smoke] [--model-json accuracy.json]
        [--out peers.json] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __name__ == "__main__":  # BLAS and OpenMP size their pools when they load
    for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_var, "1")

import numpy as np
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from bench_accuracy import DATASETS, ML100K_SPLITS, data_dir, load_dataset  # noqa: E402

from app.ml.baselines import EaseDual  # noqa: E402
from app.ml.data import RatingChunk, RatingMatrix, build_rating_matrix, per_user_holdout  # noqa: E402
from app.ml.evaluate import EASE_LAMBDAS, file_split, holdout, holdout_label  # noqa: E402
from app.ml.metrics import RELEVANT_THRESHOLD, ScorerOutput, UserScorer, evaluate_user_scorer  # noqa: E402
from app.movielens.ratings import Ratings  # noqa: E402

VALID_SEED, VALID_FRACTION = 17, 0.2
NDCG, RMSE = "ndcg@10", "rmse"
INPUTS = ("all", "pos4")
Params = dict[str, Any]
Stage = Callable[[Params | None], list[Params]]
"""The configurations to try next, given the best one so far (None before any)."""


def log(message: str) -> None:
    print(f"[bench_peers] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- splits


@dataclass
class Fold:
    """One train/test split and the validation carve-out of its train part."""

    name: str
    train: RatingMatrix  # the whole train part: final fits
    test: RatingChunk  # scored once per peer
    fit: RatingMatrix  # the train part less the carve-out: tuning fits
    valid: RatingChunk  # the carve-out: tuning scores


def carve_validation(
    train: RatingMatrix, seed: int = VALID_SEED, fraction: float = VALID_FRACTION
) -> tuple[RatingMatrix, RatingChunk]:
    """The protocol's per-user holdout applied to the train part (no test row is in it)."""
    users, movies, ratings = train.to_chunk()
    fit_chunk, valid = per_user_holdout(
        users, movies, ratings, np.zeros_like(users), seed, fraction
    )
    fit = build_rating_matrix([fit_chunk], movie_ids=train.movies.ids)
    if fit.users != train.users:  # every user keeps >= 80 % of the train ratings it has
        raise RuntimeError("the validation carve-out lost a training user")
    return fit, valid


def make_fold(name: str, train: RatingMatrix, test: RatingChunk, seed: int) -> Fold:
    fit, valid = carve_validation(train, seed)
    return Fold(name, train, test, fit, valid)


def dataset_folds(name: str, root: Path, quick: bool, seed: int) -> tuple[str, list[Fold]] | str:
    """(protocol label, folds) of one of bench_accuracy's data sets, or why it is absent."""
    source = load_dataset(name, root)
    if isinstance(source, str):
        return source
    if isinstance(source, Path):
        splits = ML100K_SPLITS[:1] if quick else ML100K_SPLITS
        folds = [
            make_fold(s, *file_split(source / f"{s}.base", source / f"{s}.test"), seed)
            for s in splits
        ]
        return "mean of " + "-".join(splits), folds
    assert isinstance(source, Ratings)
    return holdout_label(source), [make_fold(name, *holdout(source), seed)]


# --------------------------------------------------------------------------- shared pieces


def interactions(matrix: sp.csr_matrix, positives: str) -> sp.csr_matrix:
    """Binary implicit input: every rating (``all``) or the ratings >= 4 (``pos4``)."""
    x = sp.csr_matrix(matrix, dtype=np.float32, copy=True)
    if positives == "pos4":
        x.data = (x.data >= RELEVANT_THRESHOLD).astype(np.float32)
    else:
        x.data = np.ones_like(x.data)
    x.eliminate_zeros()
    return x


def implicit_scorer(
    train: RatingMatrix,
    positives: str,
    score_rows: Callable[[np.ndarray, sp.csr_matrix], np.ndarray],
) -> UserScorer:
    """A ranking scorer over the movies in the peer's input; empty inputs get popularity.

    ``score_rows(users, x)`` scores the users' binary input rows x over every column.
    """
    known = np.diff(interactions(train.matrix, positives).tocsc().indptr) > 0
    popularity = np.diff(train.matrix.tocsc().indptr).astype(np.float64)

    def scorer(users: np.ndarray, rows: sp.csr_matrix) -> ScorerOutput:
        x = interactions(rows, positives)
        scores = np.asarray(score_rows(users, x), dtype=np.float64)
        empty = (np.diff(x.indptr) == 0) | (users < 0)
        scores[empty] = popularity
        scores[:, ~known] = -np.inf
        return scores, None

    return scorer


class ItemAxis:
    """A library's own user and item indices <-> the rating matrix's rows and columns."""

    def __init__(self, users_of: dict[Any, int], items_of: dict[Any, int], shape: tuple[int, int]):
        self.user_index = np.full(shape[0], -1, dtype=np.int64)
        for raw, idx in users_of.items():
            self.user_index[int(raw)] = idx
        self.item_cols = np.empty(len(items_of), dtype=np.int64)
        for raw, idx in items_of.items():
            self.item_cols[idx] = int(raw)
        self.n_cols = shape[1]

    def dense(self, users: np.ndarray, score_user: Callable[[int], np.ndarray]) -> np.ndarray:
        """Per user the library's scores over its items, placed on the columns (NaN elsewhere)."""
        out = np.full((users.size, self.n_cols), np.nan)
        for r, user in enumerate(users.tolist()):
            idx = self.user_index[user] if user >= 0 else -1
            if idx >= 0:
                out[r, self.item_cols] = score_user(int(idx))
        return out


def cornac_dataset(matrix: sp.csr_matrix, seed: int) -> Any:
    """A cornac Dataset whose raw ids are the matrix's row and column positions."""
    import cornac

    coo = matrix.tocoo()
    triples = list(
        zip(coo.row.tolist(), coo.col.tolist(), coo.data.astype(float).tolist(), strict=True)
    )
    return cornac.data.Dataset.from_uir(triples, seed=seed)


def cornac_axis(ds: Any, shape: tuple[int, int]) -> ItemAxis:
    return ItemAxis(ds.uid_map, ds.iid_map, shape)


def rating_scorer(train: RatingMatrix, predict: Callable[[np.ndarray], np.ndarray]) -> UserScorer:
    """Predicted ratings are also the ranking scores; a movie the library cannot score gets
    the training mean as its rating and is never recommended."""
    mean = train.mean()

    def scorer(users: np.ndarray, rows: sp.csr_matrix) -> ScorerOutput:
        pred = predict(users)
        unknown = ~np.isfinite(pred)
        scores = np.where(unknown, -np.inf, pred)
        return scores, np.where(unknown, mean, pred)

    return scorer


# --------------------------------------------------------------------------- peers


def fit_ease(train: RatingMatrix, params: Params, seed: int) -> UserScorer:
    """EASE in its dual form (`app.ml.baselines.EaseDual`) on the chosen input: linear in
    the catalog, which the catalog-heavy sets need."""
    dual = EaseDual.fit(interactions(train.matrix, params["input"]), float(params["lambda"]))

    def score_rows(users: np.ndarray, rows: sp.csr_matrix) -> np.ndarray:
        return dual.scores(rows)

    return implicit_scorer(train, params["input"], score_rows)


def beyond_edges(axes: dict[str, tuple[Sequence[float], float]]) -> Stage:
    """One step further along each axis (``value * step``, or ``/ step``) where the winner
    sits at the grid's edge: a choice at the edge says the grid was too narrow."""

    def stage(best: Params | None) -> list[Params]:
        out: list[Params] = []
        for key, (values, step) in axes.items():
            if best is None or best[key] not in (min(values), max(values)):
                continue
            value = best[key] * step if best[key] == max(values) else best[key] / step
            out.append({**best, key: type(best[key])(value)})
        return out

    return stage


def ease_stages(lambdas: Sequence[float]) -> tuple[Stage, ...]:
    return (
        lambda _best: [{"lambda": lam} for lam in lambdas],
        beyond_edges({"lambda": (lambdas, 2.0)}),
    )


def fit_als(train: RatingMatrix, params: Params, seed: int) -> UserScorer:
    from implicit.cpu.als import AlternatingLeastSquares

    x = interactions(train.matrix, params["input"])
    model = AlternatingLeastSquares(
        factors=params["factors"],
        regularization=params["regularization"],
        alpha=params["alpha"],
        iterations=params["iterations"],
        num_threads=1,
        random_state=seed,
    )
    model.fit(x, show_progress=False)
    users_f, items_f = np.asarray(model.user_factors), np.asarray(model.item_factors)

    def score_rows(users: np.ndarray, rows: sp.csr_matrix) -> np.ndarray:
        return users_f[np.maximum(users, 0)] @ items_f.T

    return implicit_scorer(train, params["input"], score_rows)


def fit_cornac_implicit(
    make: Callable[[Params, int], Any], prepare: Callable[[Any], None] | None = None
) -> Callable[[RatingMatrix, Params, int], UserScorer]:
    """A cornac ranking model fitted on the binary input; ``prepare`` readies it to score."""

    def fit(train: RatingMatrix, params: Params, seed: int) -> UserScorer:
        import torch

        torch.manual_seed(seed)
        ds = cornac_dataset(interactions(train.matrix, params["input"]), seed)
        model = make(params, seed).fit(ds)
        if prepare is not None:
            prepare(model)
        axis = cornac_axis(ds, train.shape)

        def score_rows(users: np.ndarray, rows: sp.csr_matrix) -> np.ndarray:
            with torch.no_grad():
                scores = axis.dense(users, lambda u: np.asarray(model.score(u)).ravel())
            return np.nan_to_num(scores, nan=-np.inf)

        return implicit_scorer(train, params["input"], score_rows)

    return fit


def make_vaecf(params: Params, seed: int) -> Any:
    from cornac.models import VAECF

    return VAECF(
        k=200,
        autoencoder_structure=[600],
        act_fn="tanh",
        likelihood="mult",
        n_epochs=params["epochs"],
        batch_size=500,
        learning_rate=1e-3,
        beta=params["beta"],
        seed=seed,
        use_gpu=False,
    )


def make_recvae(params: Params, seed: int) -> Any:
    from cornac.models import RecVAE

    return RecVAE(batch_size=100, n_epochs=params["epochs"], seed=seed, use_gpu=False)


def recvae_eval_mode(model: Any) -> None:
    """cornac leaves RecVAE's network in train mode (input dropout, sampled z) after fit."""
    model.recvae_model.eval()


def make_bivaecf(params: Params, seed: int) -> Any:
    from cornac.models import BiVAECF

    return BiVAECF(
        k=50,
        encoder_structure=[100],
        act_fn="tanh",
        likelihood="pois",
        n_epochs=params["epochs"],
        batch_size=128,
        learning_rate=1e-3,
        seed=seed,
        use_gpu=False,
    )


def epoch_stages(first: Params, screen: int, more: Sequence[int]) -> tuple[Stage, ...]:
    """Both inputs screened at ``screen`` epochs, then the winner at each of ``more``."""
    return (
        lambda _best: [{"input": i, **first, "epochs": screen} for i in INPUTS],
        lambda best: [{**(best or {}), "epochs": e} for e in more],
    )


def fit_mf(train: RatingMatrix, params: Params, seed: int) -> UserScorer:
    from cornac.models import MF

    ds = cornac_dataset(train.matrix, seed)
    model = MF(**params, learning_rate=0.01, use_bias=True, num_threads=1, seed=seed).fit(ds)
    axis = cornac_axis(ds, train.shape)
    return rating_scorer(train, lambda users: axis.dense(users, model.score))


def fit_surprise(algo_name: str) -> Callable[[RatingMatrix, Params, int], UserScorer]:
    """scikit-surprise's estimate() vectorised over the catalog, checked against predict()."""

    def fit(train: RatingMatrix, params: Params, seed: int) -> UserScorer:
        import surprise

        coo = train.matrix.tocoo()
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "train.csv"
            np.savetxt(
                path, np.c_[coo.row, coo.col, coo.data], fmt=("%d", "%d", "%g"), delimiter=","
            )
            low, high = train.scale()
            reader = surprise.Reader(
                line_format="user item rating", sep=",", rating_scale=(low, high)
            )
            trainset = surprise.Dataset.load_from_file(str(path), reader).build_full_trainset()
        algo = getattr(surprise, algo_name)(**params, random_state=seed).fit(trainset)
        n_users, n_movies = train.shape
        inner_item = np.full(n_movies, -1, dtype=np.int64)
        for inner in trainset.all_items():
            inner_item[int(trainset.to_raw_iid(inner))] = inner
        known = inner_item >= 0
        item_bias = np.zeros(n_movies)
        item_bias[known] = algo.bi[inner_item[known]]
        item_f = np.zeros((n_movies, algo.qi.shape[1]))
        item_f[known] = algo.qi[inner_item[known]]
        user_f = np.zeros((n_users, algo.pu.shape[1]))
        user_bias = np.zeros(n_users)
        for inner in trainset.all_users():
            raw = int(trainset.to_raw_uid(inner))
            user_bias[raw] = algo.bu[inner]
            user_f[raw] = algo.pu[inner]
            if algo_name == "SVDpp":  # p_u + |N(u)|^-1/2 sum of y_j over the user's movies
                rated = [j for j, _ in trainset.ur[inner]]
                user_f[raw] += algo.yj[rated].sum(axis=0) / np.sqrt(len(rated))

        def predict(users: np.ndarray) -> np.ndarray:
            safe = np.maximum(users, 0)
            return (
                trainset.global_mean + user_bias[safe, None] + item_bias + user_f[safe] @ item_f.T
            )

        rng = np.random.default_rng(0)
        sample_users = rng.choice(n_users, min(20, n_users), replace=False)
        sample_movies = rng.choice(n_movies, min(5, n_movies), replace=False)
        dense = predict(sample_users)
        for r, user in enumerate(sample_users.tolist()):
            for movie in sample_movies.tolist():
                est = algo.predict(str(user), str(movie), clip=False).est
                if abs(est - dense[r, movie]) > 1e-6:
                    raise RuntimeError(
                        f"{algo_name}: vectorised {dense[r, movie]} != predict {est}"
                    )
        return rating_scorer(train, predict)

    return fit


@dataclass(frozen=True)
class Peer:
    """A library recommender: how to fit it and which configurations validation tries."""

    fit: Callable[[RatingMatrix, Params, int], UserScorer]
    criterion: str  # ndcg@10 (higher wins) or rmse (lower wins)
    stages: tuple[Stage, ...]
    smoke: tuple[Stage, ...]  # --smoke: one tiny configuration or two
    fixed: Params  # merged into every configuration (e.g. the input of an EASE variant)


def _grid(**axes: Sequence[Any]) -> Stage:
    keys = list(axes)

    def stage(_best: Params | None) -> list[Params]:
        combos: list[Params] = [{}]
        for key in keys:
            combos = [{**c, key: v} for c in combos for v in axes[key]]
        return combos

    return stage


ALS_FACTORS, ALS_REGULARIZATION, ALS_ALPHA = (32, 64, 128), (1.0, 10.0, 100.0), (1.0, 10.0)

PEERS: dict[str, Peer] = {
    "ease-all": Peer(
        fit_ease, NDCG, ease_stages(EASE_LAMBDAS), ease_stages((250.0, 500.0)), {"input": "all"}
    ),
    "ease-pos4": Peer(
        fit_ease, NDCG, ease_stages(EASE_LAMBDAS), ease_stages((250.0, 500.0)), {"input": "pos4"}
    ),
    "als": Peer(
        fit_als,
        NDCG,
        (
            _grid(
                input=INPUTS,
                factors=ALS_FACTORS,
                regularization=ALS_REGULARIZATION,
                alpha=ALS_ALPHA,
                iterations=(15,),
            ),
            beyond_edges(
                {
                    "factors": (ALS_FACTORS, 2),
                    "regularization": (ALS_REGULARIZATION, 3.0),
                    "alpha": (ALS_ALPHA, 3.0),
                }
            ),
        ),
        (
            _grid(
                input=INPUTS, factors=(16,), regularization=(10.0,), alpha=(1.0,), iterations=(3,)
            ),
        ),
        {},
    ),
    "vaecf": Peer(
        fit_cornac_implicit(make_vaecf),
        NDCG,
        epoch_stages({"beta": 0.2}, 40, (20, 80)),
        epoch_stages({"beta": 0.2}, 2, (3,)),
        {},
    ),
    "recvae": Peer(
        fit_cornac_implicit(make_recvae, recvae_eval_mode),
        NDCG,
        epoch_stages({}, 5, (15,)),
        epoch_stages({}, 1, (2,)),
        {},
    ),
    "bivaecf": Peer(
        fit_cornac_implicit(make_bivaecf),
        NDCG,
        epoch_stages({}, 50, (100, 200)),
        epoch_stages({}, 2, (3,)),
        {},
    ),
    "svd": Peer(
        fit_surprise("SVD"),
        RMSE,
        (  # regularisation and schedule together: the better reg differs per schedule
            lambda _best: [
                {"n_factors": f, "n_epochs": e, "lr_all": lr, "reg_all": r}
                for f in (50, 100)
                for e, lr in ((20, 0.005), (40, 0.01))
                for r in (0.05, 0.1, 0.2)
            ],
        ),
        (_grid(n_factors=(10,), n_epochs=(3,), lr_all=(0.005,), reg_all=(0.05,)),),
        {},
    ),
    "svdpp": Peer(
        fit_surprise("SVDpp"),
        RMSE,
        (_grid(n_factors=(20,), n_epochs=(20,), lr_all=(0.007,), reg_all=(0.05, 0.1)),),
        (_grid(n_factors=(5,), n_epochs=(2,), lr_all=(0.007,), reg_all=(0.05,)),),
        {},
    ),
    "mf": Peer(
        fit_mf,
        RMSE,
        (_grid(k=(50, 200), max_iter=(20, 50), lambda_reg=(0.02, 0.05, 0.1)),),
        (_grid(k=(10,), max_iter=(5,), lambda_reg=(0.02,)),),
        {},
    ),
}


# --------------------------------------------------------------------------- tuning and runs


def _better(criterion: str, a: float, b: float) -> bool:
    return a > b if criterion == NDCG else a < b


def tune(peer: Peer, fold: Fold, smoke: bool, seed: int) -> tuple[Params, list[Params]]:
    """The configuration with the best validation figure; only fold.fit and fold.valid are read."""
    trials: list[Params] = []
    tried: set[str] = set()
    best: Params | None = None
    best_value = math.nan
    for stage in peer.smoke if smoke else peer.stages:
        for candidate in stage(best):
            params = {**candidate, **peer.fixed}
            key = json.dumps(params, sort_keys=True)
            if key in tried:
                continue
            tried.add(key)
            started = time.perf_counter()
            scorer = peer.fit(fold.fit, params, seed)
            value = evaluate_user_scorer(scorer, fold.fit, fold.valid)[peer.criterion]
            trials.append(
                {
                    **params,
                    f"valid_{peer.criterion}": round(value, 5),
                    "seconds": round(time.perf_counter() - started, 2),
                }
            )
            if best is None or _better(peer.criterion, value, best_value):
                best, best_value = params, value
    assert best is not None, "a peer without configurations"
    return best, trials


def run_peer(peer: Peer, fold: Fold, smoke: bool, seed: int) -> dict[str, Any]:
    """Tune on validation, fit the winner on the whole train part, score the test part once."""
    started = time.perf_counter()
    params, trials = tune(peer, fold, smoke, seed)
    fit_started = time.perf_counter()
    scorer = peer.fit(fold.train, params, seed)
    fit_seconds = time.perf_counter() - fit_started
    figures = evaluate_user_scorer(scorer, fold.train, fold.test)
    row: dict[str, Any] = {
        NDCG: figures.get(NDCG),
        "coverage@10": figures.get("coverage@10"),
    }
    if peer.criterion == RMSE:
        row.update(rmse=figures.get("rmse"), mae=figures.get("mae"))
    row.update(
        params=params,
        fit_seconds=round(fit_seconds, 2),
        seconds=round(time.perf_counter() - started, 2),
        tuning=trials,
    )
    return row


def mean_over_folds(per_fold: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Numeric figures averaged over the folds; each fold's chosen parameters kept."""
    first = next(iter(per_fold.values()))
    out: dict[str, Any] = {}
    for key, value in first.items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            out[key] = float(np.mean([row[key] for row in per_fold.values()]))
    out["params"] = {name: row["params"] for name, row in per_fold.items()}
    out["folds"] = per_fold
    return out


def strongest(peers: dict[str, dict[str, Any]], key: str, higher: bool) -> dict[str, Any] | None:
    """The peer with the best ``key`` (None when no peer has it)."""
    scored = {n: r[key] for n, r in peers.items() if r.get(key) is not None}
    if not scored:
        return None
    name = (max if higher else min)(scored, key=lambda n: scored[n])
    return {"peer": name, key: round(scored[name], 4)}


def summarize(peers: dict[str, dict[str, Any]], model: dict[str, Any] | None) -> dict[str, Any]:
    """Rounded figures, the strongest peer (NDCG), the best peer (RMSE), the model's ratios."""
    table = {
        name: {k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}
        for name, row in peers.items()
    }
    out: dict[str, Any] = {
        "peers": table,
        "strongest_peer": strongest(peers, NDCG, higher=True),
        "best_rmse_peer": strongest(peers, RMSE, higher=False),
    }
    if model is not None:
        top, best = out["strongest_peer"], out["best_rmse_peer"]
        out["model"] = {NDCG: model.get(NDCG), RMSE: model.get(RMSE)}
        out["ratios"] = {
            "ndcg_model/strongest_peer": _ratio(model.get(NDCG), top and top[NDCG]),
            "rmse_model/best_peer": _ratio(model.get(RMSE), best and best[RMSE]),
        }
    return out


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 4) if a is not None and b else None


def merge_into(
    path: Path, dataset: str, summary: dict[str, Any], model: dict[str, Any] | None
) -> None:
    """Write ``dataset``'s figures into the JSON file, keeping the peers and sets it holds."""
    doc: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {}
    peers = {**doc.get(dataset, {}).get("peers", {}), **summary["peers"]}
    doc[dataset] = {**summary, **summarize(peers, model)}
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2))
    tmp.replace(path)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--datasets",
        default=",".join(DATASETS),
        help=f"comma-separated subset of {', '.join(DATASETS)} (default: all)",
    )
    parser.add_argument(
        "--peers", default=",".join(PEERS), help=f"comma-separated subset of {', '.join(PEERS)}"
    )
    parser.add_argument("--quick", action="store_true", help="ml-100k: u1 only, not u1..u5")
    parser.add_argument(
        "--smoke", action="store_true", help="tiny grids and epochs: the code paths, not figures"
    )
    parser.add_argument("--model-json", type=Path, help="bench_accuracy's JSON: add the ratios")
    parser.add_argument("--out", type=Path, help="JSON file kept up to date after every peer")
    parser.add_argument("--seed", type=int, default=1, help="the peers' seed (default 1)")
    parser.add_argument(
        "--valid-seed", type=int, default=VALID_SEED, help="seed of the validation carve-out"
    )
    parser.add_argument("--threads", type=int, default=1, help="BLAS and torch threads")
    args = parser.parse_args(argv)
    args.datasets = [d.strip() for d in args.datasets.split(",") if d.strip()]
    args.peers = [p.strip() for p in args.peers.split(",") if p.strip()]
    for given, known, what in ((args.datasets, DATASETS, "data set"), (args.peers, PEERS, "peer")):
        unknown = sorted(set(given) - set(known))
        if unknown:
            parser.error(f"unknown {what}(s) {unknown}; choose from {', '.join(known)}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    with threadpool_limits(limits=args.threads):
        run(args)


def model_figures(accuracy: dict[str, Any] | None, protocol: str) -> dict[str, Any] | None:
    """bench_accuracy's model figures for this data set, if they are on the same split."""
    if accuracy is None:
        return None
    if accuracy.get("protocol") != protocol:
        log(f"--model-json: {accuracy.get('protocol')!r} is not {protocol!r}; no ratios")
        return None
    figures: dict[str, Any] = accuracy["model"]
    return figures


def run(args: argparse.Namespace) -> None:
    models: dict[str, Any] = {}
    if args.model_json:
        models = json.loads(args.model_json.read_text()).get("datasets", {})
    root = data_dir()
    out: dict[str, Any] = {
        "data_dir": str(root),
        "quick": args.quick,
        "smoke": args.smoke,
        "valid": {"seed": args.valid_seed, "fraction": VALID_FRACTION},
        "datasets": {},
        "skipped": {},
    }
    for name in args.datasets:
        loaded = dataset_folds(name, root, args.quick, args.valid_seed)
        if isinstance(loaded, str):
            log(f"{name}: {loaded}")
            out["skipped"][name] = loaded
            continue
        protocol, folds = loaded
        model = model_figures(models.get(name), protocol)
        if name == "ml-100k" and args.quick:
            name = "ml-100k/u1"  # not the u1..u5 means
        peers: dict[str, dict[str, Any]] = {}
        for peer_name in args.peers:
            per_fold = {}
            for fold in folds:
                log(f"{name} [{fold.name}] {peer_name} ...")
                per_fold[fold.name] = run_peer(PEERS[peer_name], fold, args.smoke, args.seed)
                row = per_fold[fold.name]
                log(
                    f"{name} [{fold.name}] {peer_name}: NDCG@10 {row[NDCG]:.4f}"
                    + (f" RMSE {row['rmse']:.4f}" if row.get("rmse") is not None else "")
                    + f" {row['params']} {row['seconds']:.1f} s"
                )
            peers[peer_name] = (
                per_fold[folds[0].name] if len(folds) == 1 else mean_over_folds(per_fold)
            )
            summary = {"protocol": protocol, **summarize(peers, model)}
            out["datasets"][name] = summary
            if args.out:
                merge_into(args.out, name, summary, model)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
