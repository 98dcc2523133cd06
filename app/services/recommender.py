"""Serving: the active model, fold-in of a user's current ratings, and the popular fallback.

Read your writes: every request reads the registry's active version in the same database
round trip as the user's ratings and is answered by exactly that version, loading it first
when this process has not yet (one load at a time per process; the others wait for it).
So once an activation has committed, no later request to any process sees the old model.
Loaded models are immutable snapshots kept in a small cache, which makes a rollback to a
recent version instant. The popular list is swapped by one reference assignment.

Four collaborators, composed by `Recommender` (which also owns the inference executor):
`ModelLifecycle` (which version is served: load, keep, swap), `UserReader` (the per-user
read: ratings, dismissals, hidden movies, active version), `Popularity` (the fallback list)
and the ranking functions (`rank_batch`, `predicted_items`); every list that recommends
(model, popular, similar movies) passes through one `Filters`; answers are cached in
`AnswerCache`, outside the immutable models.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import json
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from prometheus_client import Counter, Summary
from sqlalchemy import Engine, Row, Select, func, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import InstrumentedAttribute, Session, sessionmaker

from app.config import ServingSettings
from app.db import create_read_engine, create_session_factory
from app.ml.artifacts import ArtifactError, LoadedModel, load_artifact
from app.ml.explain import Explainer, ItemSimilarity
from app.ml.scoring import FoldInScorer, top_many
from app.models import Movie, MovieGenre, Rating
from app.observability import MODEL_INFO, MODEL_LOADS, RECOMMEND_LATENCY, get_logger
from app.services import registry
from app.services.errors import NotFoundError, UnavailableError

log = get_logger("saerec.recommender")
# The batch's read, one statement (so one snapshot) for all its users: per user one row of
# their ratings and one of their dismissals, aggregated (the driver then crosses the GIL
# once per user, not once per rating), and one row with the hidden movies (a partial index:
# the size of the hidden set) and the registry's active version. Everything that decides
# the answers, in one round trip: a movie hidden a moment ago is already out, and each
# answer comes from the version active at its read. One statement text whatever the batch
# size (a JSON array on SQLite, an array parameter on PostgreSQL), so it is prepared once.
# Both dialects aggregate to comma lists, which numpy parses in one call each (on
# PostgreSQL an array came back as a list of Python ints: the read's client CPU was 45 %
# higher). Ratings travel as integer half stars (1..10, exact: a CHECK allows only half
# stars): SQLite formats integers far faster than floats (the read took ~40 % less time).
# Both aggregates of a user walk the same rows in one order. (Not one packed integer per
# rating: movie ids go up to 2**63 - 1.)
# Row shape: (kind, user_id, movie ids, half stars, active version).
RATINGS, DISMISSALS = 0, 1  # the row kinds (2: the catalog's row)
USERS_STATE_SQL = {
    "sqlite": "SELECT 0, user_id, group_concat(movie_id),"
    " group_concat(CAST(rating * 2 AS INTEGER)), NULL FROM ratings"
    " WHERE user_id IN (SELECT value FROM json_each(?)) GROUP BY user_id"
    " UNION ALL SELECT 1, user_id, group_concat(movie_id), NULL, NULL FROM dismissals"
    " WHERE user_id IN (SELECT value FROM json_each(?)) GROUP BY user_id"
    " UNION ALL SELECT 2, NULL, (SELECT group_concat(id) FROM movies WHERE hidden = 1), NULL,"
    " (SELECT version FROM model_versions WHERE is_active = 1)",
    "postgresql": "SELECT 0, user_id, string_agg(movie_id::text, ','),"
    " string_agg(CAST(rating * 2 AS INTEGER)::text, ','), NULL FROM ratings"
    " WHERE user_id = ANY(%s::bigint[]) GROUP BY user_id"
    " UNION ALL SELECT 1, user_id, string_agg(movie_id::text, ','), NULL, NULL"
    " FROM dismissals WHERE user_id = ANY(%s::bigint[]) GROUP BY user_id"
    " UNION ALL SELECT 2, NULL, (SELECT string_agg(id::text, ',') FROM movies WHERE hidden),"
    " NULL, (SELECT version FROM model_versions WHERE is_active)",
}
NO_IDS = np.zeros(0, dtype=np.int64)
NO_RATINGS = (NO_IDS, np.zeros(0, dtype=np.float32))
# Where an uncached answer's time goes (the benchmark prints it): per stage, the seconds
# spent and the answers they were spent on, both counted once per batch (an observation
# per answer cost more than some stages).
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
# How many requests share a batch's read and forward pass (see `Batcher`): its mean is
# what amortises the per-batch cost, and it grows with the load.
RECOMMEND_BATCH = Summary(
    "saerec_recommend_batch_requests", "Recommendation requests answered per batch"
)


def observe_stage(stage: str, seconds: float, answers: int = 1) -> None:
    """Count ``seconds`` spent on ``answers`` answers (a batch's, or one)."""
    spent, counted = _STAGE[stage]
    spent.inc(seconds)
    counted.inc(answers)


def _parse_ids(column: str | None) -> np.ndarray:
    """Movie ids from an aggregated comma list (None: no row matched)."""
    if column is None:
        return NO_IDS
    return np.fromstring(column, dtype=np.int64, sep=",")


def _parse_user_ratings(row: tuple) -> tuple[np.ndarray, np.ndarray]:
    """(movie ids, ratings) from a user's aggregated comma lists (see USERS_STATE_SQL)."""
    if row[0] is None:
        return NO_RATINGS
    ids = _parse_ids(row[0])
    # Parsed as integers: numpy's float parser lets the GIL go for every number, and each
    # time the event loop took it the inference thread waited its turn back (~600 handoffs
    # per batch of 8 on ml-100k). The integer parser holds it.
    halves = np.fromstring(row[1], dtype=np.int64, sep=",").astype(np.float32)
    halves *= np.float32(0.5)
    return ids, halves


@dataclass(frozen=True)
class Catalog:
    """Titles and genres aligned with an index of movie ids (the model's or popularity's)."""

    movie_ids: np.ndarray
    titles: list[str]
    genres: list[list[str]]
    genre_masks: dict[str, np.ndarray]

    def mask_for(self, genres: tuple[str, ...]) -> np.ndarray | None:
        """Movies in any of ``genres`` (None: no genre filter; an unknown genre: none)."""
        if not genres:
            return None
        masks = [self.genre_masks.get(genre.lower()) for genre in genres]
        found = [mask for mask in masks if mask is not None]
        if not found:
            return np.zeros(len(self.movie_ids), dtype=bool)
        return found[0] if len(found) == 1 else np.logical_or.reduce(found)

    def items(
        self, indices: np.ndarray, scores: np.ndarray, predicted: np.ndarray | None = None
    ) -> list[dict[str, Any]]:
        """The listed movies at catalog ``indices`` with their ``scores`` (and predicted
        ratings): one conversion per column, then plain Python (the hot path's last step)."""
        titles, genres = self.titles, self.genres
        at = indices.tolist()
        ids = self.movie_ids[indices].tolist()
        if predicted is None:
            return [
                {"movie_id": m, "title": titles[i], "genres": genres[i], "score": round(s, 6)}
                for i, m, s in zip(at, ids, scores.tolist(), strict=True)
            ]
        return [
            {
                "movie_id": m,
                "title": titles[i],
                "genres": genres[i],
                "score": round(s, 6),
                "predicted_rating": round(p, 4),
            }
            for i, m, s, p in zip(at, ids, scores.tolist(), predicted.tolist(), strict=True)
        ]


CATALOG_CHUNK = 5000


def load_catalog(session: Session, movie_ids: np.ndarray) -> Catalog:
    """Fetch titles and genres for exactly these ids, in this order (missing ids keep '')."""
    position = {int(m): i for i, m in enumerate(movie_ids)}
    titles = [""] * len(movie_ids)
    genres: list[list[str]] = [[] for _ in movie_ids]
    masks: dict[str, np.ndarray] = {}
    ids = [int(m) for m in movie_ids]
    for movie_id, title in _catalog_rows(session, select(Movie.id, Movie.title), Movie.id, ids):
        if (i := position.get(movie_id)) is not None:
            titles[i] = title
    by_movie = select(MovieGenre.movie_id, MovieGenre.genre).order_by(
        MovieGenre.movie_id, MovieGenre.genre
    )
    for movie_id, genre in _catalog_rows(session, by_movie, MovieGenre.movie_id, ids):
        if (i := position.get(movie_id)) is None:
            continue
        genres[i].append(genre)
        masks.setdefault(genre.lower(), np.zeros(len(ids), dtype=bool))[i] = True
    return Catalog(np.asarray(movie_ids, dtype=np.int64), titles, genres, masks)


def _catalog_rows(
    session: Session, query: Select, key: InstrumentedAttribute[int], ids: list[int]
) -> Iterator[Row]:
    """The query's rows for these ids: by key in chunks while they are few, else the whole
    table in one pass (the popular list wants nearly every movie: at 59,047 movies its
    twelve IN-lists of 5,000 keys per table took seconds)."""
    if len(ids) > CATALOG_CHUNK:
        yield from session.execute(query)
        return
    for start in range(0, len(ids), CATALOG_CHUNK):
        yield from session.execute(query.where(key.in_(ids[start : start + CATALOG_CHUNK])))


def _column_table(ids: np.ndarray) -> np.ndarray | None:
    """Model column by movie id (-1: unknown): one gather instead of a bisection per
    request. None when ids are too sparse for a table (then `IdMap.index_of`)."""
    if ids.size == 0 or int(ids[-1]) > max(64 * ids.size, 1 << 20):
        return None
    table = np.full(int(ids[-1]) + 2, -1, dtype=np.int64)  # the last slot: any id above
    table[ids] = np.arange(ids.size)
    return table


@dataclass(frozen=True, eq=False)
class ServingModel:
    """One loaded version, immutable: everything a request needs is built before it serves
    (the answers it gives are cached by `AnswerCache`, which may mutate)."""

    version: str
    loaded: LoadedModel
    catalog: Catalog
    scorer: FoldInScorer
    column_of: np.ndarray | None

    @classmethod
    def build(cls, version: str, loaded: LoadedModel, catalog: Catalog) -> ServingModel:
        # the validated rating parts are the quality gate's, never served: not kept in memory
        loaded = replace(loaded, model=replace(loaded.model, validated=None))
        scorer = FoldInScorer(loaded.model)
        model = cls(version, loaded, catalog, scorer, _column_table(loaded.movies.ids))
        _ = model.scorer.item_table  # built now, not by the first requests
        return model

    @functools.cached_property
    def explainer(self) -> Explainer:
        """Leave-one-out reasons for a recommendation (`app.ml.explain`), built on first use."""
        return Explainer(self.scorer)

    @functools.cached_property
    def similarity(self) -> ItemSimilarity:
        """Movies alike by the model's item representations (`app.ml.explain`)."""
        return ItemSimilarity(self.scorer)

    def columns(self, movie_ids: np.ndarray) -> np.ndarray:
        table = self.column_of
        if table is None:
            return self.loaded.movies.index_of(movie_ids)
        return table.take(np.minimum(movie_ids, table.size - 1))

    def known(
        self, movie_ids: np.ndarray, ratings: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """The model columns the user rated and those ratings; None if the model knows none."""
        cols = self.columns(movie_ids)
        known = cols >= 0
        if not known.all():  # movies added after training: rare, so checked, not filtered
            if not known.any():
                return None
            cols, ratings = cols[known], ratings[known]
        return cols, ratings


class AnswerCache:
    """Answers by exact input: (version, the user's ratings as read, n, genre).

    The same ratings give the same answer from the same model, so a repeat skips the
    forward pass but never a fresh read: a new rating changes the key, and so does a swap
    to another version.
    """

    def __init__(self, size: int) -> None:
        self._size = size
        self._answers: dict[tuple, list[dict[str, Any]]] = {}

    def get(self, key: tuple) -> list[dict[str, Any]] | None:
        return self._answers.get(key)

    def remember(self, key: tuple, items: list[dict[str, Any]]) -> None:
        if self._size <= 0:
            return
        if len(self._answers) >= self._size:
            self._answers.clear()  # crude but O(1) and safe under concurrent readers
        self._answers[key] = items


@dataclass(frozen=True)
class PopularList:
    """Movies by damped mean rating: (sum + m * global_mean) / (count + m).

    Raw counts favour what is merely common, raw means a single 5-star vote; the damped
    mean needs both many and good ratings to rise, with m = POPULAR_PRIOR_COUNT.
    """

    catalog: Catalog
    scores: np.ndarray  # sorted descending, aligned with catalog


def build_popular_list(session: Session, prior_count: float) -> PopularList:
    if session.get_bind().dialect.name == "postgresql":
        # A background rebuild scans every rating: on one core, leaving the others to the
        # requests (in parallel it took three processes on a 2-core machine for 5 s).
        session.execute(text("SET LOCAL max_parallel_workers_per_gather = 0"))
    rows = session.execute(
        select(Rating.movie_id, func.count(), func.sum(Rating.rating)).group_by(Rating.movie_id)
    ).all()
    if not rows:
        empty = Catalog(np.zeros(0, dtype=np.int64), [], [], {})
        return PopularList(empty, np.zeros(0, dtype=np.float32))
    ids = np.array([r[0] for r in rows], dtype=np.int64)
    counts = np.array([r[1] for r in rows], dtype=np.float64)
    sums = np.array([float(r[2]) for r in rows], dtype=np.float64)
    global_mean = sums.sum() / counts.sum()
    scores = (sums + prior_count * global_mean) / (counts + prior_count)
    order = np.lexsort((ids, -scores))
    return PopularList(load_catalog(session, ids[order]), scores[order].astype(np.float32))


@dataclass(frozen=True)
class RecommendRequest:
    """What a recommendation request asks for; hashable, so it is part of the answer key."""

    user_id: int
    n: int = 10
    genres: tuple[str, ...] = ()
    """any of these genres (none: every genre)"""
    exclude: tuple[int, ...] = ()
    """movie ids the caller does not want listed this time"""
    explain: bool = False


@dataclass(frozen=True)
class Filters:
    """The one filter pipeline of every list that recommends (model, popular, similar):
    never a rated, excluded, dismissed or hidden movie, only the asked genres."""

    blocked: np.ndarray  # movie ids: excluded, dismissed, hidden (rated ones come apart)
    genres: tuple[str, ...]

    @classmethod
    def of(cls, genres: tuple[str, ...], *blocked: np.ndarray | tuple[int, ...]) -> Filters:
        ids = [np.asarray(b, dtype=np.int64) for b in blocked if len(b)]
        return cls(np.concatenate(ids) if ids else NO_IDS, genres)

    def apply_asked(self, scores: np.ndarray, model: ServingModel) -> None:
        """Set -inf (never listed) on a model's score row for what the request and the
        catalog rule out: the blocked movies the model knows, movies outside the genres
        (`filter_scores` adds the rated movies and non-finite scores)."""
        if self.blocked.size:
            cols = model.columns(self.blocked)
            scores[cols[cols >= 0]] = -np.inf
        allowed = model.catalog.mask_for(self.genres)
        if allowed is not None:
            scores[~allowed] = -np.inf

    def allowed(self, catalog: Catalog, rated: np.ndarray) -> np.ndarray:
        """The same rule as a mask over a catalog of movie ids (the popular list)."""
        blocked = np.concatenate([rated, self.blocked]) if self.blocked.size else rated
        allowed = ~np.isin(catalog.movie_ids, blocked)
        mask = catalog.mask_for(self.genres)
        return allowed if mask is None else allowed & mask


@dataclass(frozen=True)
class _Pending:
    """A request waiting for its batch's forward pass."""

    index: int
    request: RecommendRequest
    filters: Filters
    key: tuple
    model: ServingModel
    cols: np.ndarray
    ratings: np.ndarray


def _by_model(pending: list[_Pending]) -> list[tuple[ServingModel, list[_Pending]]]:
    """Pending fold-ins grouped by the model that answers them (one, but for a swap)."""
    groups: dict[int, tuple[ServingModel, list[_Pending]]] = {}
    for job in pending:
        groups.setdefault(id(job.model), (job.model, []))[1].append(job)
    return list(groups.values())


@dataclass(frozen=True)
class UserRead:
    """What a read said about one user: the raw columns of their ratings (movie ids, half
    stars), their dismissals and the hidden movies (None where there were none), and the
    active version."""

    row: tuple
    version: str | None
    generation: int  # the recommender's switch count before the read (see _model_for)

    @property
    def key(self) -> object:
        return self.row  # strings and numbers: hashable as read

    def ratings(self) -> tuple[np.ndarray, np.ndarray]:
        return _parse_user_ratings(self.row)

    def dismissed(self) -> np.ndarray:
        return _parse_ids(self.row[2])

    def hidden(self) -> np.ndarray:
        return _parse_ids(self.row[3])


@dataclass(frozen=True)
class LoadFailure:
    """Why a version did not load, and which file, so it is retried only when it may work."""

    path: str | None
    mtime: float | None
    at: float
    message: str


AnswerMany = Callable[[list[RecommendRequest]], list[dict[str, Any] | Exception]]


MAX_BATCH = 32
"""requests that share one read and forward pass at most"""
MAX_DELAY = 0.0
"""seconds a batch that is not full may wait for more requests (0: it goes when a thread
is free; closed- and open-loop benchmarks measured no gain from waiting on our hosts)"""


class Batcher:
    """Gathers the recommendation requests of one event loop into batches for the executor.

    A batch starts when an executor thread is free and takes every request waiting by then
    (up to ``max_batch``). When traffic is light each request runs alone, a batch of one;
    under load the requests that queued behind a running batch share the next one's
    forward pass. With ``max_delay`` > 0 a batch that is not full waits at most that long
    after its first request for others.
    """

    def __init__(
        self,
        executor: Executor,
        answer_many: AnswerMany,
        slots: int,
        max_batch: int = MAX_BATCH,
        max_delay: float = MAX_DELAY,
    ) -> None:
        self._executor = executor
        self._answer_many = answer_many
        self._loop = asyncio.get_running_loop()
        self._max_batch = max_batch
        self._max_delay = max_delay
        self._slots = slots  # batches in flight: one per executor thread
        self._waiting: list[tuple[RecommendRequest, asyncio.Future]] = []
        self._timer: asyncio.TimerHandle | None = None  # the first waiting one's delay

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    async def recommend(self, request: RecommendRequest) -> dict[str, Any]:
        future = self._loop.create_future()
        self._waiting.append((request, future))
        if self._max_delay > 0 and len(self._waiting) == 1:
            self._timer = self._loop.call_later(self._max_delay, self._delay_over)
        self._launch()
        return await future

    def _delay_over(self) -> None:
        self._timer = None
        self._launch()

    def _launch(self) -> None:
        if self._timer is not None and len(self._waiting) < self._max_batch:
            return  # still gathering
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self._waiting and self._slots > 0:
            batch = self._waiting[: self._max_batch]
            del self._waiting[: self._max_batch]
            self._slots -= 1
            done = self._loop.run_in_executor(
                self._executor, self._answer_many, [request for request, _ in batch]
            )
            done.add_done_callback(functools.partial(self._finish, batch))

    def _finish(
        self, batch: list[tuple[RecommendRequest, asyncio.Future]], done: asyncio.Future
    ) -> None:
        self._slots += 1
        try:
            answers = done.result()
        except Exception as exc:
            answers = [exc] * len(batch)
        for (_, future), answer in zip(batch, answers, strict=True):
            if future.done():  # the client went away
                continue
            if isinstance(answer, BaseException):
                future.set_exception(answer)
            else:
                future.set_result(answer)
        self._launch()


class ModelLifecycle:
    """Which version this process serves: loads it (one load at a time), keeps the recent
    ones for an instant rollback, and swaps the current one by one reference assignment."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        model_dir: Path,
        cached_versions: int,
        retry_seconds: float,
    ) -> None:
        self._sessions = sessions
        self._model_dir = model_dir
        self._model: ServingModel | None = None  # the newest active version seen, loaded
        self._generation = 0  # bumped on every change of _model
        self._recent: OrderedDict[str, ServingModel] = OrderedDict()
        self._cached_versions = max(1, cached_versions)
        self._retry_seconds = retry_seconds
        self._load_lock = threading.Lock()  # single flight: one model load at a time
        self._swap_lock = threading.Lock()  # never held across I/O
        self.error: str | None = None
        self._failed: dict[str, LoadFailure] = {}  # by version

    @property
    def generation(self) -> int:
        """The switch count: read before a request's read (see `model_for`)."""
        return self._generation

    @property
    def version(self) -> str | None:
        model = self._model
        return model.version if model else None

    @property
    def loaded_versions(self) -> tuple[str, ...]:
        """The versions held in memory, the served one among them: oldest first."""
        return tuple(self._recent)

    def refresh(self) -> bool:
        """Load the registry's active version if it differs from ours; True on a swap.

        Requests already follow the registry on their own; this poll only preloads, so a
        quiet process has the new model ready before its next request asks for it. The
        cheap active-version id is checked first: an unchanged registry costs one query.
        """
        generation = self._generation
        with self._sessions() as session:
            wanted = registry.active_version_id(session)
        if wanted == self.version:
            self.error = None  # e.g. rolled back to the model we serve
            return False
        before = self._model
        self.model_for(wanted, generation)
        return self._model is not before

    def preload(self, version: str) -> None:
        """Load `version` among the recent ones without serving it: an activation about to
        commit, so that the swap needs no load (seconds for a 60,000-movie catalog, during
        which every request that read the new version would wait)."""
        self._cached_or_loaded(version)

    def model_for(self, wanted: str | None, generation: int) -> ServingModel | None:
        """The model that answers a read which saw `wanted` as active.

        Always that version when it loads (the read is the request's snapshot of the
        registry), else the previously served model. The process-wide current model moves
        only if no switch happened since the read began: then this read is the newest, and
        a request that read before an activation cannot move the process back.
        """
        current = self._model
        if wanted == (current.version if current else None):
            self.error = None  # e.g. rolled back to the model we serve
            return current
        model = self._cached_or_loaded(wanted) if wanted is not None else None
        if wanted is not None and model is None:
            failure = self._failed.get(wanted)
            self.error = failure.message if failure else self.error
            return self._model  # cannot load it: keep answering with what we have
        with self._swap_lock:
            if self._generation == generation:
                self._swap(model)
        return model

    def _cached_or_loaded(self, version: str) -> ServingModel | None:
        model = self._recent.get(version)
        if model is not None or self._recently_failed(version):
            return model
        with self._load_lock:  # concurrent requests for the same new version wait here
            model = self._recent.get(version)
            if model is None and not self._recently_failed(version):
                model = self._load(version)
            return model

    def _recently_failed(self, version: str) -> bool:
        """A failed version is retried when its file changes or after MODEL_RETRY_SECONDS,
        not on every request: a broken artifact must not cost each request a reload."""
        failed = self._failed.get(version)
        if failed is None:
            return False
        fresh = time.monotonic() - failed.at < self._retry_seconds
        return fresh and (failed.path is None or _mtime(failed.path) == failed.mtime)

    def _load(self, version: str) -> ServingModel | None:
        """Load one version (under the load lock); None, logged and counted, when it cannot."""
        started = time.perf_counter()
        path: str | None = None
        try:
            with self._sessions() as session:
                row = registry.get_version(session, version)
                path = row.artifact_path
                loaded = load_artifact(registry.local_artifact(session, row, self._model_dir))
                catalog = load_catalog(session, loaded.movies.ids)
        except Exception as exc:  # a broken artifact, a pruned row, the database away
            self._load_failed(version, path, exc)
            return None
        model = ServingModel.build(version, loaded, catalog)
        # Everything alive now (modules, the model, the catalog) lives as long as the process
        # serves: out of the collector's sight, a full collection no longer walks it. Those
        # walks (~0.1 s with the GIL held) were the p99 of every route, /healthz included.
        gc.freeze()
        self._failed.pop(version, None)
        self._recent[version] = model
        while len(self._recent) > self._cached_versions:
            self._recent.popitem(last=False)
        MODEL_LOADS.labels("ok").inc()
        log.info(
            "model_loaded",
            version=version,
            ms=round((time.perf_counter() - started) * 1e3),
        )
        return model

    def _load_failed(self, version: str, path: str | None, exc: Exception) -> None:
        kind = "" if isinstance(exc, ArtifactError) else f"{type(exc).__name__}: "
        message = f"active model {version} cannot be loaded: {kind}{exc}"
        mtime = _mtime(path) if path else None
        self._failed[version] = LoadFailure(path, mtime, time.monotonic(), message)
        self.error = message
        MODEL_LOADS.labels("failed").inc()
        log.error("model_load_failed", version=version, error=f"{type(exc).__name__}: {exc}")

    def _swap(self, model: ServingModel | None) -> None:
        """Make `model` the process's current one (under the swap lock)."""
        old = self._model
        if model is old:
            return
        self._model = model
        self._generation += 1
        self.error = None
        if model is not None:  # the current model stays cached, whatever the traffic
            self._recent[model.version] = model
            self._recent.move_to_end(model.version)
        if old is not None:
            MODEL_INFO.labels(old.version).set(0)
        if model is not None:
            MODEL_INFO.labels(model.version).set(1)
        log.info(
            "model_swapped", old=old.version if old else None, new=model.version if model else None
        )


class UserReader:
    """The hot-path read: the ratings and dismissals of a batch of users, the hidden movies
    and the active version, in one statement."""

    def __init__(self, engine: Engine, connections: int = 1) -> None:
        self._engine = create_read_engine(engine, connections)
        self._owns_engine = self._engine is not engine
        self._sql = USERS_STATE_SQL[engine.dialect.name]
        self._sqlite = engine.dialect.name == "sqlite"

    def dispose(self) -> None:
        if self._owns_engine:
            self._engine.dispose()

    def read_many(self, user_ids: Sequence[int], generation: int) -> list[UserRead]:
        """One `UserRead` per id, in order.

        `generation`: the model switch count taken before this read (see `model_for`).
        """
        ratings, dismissed, hidden, version = self._read(user_ids)
        return [
            UserRead(
                (*ratings.get(user, (None, None)), dismissed.get(user), hidden),
                version,
                generation,
            )
            for user in user_ids
        ]

    def read_catalog_state(self, generation: int) -> UserRead:
        """The hidden movies and the active version only (lists about a movie, no user)."""
        _, _, hidden, version = self._read(())
        return UserRead((None, None, None, hidden), version, generation)

    def statement(self, user_ids: Sequence[int]) -> tuple[str, tuple[object, ...]]:
        """The read's SQL and its parameters for these users (the benchmark EXPLAINs it)."""
        wanted: object = json.dumps(list(user_ids)) if self._sqlite else list(user_ids)
        return self._sql, (wanted, wanted)

    def _read(self, user_ids: Sequence[int]) -> tuple[dict, dict, Any, str | None]:
        """(ratings by user, dismissals by user, hidden movies, active version), raw."""
        ratings: dict[int, tuple[Any, Any]] = {}
        dismissed: dict[int, Any] = {}
        hidden, version = None, None
        for kind, user, ids, halves, active in self._rows(*self.statement(user_ids)):
            if kind == RATINGS:
                ratings[user] = (ids, halves)
            elif kind == DISMISSALS:
                dismissed[user] = ids
            else:
                hidden, version = ids, active
        return ratings, dismissed, hidden, version

    def _rows(self, sql: str, params: tuple[object, ...]) -> list[tuple]:
        """The statement's rows: indexed lookups on the primary keys' user prefix.

        The hot path of every request, so it uses a pooled DBAPI connection directly:
        SQLAlchemy's result machinery cost more than the query itself. Driver errors are
        re-raised as SQLAlchemy's, so the API maps them as everywhere else (503). The
        pool does not ping (`create_read_engine`): a connection the server dropped while
        idle is discarded and the read, which changes nothing, is tried once more.
        """
        try:
            return self._fetch(sql, params)
        except DBAPIError as exc:
            if not exc.connection_invalidated:
                raise
            return self._fetch(sql, params)

    def _fetch(self, sql: str, params: tuple[object, ...]) -> list[tuple]:
        dialect = self._engine.dialect
        try:
            raw = self._engine.raw_connection()
        except dialect.loaded_dbapi.Error as exc:  # connecting is not wrapped either
            raise DBAPIError.instance(None, None, exc, dialect.loaded_dbapi.Error) from exc
        cursor = None
        try:
            cursor = raw.cursor()
            cursor.execute(sql, params)
            rows = list(cursor.fetchall())
        except dialect.loaded_dbapi.Error as exc:
            dropped = dialect.is_disconnect(exc, raw.dbapi_connection, cursor)
            if dropped:
                raw.invalidate(exc)
            raise DBAPIError.instance(
                sql, params, exc, dialect.loaded_dbapi.Error, connection_invalidated=dropped
            ) from exc
        finally:
            if cursor is not None:
                cursor.close()
            raw.close()  # back to the pool (autocommit on PostgreSQL: nothing to roll back)
        return rows


class Popularity:
    """The popular fallback: built at start-up and on a timer, swapped by one assignment.

    A rebuild aggregates every rating: ~50 ms on ml-100k, 5-7 s on 25M ratings in
    PostgreSQL, during which the requests have a core less (every 30 s, their p99 went
    from 60 to 117-167 ms). So rebuilds are spaced to take at most `BUSY_SHARE` of the
    time: ``refresh_seconds`` apart, or further when they are slow (~10 min at 25M).
    """

    BUSY_SHARE = 0.01

    def __init__(
        self,
        sessions: sessionmaker[Session],
        prior_count: float,
        refresh_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._sessions = sessions
        self._clock = clock
        self._prior_count = prior_count
        self._refresh_seconds = refresh_seconds
        self._build_seconds = 0.0
        self._built_at = 0.0  # the clock at the end of the last rebuild
        self._popular: PopularList | None = None

    @property
    def interval(self) -> float:
        """Seconds from one rebuild to the next."""
        return max(self._refresh_seconds, self._build_seconds / self.BUSY_SHARE)

    def refresh(self) -> None:
        started = self._clock()
        with self._sessions() as session:
            popular = build_popular_list(session, self._prior_count)
        self._built_at = self._clock()
        self._build_seconds = self._built_at - started
        self._popular = popular

    def refresh_if_due(self) -> bool:
        """Rebuild when the list is older than `interval`; whether it did."""
        if self._popular is not None and self._clock() - self._built_at < self.interval:
            return False
        self.refresh()
        return True

    def current(self) -> PopularList:
        if self._popular is None:  # only when the build at start-up failed (database away)
            self.refresh()
        assert self._popular is not None
        return self._popular

    def items(self, rated: np.ndarray, n: int, filters: Filters) -> list[dict[str, Any]]:
        """The n most popular movies the filters allow (the user's rated ones left out)."""
        popular = self.current()
        top = np.flatnonzero(filters.allowed(popular.catalog, rated))[:n]  # sorted by score
        return popular.catalog.items(top, popular.scores[top])


class Recommender:
    """One per process: answers requests by composing the served model (`ModelLifecycle`),
    the user's read (`UserReader`), the popular fallback (`Popularity`), the answer cache
    and the ranking functions below. Owns the inference executor, behind async methods."""

    def __init__(self, engine: Engine, serving: ServingSettings) -> None:
        """Every figure comes from `Settings.serving` (app/config.py, the one home of
        defaults)."""
        threads = self._threads = serving.threads
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="recommend")
        self._batcher: Batcher | None = None
        self._sessions = create_session_factory(engine)
        self.models = ModelLifecycle(
            self._sessions,
            serving.model_dir,
            serving.model_cache_versions,
            serving.model_retry_seconds,
        )
        self.reader = UserReader(engine, serving.threads)
        self.popularity = Popularity(
            self._sessions, serving.popular_prior_count, serving.popular_refresh_seconds
        )
        self.answers = AnswerCache(serving.answer_cache_size)

    # -- the async face: inference runs on the executor, never on the event loop ----------
    async def recommendations(self, request: RecommendRequest) -> dict[str, Any]:
        """Requests that arrive together share one forward pass (see `Batcher`)."""
        return await self._loop_batcher().recommend(request)

    async def similar_movies(
        self, movie_id: int, n: int, genres: tuple[str, ...]
    ) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.similar, movie_id, n, genres)

    async def predictions(self, user_id: int, movie_ids: list[int]) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.predict, user_id, movie_ids)

    def shutdown(self) -> None:
        """Stop the executor: queued work is dropped, running work is not waited for."""
        self._executor.shutdown(wait=False, cancel_futures=True)
        self.reader.dispose()

    def _loop_batcher(self) -> Batcher:
        """The batcher of the running event loop (one loop per process in production)."""
        batcher = self._batcher
        if batcher is None or batcher.loop is not asyncio.get_running_loop():
            batcher = self._batcher = Batcher(self._executor, self.recommend_many, self._threads)
        return batcher

    # -- following the registry and the ratings -------------------------------------------
    @property
    def version(self) -> str | None:
        return self.models.version

    @property
    def model_error(self) -> str | None:
        return self.models.error

    def refresh_model(self) -> bool:
        """Preload the registry's active version (see `ModelLifecycle.refresh`)."""
        return self.models.refresh()

    def preload_model(self, version: str) -> None:
        """Load `version` without serving it yet (see `ModelLifecycle.preload`)."""
        self.models.preload(version)

    def refresh_popular(self) -> None:
        self.popularity.refresh()

    def refresh_popular_if_due(self) -> bool:
        """The timer's rebuild (see `Popularity.interval`)."""
        return self.popularity.refresh_if_due()

    def popular(self) -> PopularList:
        return self.popularity.current()

    # -- answering ------------------------------------------------------------------------
    def read_users(self, user_ids: Sequence[int]) -> list[UserRead]:
        """The users' current ratings and the active version, in one round trip."""
        return self.reader.read_many(user_ids, self.models.generation)  # generation: first

    def read_user(self, user_id: int) -> UserRead:
        return self.read_users([user_id])[0]

    def user_ratings(self, user_id: int) -> tuple[np.ndarray, np.ndarray]:
        """The user's current ratings as (movie ids, ratings)."""
        return self.read_user(user_id).ratings()

    def recommend(self, request: RecommendRequest) -> dict[str, Any]:
        answer = self.recommend_many([request])[0]
        if isinstance(answer, BaseException):
            raise answer
        return answer

    def recommend_many(self, requests: list[RecommendRequest]) -> list[dict[str, Any] | Exception]:
        """Answers for the requests, in order; a request that failed gets its exception
        instead, so one bad read does not fail the others.

        One read for the whole batch, made after every request in it arrived, so read your
        writes holds per request as for one: each is answered from its user's ratings and
        the version active at that read. The forward passes of the cache misses then run as
        one batch per model: one matrix product over the catalog instead of one per user,
        and the per-call overhead of each numpy step paid once per batch.
        """
        started = time.perf_counter()
        RECOMMEND_BATCH.observe(len(requests))
        try:
            reads = self.read_users([request.user_id for request in requests])
        except Exception as exc:  # e.g. the database away: every request's 503
            return [exc] * len(requests)
        answers: list[dict[str, Any] | Exception] = []
        pending: list[_Pending] = []
        for index, (request, read) in enumerate(zip(requests, reads, strict=True)):
            answer: dict[str, Any] | Exception
            try:
                answer = self._start(request, read, index, pending)
            except Exception as exc:  # e.g. a model that fails to load: this request's
                answer = exc
            answers.append(answer)
        read_at = time.perf_counter()
        for model, group in _by_model(pending):
            for job, items in zip(group, rank_batch(model, group, read_at), strict=True):
                self.answers.remember(job.key, items)
                answers[job.index] = _answer(
                    job.request.user_id, model.version, "autoencoder", items
                )
        if pending:
            share = len(pending) / len(requests)  # the read served the cache hits too
            observe_stage("db_read", (read_at - started) * share, len(pending))
        elapsed = time.perf_counter() - started
        for answer in answers:
            if isinstance(answer, dict):
                RECOMMEND_LATENCY.labels(answer["strategy"]).observe(elapsed)
        return answers

    def _start(
        self, request: RecommendRequest, read: UserRead, index: int, pending: list[_Pending]
    ) -> dict[str, Any]:
        """Answer one read from the cache or the popular list, or queue a fold-in
        (the placeholder answer is replaced once the batch has run).

        The answer key is everything the answer depends on: the version, the row as read
        (ratings, dismissals, hidden movies) and the request itself (n, genres, exclude,
        explain), so a new dismissal or a movie hidden a moment ago is a new key.
        """
        user_id = request.user_id
        model = self.models.model_for(read.version, read.generation)  # one per request
        key = (model.version if model else None, read.key, request)
        if model is not None and (cached := self.answers.get(key)) is not None:
            return _answer(user_id, model.version, "autoencoder", cached)
        movie_ids, ratings = read.ratings()
        filters = Filters.of(request.genres, request.exclude, read.dismissed(), read.hidden())
        known = model.known(movie_ids, ratings) if model is not None and len(movie_ids) else None
        if model is not None and known is not None:
            pending.append(_Pending(index, request, filters, key, model, *known))
            return {}
        items = self.popularity.items(movie_ids, request.n, filters)
        if request.explain:  # nothing of the user's raised a popular movie's score
            items = [{**item, "because": []} for item in items]
        return _answer(user_id, model.version if model else None, "popular", items)

    def similar(self, movie_id: int, n: int, genres: tuple[str, ...]) -> dict[str, Any]:
        """The movies the served model finds most alike (never the movie itself, never a
        hidden one, only the asked genres); for a movie the model does not know, the
        popular movies within its own genres. 404 for an unknown movie."""
        movie_genres = self._movie_genres(movie_id)
        read = self.reader.read_catalog_state(self.models.generation)
        model = self.models.model_for(read.version, read.generation)
        filters = Filters.of(genres, (movie_id,), read.hidden())
        col = int(model.columns(np.array([movie_id]))[0]) if model is not None else -1
        if model is None or col < 0:
            within = filters if genres else Filters(filters.blocked, tuple(movie_genres))
            items = self.popularity.items(NO_IDS, n, within)
            return _similar_answer(movie_id, model, "popular", items)
        scores = model.similarity.scores(col)[None, :]
        filter_scores(scores, model, [np.array([col])], [filters])
        top, exact = top_many(scores, [n])[0]
        items = model.catalog.items(top, exact)
        return _similar_answer(movie_id, model, "autoencoder", items)

    def _movie_genres(self, movie_id: int) -> list[str]:
        with self._sessions() as session:
            movie = session.get(Movie, movie_id)
            if movie is None:
                raise NotFoundError(f"movie {movie_id} not found")
            return movie.genre_names

    def predict(self, user_id: int, movie_ids: list[int]) -> dict[str, Any]:
        """Predicted ratings by the version active at the read (same rule as recommend)."""
        read = self.read_user(user_id)
        model = self.models.model_for(read.version, read.generation)
        if model is None:
            raise UnavailableError(
                self.model_error or "no model is trained yet; POST /admin/retrain"
            )
        wanted = list(dict.fromkeys(movie_ids))
        self._check_movies_exist(wanted)
        items = predicted_items(model, *read.ratings(), wanted)
        return {"user_id": user_id, "model_version": model.version, "items": items}

    def _check_movies_exist(self, movie_ids: list[int]) -> None:
        with self._sessions() as session:
            existing = set(session.scalars(select(Movie.id).where(Movie.id.in_(movie_ids))))
        missing = [m for m in movie_ids if m not in existing]
        if missing:
            raise NotFoundError({"message": "unknown movie ids", "movie_ids": missing})


