"""Accuracy metrics, exactly as docs/evaluation.md defines them (pooled RMSE and MAE;
P@10, R@10, NDCG@10, hit rate and coverage over the movies not rated in training)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from app.ml.data import RatingChunk, RatingMatrix, reindex

ScorerOutput = tuple[np.ndarray | None, np.ndarray | None]
Scorer = Callable[[sp.csr_matrix], ScorerOutput]
"""Rows of training ratings (users x movies CSR) -> (scores, predicted ratings), either
may be None when the model does not produce it (e.g. popularity has no ratings)."""
UserScorer = Callable[[np.ndarray, sp.csr_matrix], ScorerOutput]
"""(users' row positions in the training matrix, -1 for users it lacks; their training
rows) -> as ``Scorer``: for models that keep a learned vector per training user (matrix
factorisation, ALS) instead of folding the user in from the row."""

RELEVANT_THRESHOLD = 4.0


def rating_metrics(
    pred: np.ndarray, truth: np.ndarray, scale: tuple[float, float] | None = None
) -> dict[str, float]:
    pred = np.asarray(pred, dtype=np.float64).reshape(-1)
    truth = np.asarray(truth, dtype=np.float64).reshape(-1)
    if pred.shape != truth.shape:
        raise ValueError("pred and truth must have the same length")
    if scale is not None:
        pred = np.clip(pred, scale[0], scale[1])
    if truth.size == 0:
        return {"rmse": float("nan"), "mae": float("nan"), "n_ratings": 0}
    err = pred - truth
    return {
        "rmse": float(np.sqrt(np.mean(err**2))),
        "mae": float(np.mean(np.abs(err))),
        "n_ratings": int(truth.size),
    }


def top_k(
    scores: np.ndarray, exclude: sp.csr_matrix | None, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """(indices B x k, valid B x k): the top k per row, best first, excluded cells skipped;
    ``valid`` is False where a row had fewer candidates. float32 stays float32 (a float64
    copy at 59,047 movies was 400 MB a batch)."""
    s = np.array(scores, dtype=np.result_type(scores, np.float32), copy=True)
    if exclude is not None and exclude.nnz:
        coo = exclude.tocoo()
        s[coo.row, coo.col] = -np.inf
    k = min(k, s.shape[1])
    part = np.argpartition(-s, k - 1, axis=1)[:, :k]
    part_scores = np.take_along_axis(s, part, axis=1)
    order = np.argsort(-part_scores, axis=1, kind="stable")
    idx = np.take_along_axis(part, order, axis=1)
    valid = np.isfinite(np.take_along_axis(s, idx, axis=1))
    return idx, valid


@dataclass
class RankingAccumulator:
    n_items: int
    k: int = 10
    threshold: float = RELEVANT_THRESHOLD
    sums: dict[str, float] = field(
        default_factory=lambda: dict.fromkeys(("precision", "recall", "ndcg", "hit_rate"), 0.0)
    )
    users: int = 0
    recommended: set[int] = field(default_factory=set)

    def add(
        self,
        scores: np.ndarray,
        train_rows: sp.csr_matrix,
        test_rows: sp.csr_matrix,
        extra_relevant: np.ndarray | None = None,
    ) -> None:
        """``extra_relevant``: relevant test movies outside the columns, per user."""
        relevant = (test_rows >= self.threshold).astype(np.float32).tocsr()
        n_rel = np.asarray(relevant.sum(axis=1)).reshape(-1)
        if extra_relevant is not None:
            n_rel = n_rel + extra_relevant
        users = np.flatnonzero(n_rel > 0)
        if users.size == 0:
            return
        idx, valid = top_k(np.asarray(scores)[users], train_rows[users], self.k)
        rel_dense = relevant[users].toarray() > 0
        hits = np.take_along_axis(rel_dense, idx, axis=1) & valid
        n_hits = hits.sum(axis=1)
        denom = np.minimum(self.k, n_rel[users])
        discounts = 1.0 / np.log2(np.arange(2, self.k + 2))
        dcg = (hits * discounts[: hits.shape[1]]).sum(axis=1)
        idcg = np.cumsum(discounts)[denom.astype(np.int64) - 1]
        self.sums["precision"] += float((n_hits / self.k).sum())
        self.sums["recall"] += float((n_hits / denom).sum())
        self.sums["ndcg"] += float((dcg / idcg).sum())
        self.sums["hit_rate"] += float((n_hits > 0).sum())
        self.users += int(users.size)
        self.recommended.update(np.unique(idx[valid]).tolist())

    def result(self) -> dict[str, float]:
        k = self.k
        n = max(self.users, 1)
        out = {
            f"{name}@{k}": self.sums[name] / n
            for name in ("precision", "recall", "ndcg", "hit_rate")
        }
        out[f"coverage@{k}"] = len(self.recommended) / max(self.n_items, 1)
        out["users_evaluated"] = self.users
        return out


def ranking_metrics(
    scores: np.ndarray,
    train: sp.csr_matrix,
    test: sp.csr_matrix,
    k: int = 10,
    threshold: float = RELEVANT_THRESHOLD,
    n_items: int | None = None,
) -> dict[str, float]:
    """The ranking figures of one score matrix (users x movies, as ``train`` and ``test``)."""
    acc = RankingAccumulator(n_items=n_items or scores.shape[1], k=k, threshold=threshold)
    acc.add(scores, sp.csr_matrix(train), sp.csr_matrix(test))
    return acc.result()


def evaluate_scorer(
    scorer: Scorer,
    train: RatingMatrix,
    test: RatingChunk,
    k: int = 10,
    scale: tuple[float, float] | None = None,
    batch_size: int = 1024,
    threshold: float = RELEVANT_THRESHOLD,
) -> dict[str, float]:
    """A scorer's figures on (train matrix, test ratings), each test user folded in from
    their training row. Ratings it cannot score get the training mean (``fallback_ratings``);
    unknown users are ranked from an empty row; unknown relevant movies count in recall."""
    return evaluate_user_scorer(
        lambda _users, rows: scorer(rows), train, test, k, scale, batch_size, threshold
    )


def evaluate_user_scorer(
    scorer: UserScorer,
    train: RatingMatrix,
    test: RatingChunk,
    k: int = 10,
    scale: tuple[float, float] | None = None,
    batch_size: int = 1024,
    threshold: float = RELEVANT_THRESHOLD,
) -> dict[str, float]:
    """``evaluate_scorer`` for a scorer that is also told which training users it scores."""
    scale = scale or train.scale()
    mean = train.mean()
    users_t, movies_t, ratings_t = (np.asarray(a) for a in test)
    test_csr, unknown = reindex(test, train.users, train.movies)
    user_counts = np.diff(train.matrix.indptr)
    # relevant test movies the model cannot rank (not in the movie map), per test user id
    new_users = np.unique(users_t[train.users.index_of(users_t) < 0])
    known_user = train.users.index_of(users_t)
    test_users = np.unique(known_user[known_user >= 0])
    acc = RankingAccumulator(n_items=train.shape[1], k=k, threshold=threshold)
    preds: list[np.ndarray] = []
    truths: list[np.ndarray] = []
    has_ratings = True
    for start in range(0, test_users.size, batch_size):
        batch = test_users[start : start + batch_size]
        rows = train.matrix[batch]
        scores, ratings = scorer(batch, rows)
        test_rows = test_csr[batch]
        if scores is not None:
            extra = _extra_relevant(
                train.users.ids[batch], users_t, movies_t, ratings_t, train.movies, threshold
            )
            acc.add(scores, rows, test_rows, extra)
        if ratings is None:
            has_ratings = False
            continue
        coo = test_rows.tocoo()
        ok = user_counts[batch[coo.row]] > 0
        preds.append(np.asarray(ratings)[coo.row[ok], coo.col[ok]])
        truths.append(coo.data[ok])
    result: dict[str, float] = {}
    if has_ratings:
        n_known = int(sum(t.size for t in truths))
        fallback = int(ratings_t.size - n_known)
        pred = np.concatenate(preds + [np.full(fallback, mean)])
        truth = np.concatenate(truths + [_fallback_truth(test, test_csr, unknown, user_counts)])
        result.update(rating_metrics(pred, truth, scale))
        result["fallback_ratings"] = fallback
    if new_users.size:
        _rank_new_users(scorer, acc, new_users, users_t, movies_t, ratings_t, train, threshold)
    if acc.users:
        result.update(acc.result())
    return result


def _fallback_truth(
    test: RatingChunk,
    test_csr: sp.csr_matrix,
    unknown: np.ndarray,
    user_counts: np.ndarray,
) -> np.ndarray:
    coo = test_csr.tocoo()
    no_data = user_counts[coo.row] == 0
    return np.concatenate(
        [np.asarray(test[2], dtype=np.float64)[unknown], coo.data[no_data].astype(np.float64)]
    )


def _extra_relevant(
    batch_user_ids: np.ndarray,
    users_t: np.ndarray,
    movies_t: np.ndarray,
    ratings_t: np.ndarray,
    movies: object,
    threshold: float,
) -> np.ndarray:
    unknown_movie = movies.index_of(movies_t) < 0  # type: ignore[attr-defined]
    sel = unknown_movie & (ratings_t >= threshold)
    if not sel.any():
        return np.zeros(batch_user_ids.size)
    counts = {
        int(u): int(c) for u, c in zip(*np.unique(users_t[sel], return_counts=True), strict=True)
    }
    return np.array([counts.get(int(u), 0) for u in batch_user_ids], dtype=np.float64)


def _rank_new_users(
    scorer: UserScorer,
    acc: RankingAccumulator,
    new_users: np.ndarray,
    users_t: np.ndarray,
    movies_t: np.ndarray,
    ratings_t: np.ndarray,
    train: RatingMatrix,
    threshold: float,
) -> None:
    sel = np.isin(users_t, new_users)
    rows_idx = np.searchsorted(new_users, users_t[sel])
    cols = train.movies.index_of(movies_t[sel])
    known = cols >= 0
    test_rows = sp.csr_matrix(
        (ratings_t[sel][known].astype(np.float32), (rows_idx[known], cols[known])),
        shape=(new_users.size, train.shape[1]),
    )
    extra = np.bincount(
        rows_idx[~known & (ratings_t[sel] >= threshold)], minlength=new_users.size
    ).astype(np.float64)
    empty = sp.csr_matrix((new_users.size, train.shape[1]), dtype=np.float32)
    scores, _ = scorer(np.full(new_users.size, -1, dtype=np.int64), empty)
    if scores is not None:
        acc.add(scores, empty, test_rows, extra)
