"""Ranking: pure functions of a served model and a batch of users' ratings, timed by stage."""

from __future__ import annotations

import functools
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
from prometheus_client import Counter, Summary

from app.ml.scoring import top_many
from app.serving.catalog import NO_IDS
from app.serving.filters import Filters, filter_scores
from app.serving.lifecycle import ServingModel


@dataclass(frozen=True)
class SessionRatings:
    """An anonymous session's ratings, in place of a stored user's row: sorted by movie id
    (the same ratings in any order are one answer key), a repeated movie's last rating."""

    movie_ids: tuple[int, ...]
    ratings: tuple[float, ...]

    @classmethod
    def of(cls, pairs: Iterable[tuple[int, float]]) -> SessionRatings:
        ordered = sorted(dict(pairs).items())
        return cls(tuple(m for m, _ in ordered), tuple(r for _, r in ordered))

    @functools.cached_property
    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        return (
            np.array(self.movie_ids, dtype=np.int64),
            np.array(self.ratings, dtype=np.float32),
        )


@dataclass(frozen=True)
class RecommendRequest:
    """What a recommendation request asks for; hashable, so it is part of the answer key."""

    user_id: int | None
    """None: an anonymous session, whose ratings come with the request"""
    n: int = 10
    genres: tuple[str, ...] = ()
    """any of these genres (none: every genre)"""
    exclude: tuple[int, ...] = ()
    """movie ids the caller does not want listed this time"""
    explain: bool = False
    session: SessionRatings | None = None
    """an anonymous session's ratings (user_id None), folded in instead of a stored user's"""


# Where an uncached answer's time goes, counted once per batch (per answer cost more than
# some stages): the seconds per stage and the answers they were spent on.
RECOMMEND_STAGE_SECONDS = Counter(
    "saerec_recommend_stage_seconds",
    "Seconds spent per stage of recommendations answered by the model (answer cache misses)",
    ["stage"],
)
RECOMMEND_STAGE_ANSWERS = Counter(
    "saerec_recommend_stage_answers", "Answers the stage's seconds were spent on", ["stage"]
)
STAGES = ("db_read", "fold_in", "filtering", "ranking", "items")
_STAGE = {
    stage: (RECOMMEND_STAGE_SECONDS.labels(stage), RECOMMEND_STAGE_ANSWERS.labels(stage))
    for stage in STAGES
}
RECOMMEND_BATCH = Summary(
    "saerec_recommend_batch_requests", "Recommendation requests answered per batch"
)


def observe_stage(stage: str, seconds: float, answers: int = 1) -> None:
    spent, counted = _STAGE[stage]
    spent.inc(seconds)
    counted.inc(answers)


@dataclass(frozen=True)
class Pending:
    """A request waiting for its batch's forward pass."""

    index: int
    request: RecommendRequest
    filters: Filters
    key: tuple
    model: ServingModel
    rated: np.ndarray
    """the columns of every movie the user rated, new movies' included (never listed)"""
    cols: np.ndarray
    ratings: np.ndarray
    """the trained columns rated and their ratings: what the networks fold in"""


def by_model(pending: list[Pending]) -> list[tuple[ServingModel, list[Pending]]]:
    """Pending fold-ins grouped by the model that answers them (one, but for a swap)."""
    groups: dict[int, tuple[ServingModel, list[Pending]]] = {}
    for job in pending:
        groups.setdefault(id(job.model), (job.model, []))[1].append(job)
    return list(groups.values())


def rank_batch(
    model: ServingModel, jobs: list[Pending], since: float
) -> list[list[dict[str, Any]]]:
    """The top n of each encoded user; each stage's time is counted (see STAGES)."""
    batch = model.scorer.encode([j.cols for j in jobs], [j.ratings for j in jobs])
    scores = model.scores(batch)  # a fresh array: ours to overwrite
    folded = time.perf_counter()
    filter_scores(scores, model, [j.rated for j in jobs], [j.filters for j in jobs])
    filtered = time.perf_counter()
    tops = top_many(scores, [job.request.n for job in jobs])
    predicted = model.ratings(batch, [top for top, _ in tops])
    ranked = time.perf_counter()
    listed = model.catalog.items
    answers = [
        listed(top, exact, ratings) for (top, exact), ratings in zip(tops, predicted, strict=True)
    ]
    for job, (top, _), items in zip(jobs, tops, answers, strict=True):
        if job.request.explain:
            _add_reasons(model, job, top, items)
    done = time.perf_counter()
    size = len(jobs)
    observe_stage("fold_in", folded - since, size)
    observe_stage("filtering", filtered - folded, size)
    observe_stage("ranking", ranked - filtered, size)
    observe_stage("items", done - ranked, size)
    return answers


def _add_reasons(
    model: ServingModel,
    job: Pending,
    top: np.ndarray,
    items: list[dict[str, Any]],
) -> None:
    """Each item's "because": the ratings whose removal lowers its score most
    (`app.ml.explain`); a new movie's drops are its neighbours' weighted mean."""
    n, columns = model.n_trained, model.new.columns
    new = top >= n
    rows = top[new] - n
    width = columns.neighbours.shape[1]
    targets = np.concatenate([top[~new], columns.neighbours[rows].ravel()])
    left_out, drops = model.explainer.score_drops(job.cols, job.ratings, targets)
    trained = top.size - rows.size
    mixed = np.empty((drops.shape[0], top.size), dtype=drops.dtype)
    mixed[:, ~new] = drops[:, :trained]
    by_neighbour = drops[:, trained:].reshape(drops.shape[0], rows.size, width)
    mixed[:, new] = np.einsum("pek,ek->pe", by_neighbour, columns.weights[rows])
    reasons = model.explainer.raised(left_out, mixed)
    titles, ids = model.catalog.titles, model.catalog.movie_ids
    for item, positions in zip(items, reasons, strict=True):
        item["because"] = [
            {
                "movie_id": int(ids[job.cols[p]]),
                "title": titles[job.cols[p]],
                "rating": float(job.ratings[p]),
            }
            for p in positions.tolist()
        ]


def predicted_items(
    model: ServingModel, ids: np.ndarray, values: np.ndarray, wanted: list[int]
) -> list[dict[str, Any]]:
    """The model's rating of each wanted movie; the training mean for one it cannot score."""
    cols = model.columns(np.array(wanted, dtype=np.int64))
    known = model.known(ids, values) if len(ids) else None
    rated, ratings = known if known is not None else (NO_IDS, np.zeros(0, np.float32))
    batch = model.scorer.encode([rated], [ratings])
    predicted = model.ratings(batch, [np.where(cols >= 0, cols, 0)])[0]
    fallback = float(model.loaded.model.bias.mean)
    return [
        {
            "movie_id": m,
            "predicted_rating": round(float(p) if c >= 0 else fallback, 4),
            "known_to_model": bool(c >= 0),
        }
        for m, c, p in zip(wanted, cols, predicted, strict=True)
    ]