def _similar_answer(
    movie_id: int, model: ServingModel | None, strategy: str, items: list[dict[str, Any]]
) -> dict[str, Any]:
    version = model.version if model else None
    return {"movie_id": movie_id, "model_version": version, "strategy": strategy, "items": items}


# -- ranking: pure functions of a model and the users' ratings ----------------------------
def rank_batch(
    model: ServingModel, jobs: list[_Pending], since: float
) -> list[list[dict[str, Any]]]:
    """The top n of each encoded user; each stage's time is counted (see STAGES)."""
    batch = model.scorer.encode([j.cols for j in jobs], [j.ratings for j in jobs])
    scores = model.scorer.scores(batch)  # a fresh array: ours to overwrite
    folded = time.perf_counter()
    filter_scores(scores, model, [j.cols for j in jobs], [j.filters for j in jobs])
    filtered = time.perf_counter()
    tops = top_many(scores, [job.request.n for job in jobs])
    predicted = model.scorer.ratings(batch, [top for top, _ in tops])
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


def filter_scores(
    scores: np.ndarray, model: ServingModel, rated: list[np.ndarray], filters: list[Filters]
) -> None:
    """Set -inf (never listed) on each row of a model's scores: non-finite scores, that
    row's ``rated`` columns, then its `Filters.apply_asked`. The common steps run once for
    the whole batch; one sum checks finiteness, the full scan runs only if it fails."""
    if not np.isfinite(scores.sum()):  # a diverged model must not break the JSON
        scores[~np.isfinite(scores)] = -np.inf
    rows = np.repeat(np.arange(len(rated)), [cols.size for cols in rated])
    scores[rows, np.concatenate(rated)] = -np.inf
    for row, row_filters in zip(scores, filters, strict=True):
        row_filters.apply_asked(row, model)


