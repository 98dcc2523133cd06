"""Choosing on validation: the item path's ridge strength and how the parts are blended.

Every candidate is scored on the same validation users (the held-out ratings, with the
training ratings as input and as exclusions), with the parts computed once per batch of
users and every blend accumulated from them, so the grid costs little beyond one pass.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from app.ml.config import ModelConfig
from app.ml.data import IdMap
from app.ml.factors import ItemFactors
from app.ml.hybrid import Blend, HybridModel
from app.ml.item_path import (
    LAMBDA_FACTORS,
    CoOccurrence,
    ItemToItem,
    Variant,
    fit_item_to_item,
    input_indicator,
    lambda_centre,
    variants,
)
from app.ml.metrics import RankingAccumulator
from app.ml.scoring import FoldInScorer

ITEM_WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)
POPULARITY_PENALTIES = (0.0, 0.1, 0.2, 0.3, 0.4)
RATING_WEIGHTS = tuple(round(0.05 * i, 2) for i in range(21))
"""shares tried for each rating network (pairs summing to at most 1: 231 blends, each
two numbers fitted on thousands of validation ratings)."""
FACTOR_WEIGHTS = tuple(round(0.05 * i, 2) for i in range(1, 11))
"""shares tried for each matrix factorisation fit, with every pair of network shares that
leaves room for it (the studied fits took 0.2-0.25: the networks carry most of it)."""
COVERAGE_TOLERANCE = 0.015
"""Among ranking blends within this share of the best validation NDCG@10 (and never below
the EASE the item path was chosen against), the one that covers most of the catalog wins:
differences that small are noise on a 10 % validation split (its standard error is
several per cent), while coverage differs by a third."""
BATCH_USERS = 1024
BATCH_CELLS = 2**22
"""users x catalog cells per validation batch: every part is a dense batch x catalog array
(16 MB each at this size), so a 59k-movie catalog takes 71 users a batch, not 1,024. At
2**24 the quality gate's batches of 284 took 1 GB at 25M ratings, over the trained model
and the active one."""


@dataclass
class Figures:
    """Validation figures of one candidate, accumulated over batches of users."""

    ranking: RankingAccumulator
    squared_error: float = 0.0
    absolute_error: float = 0.0
    ratings: int = 0

    def add_ratings(self, pred: np.ndarray, truth: np.ndarray) -> None:
        err = pred.astype(np.float64) - truth
        self.squared_error += float((err**2).sum())
        self.absolute_error += float(np.abs(err).sum())
        self.ratings += int(truth.size)

    def result(self) -> dict[str, float]:
        out: dict[str, float] = {}
        if self.ranking.users:
            out.update(self.ranking.result())
        if self.ratings:
            out["rmse"] = math.sqrt(self.squared_error / self.ratings)
            out["mae"] = self.absolute_error / self.ratings
        return out


@dataclass
class Validation:
    """The validation users' training rows (input, exclusions) and held-out rows (truth)."""

    rows: sp.csr_matrix
    truth: sp.csr_matrix
    threshold: float
    n_movies: int = field(init=False)

    def __post_init__(self) -> None:
        self.n_movies = int(self.rows.shape[1])

    def batches(self) -> Iterator[tuple[sp.csr_matrix, sp.csr_matrix]]:
        size = batch_users(self.n_movies)
        for start in range(0, self.rows.shape[0], size):
            yield self.rows[start : start + size], self.truth[start : start + size]

    def new_figures(self) -> Figures:
        return Figures(RankingAccumulator(self.n_movies, 10, self.threshold))

    def remapped(self, movies: IdMap, target: IdMap) -> Validation:
        """The same users and ratings on another model's columns (its unknown movies dropped)."""
        return Validation(
            _remap(self.rows, movies, target), _remap(self.truth, movies, target), self.threshold
        )