def _add_reasons(
    model: ServingModel,
    job: _Pending,
    top: np.ndarray,
    items: list[dict[str, Any]],
) -> None:
    """Each item's "because": the user's ratings that raised its score most (exactly, by
    leaving each out; see `app.ml.explain`)."""
    reasons = model.explainer.because(job.cols, job.ratings, top)
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
    """The model's rating for each wanted movie; the mean bias for movies it does not know."""
    cols = model.loaded.movies.index_of(np.array(wanted, dtype=np.int64))
    known = model.known(ids, values) if len(ids) else None
    rated, ratings = known if known is not None else (NO_IDS, np.zeros(0, np.float32))
    batch = model.scorer.encode([rated], [ratings])
    predicted = model.scorer.ratings(batch, [np.where(cols >= 0, cols, 0)])[0]
    fallback = float(model.loaded.model.bias.mean)
    return [
        {
            "movie_id": m,
            "predicted_rating": round(float(p) if c >= 0 else fallback, 4),
            "known_to_model": bool(c >= 0),
        }
        for m, c, p in zip(wanted, cols, predicted, strict=True)
    ]


def _mtime(path: str) -> float | None:
    try:
        return Path(path).stat().st_mtime
    except OSError:
        return None


def _answer(user_id: int, version: str | None, strategy: str, items: list) -> dict[str, Any]:
    return {"user_id": user_id, "model_version": version, "strategy": strategy, "items": items}