def batch_users(n_movies: int, most: int = BATCH_USERS) -> int:
    """Users in a batch scored over the whole catalog: at most ``most``, and at most
    BATCH_CELLS users x movies."""
    return max(1, min(most, BATCH_CELLS // max(n_movies, 1)))


def _remap(csr: sp.csr_matrix, movies: IdMap, target: IdMap) -> sp.csr_matrix:
    cols = target.index_of(movies.ids[csr.indices])
    keep = cols >= 0
    rows = np.repeat(np.arange(csr.shape[0]), np.diff(csr.indptr))
    return sp.csr_matrix(
        (csr.data[keep], (rows[keep], cols[keep])), shape=(csr.shape[0], len(target))
    )


def choose_item_path(
    train: sp.csr_matrix,
    validation: Validation,
    config: ModelConfig,
    on_step: Callable[[int, int], None] | None = None,
) -> tuple[ItemToItem, dict[str, float]]:
    """The item path best on validation NDCG@10: each variant (`app.ml.item_path.variants`)
    at the middle ridge strength, then the best variant at the grid's other strengths (5
    closed forms rather than 9: each is cubic in the movies, 8,000 at most). Returns it and
    every candidate's NDCG (keyed by `candidate_name`); ``on_step(done, of)`` after each."""
    tried: dict[str, float] = {}
    fitted: list[tuple[float, ItemToItem, CoOccurrence]] = []
    kinds = variants(config.item_liked_weight, config.relevant_threshold)
    others = [] if config.item_lambda else [f for f in LAMBDA_FACTORS if f != 1.0]
    steps = len(kinds) + len(others)

    def step() -> None:
        if on_step is not None:
            on_step(len(tried), steps)

    step()
    for variant in kinds:
        co = CoOccurrence.of(
            train, config.relevant_threshold, config.item_max_movies, variant.min_rating
        )
        lam = config.item_lambda or lambda_centre(input_indicator(train, variant.min_rating))
        path = fit_item_to_item(co, lam, variant.liked_weight, config.item_neighbors)
        fitted.append((_ndcg(path, validation), path, co))
        tried[candidate_name(variant, lam)] = fitted[-1][0]
        step()
    best_ndcg, best, co = max(fitted, key=lambda f: f[0])
    del fitted
    lam = best.lam
    for factor in others:
        path = fit_item_to_item(co, lam * factor, best.liked_weight, config.item_neighbors)
        ndcg = _ndcg(path, validation)
        tried[candidate_name(path, path.lam)] = ndcg
        step()
        if ndcg > best_ndcg:
            best_ndcg, best = ndcg, path
    return best, tried


def _ndcg(path: ItemToItem, validation: Validation) -> float:
    figures = validation.new_figures()
    for rows, truth in validation.batches():
        figures.ranking.add(path.score_rows(rows), rows, truth)
    return figures.result().get("ndcg@10", 0.0)


def candidate_name(variant: Variant | ItemToItem, lam: float) -> str:
    return f"{variant_name(variant)}, lambda {lam:g}"


def best_ease(tried: dict[str, float]) -> float:
    """The best validation NDCG@10 of plain EASE (every rating, or the liked ones alone)
    among `choose_item_path`'s candidates: the floor of the served ranking (the path itself
    is at least that good, and the blend may rank with it alone)."""
    plain = [ndcg for name, ndcg in tried.items() if not name.startswith("rated+liked")]
    return max(plain, default=0.0)


def variant_name(variant: Variant | ItemToItem) -> str:
    """``rated+liked x3``, ``rated`` (EASE on every rating) or ``rated >= 4`` (liked only)."""
    if variant.min_rating is not None:
        return f"rated >= {variant.min_rating:g}"
    return "rated" if variant.liked_weight == 0 else f"rated+liked x{variant.liked_weight:g}"


def candidate_blends(model: HybridModel) -> tuple[list[Blend], list[tuple[float, float]]]:
    """Ranking blends and rating shares (rating network, joint network's rating head) to
    try; a field fixed in the config is not tried."""
    config = model.config
    has_item = model.item_path is not None
    weights = [config.item_weight] if config.item_weight is not None else ITEM_WEIGHTS
    if not has_item:
        weights = [0.0]
    penalties = (
        [config.popularity_penalty]
        if config.popularity_penalty is not None
        else POPULARITY_PENALTIES
    )
    ranking = [Blend(w, p) for w, p in itertools.product(weights, penalties)]
    shares = [config.rating_blend] if config.rating_blend is not None else list(RATING_WEIGHTS)
    joint_shares = list(RATING_WEIGHTS) if _has_joint_head(model) else [0.0]
    if config.rating_blend is not None:
        joint_shares = [0.0]  # a fixed share of the rating network is the whole blend
    rating = [(a, b) for a, b in itertools.product(shares, joint_shares) if a + b <= 1.0 + 1e-9]
    return ranking, rating


def _has_joint_head(model: HybridModel) -> bool:
    """Whether the ranking network's rating head is a part of its own (another network)."""
    return model.rate_net is not model.rank_net


RatingShares = tuple[float, float, float, int]
"""(rating network, joint network's head, matrix factorisation, which fit: -1 for none)."""


def choose_blend(
    model: HybridModel,
    validation: Validation,
    floor: float = 0.0,
    factors: Sequence[ItemFactors] = (),
) -> tuple[Blend, ItemFactors | None, dict[str, object]]:
    """The best ranking blend (NDCG, then coverage, never below ``floor`` where one reaches
    it), and the rating shares and matrix factorisation fit among ``factors`` (RMSE) on
    validation; the fit is None where no share of one won. The shares without a fit come
    first, so that a tie leaves the model as it was without the part."""
    ranking, allowed = candidate_blends(model)
    pairs = sorted({*allowed, (0.0, 0.0), (1.0, 0.0)})  # bias and network always reported
    rating: list[RatingShares] = [(a, b, 0.0, -1) for a, b in pairs]
    rating += [
        (a, b, c, j)
        for j in range(len(factors))
        for c in FACTOR_WEIGHTS
        for a, b in allowed
        if a + b + c <= 1.0 + 1e-9
    ]
    rank_figures = [validation.new_figures() for _ in ranking]
    rate_figures = [validation.new_figures() for _ in rating]
    popularity = validation.new_figures()
    scorer = FoldInScorer(model)
    for rows, truth in validation.batches():
        deep, item = scorer.ranking_parts(rows)
        for blend, figures in zip(ranking, rank_figures, strict=True):
            figures.ranking.add(scorer.blend_scores(deep, item, blend), rows, truth)
        coo = truth.tocoo()
        parts = scorer.rating_parts(rows, (coo.row, coo.col))
        fitted: list[np.ndarray] = []
        if factors:  # one fold-in input for every candidate fit
            residuals = scorer.bias.residuals(rows)
            fitted = [scorer.factor_part(residuals, f, (coo.row, coo.col)) for f in factors]
        for (a, b, c, j), figures in zip(rating, rate_figures, strict=True):
            blend = Blend(rating_weight=a, joint_rating_weight=b, factor_weight=c)
            with_part = parts if j < 0 else parts._replace(factors=fitted[j])
            figures.add_ratings(scorer.blend_ratings(with_part, blend), coo.data)
        counts = np.broadcast_to(model.log_popularity, (rows.shape[0], validation.n_movies))
        popularity.ranking.add(counts, rows, truth)
    rank_results = [f.result() for f in rank_figures]
    rate_results = [f.result() for f in rate_figures]
    best_rank = _pick_ranking(rank_results, floor)
    best_rate = min(
        (i for i, (a, b, c, j) in enumerate(rating) if (a, b) in allowed),
        key=lambda i: rate_results[i].get("rmse", math.inf),
    )
    a, b, c, j = rating[best_rate]
    chosen = Blend(ranking[best_rank].item_weight, ranking[best_rank].popularity_penalty, a, b, c)
    report: dict[str, object] = {
        "ranking": [
            {
                "item_weight": b.item_weight,
                "popularity_penalty": b.popularity_penalty,
                "ndcg@10": r.get("ndcg@10"),
                "coverage@10": r.get("coverage@10"),
            }
            for b, r in zip(ranking, rank_results, strict=True)
        ],
        "rating": [
            {"rating_weight": a, "joint_rating_weight": b, "rmse": r.get("rmse")}
            for (a, b, _, j), r in zip(rating, rate_results, strict=True)
            if j < 0
        ],
        "factors": _factor_report(factors, rating, rate_results),
        "figures": {
            **rank_results[best_rank],
            "rmse": rate_results[best_rate].get("rmse", math.nan),
            "mae": rate_results[best_rate].get("mae", math.nan),
        },
        "popularity_ndcg@10": popularity.result().get("ndcg@10", math.nan),
        "bias_rmse": _figure(rating, rate_results, (0.0, 0.0, 0.0, -1)),
        "deep_rmse": _figure(rating, rate_results, (1.0, 0.0, 0.0, -1)),
    }
    return chosen, factors[j] if j >= 0 else None, report


def _factor_report(
    factors: Sequence[ItemFactors],
    rating: list[RatingShares],
    results: list[dict[str, float]],
) -> list[dict[str, float]]:
    """Per matrix factorisation fit and share, the best validation RMSE over network shares."""
    best: dict[tuple[int, float], float] = {}
    for (_, _, c, j), r in zip(rating, results, strict=True):
        if j >= 0:
            rmse = r.get("rmse", math.inf)
            best[j, c] = min(best.get((j, c), math.inf), rmse)
    return [
        {"lambda": factors[j].lam, "rank": factors[j].rank, "factor_weight": c, "rmse": rmse}
        for (j, c), rmse in best.items()
    ]


def _pick_ranking(results: list[dict[str, float]], floor: float = 0.0) -> int:
    ndcg = [r.get("ndcg@10", 0.0) for r in results]
    best = max(ndcg)
    floor = max(best * (1.0 - COVERAGE_TOLERANCE), min(floor, best))
    close = [i for i, value in enumerate(ndcg) if value >= floor]
    return max(close, key=lambda i: (results[i].get("coverage@10", 0.0), ndcg[i]))


def _figure(
    weights: list[RatingShares], results: list[dict[str, float]], weight: RatingShares
) -> float:
    for w, r in zip(weights, results, strict=True):
        if w == weight:
            return r.get("rmse", math.nan)
    return math.nan


def validation_figures(model: HybridModel, validation: Validation) -> dict[str, float]:
    """NDCG@10, coverage, RMSE and MAE of a finished model on ``validation`` (the gate)."""
    figures = validation.new_figures()
    scorer, blend = FoldInScorer(model), model.blend
    joint = blend.joint_rating_weight > 0
    for rows, truth in validation.batches():
        figures.ranking.add(scorer.blend_scores(*scorer.ranking_parts(rows), blend), rows, truth)
        coo = truth.tocoo()  # ratings at the held-out cells only, as `choose_blend` scores them
        parts = scorer.rating_parts(rows, (coo.row, coo.col), joint=joint)
        figures.add_ratings(scorer.blend_ratings(parts, blend), coo.data)
    return figures.result()
