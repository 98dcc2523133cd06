"""Serving: the active model, fold-in of a user's current ratings, and the popular fallback.

Read your writes: every request reads the registry's active version in the same database
round trip as the user's ratings and is answered by exactly that version, loading it first
when this process has not yet (one load at a time per process; the others wait for it).
So once an activation has committed, no later request to any process sees the old model.
Loaded models are immutable snapshots kept in a small cache, which makes a rollback to a
recent version instant. The popular list is swapped by one reference assignment.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import Engine, func, select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from app.db import create_session_factory
from app.ml.artifacts import ArtifactError, LoadedModel, load_artifact
from app.ml.serving import FoldInScorer, UserState
from app.models import Movie, MovieGenre, Rating
from app.observability import MODEL_INFO, MODEL_LOADS, RECOMMEND_LATENCY, get_logger
from app.services import registry
from app.services.errors import NotFoundError, UnavailableError

log = get_logger("saerec.recommender")
# One aggregated row instead of one row per rating: the driver then crosses the GIL once,
# not once per rating, which is what throttled the executor threads under load. The last
# column is the registry's active version, read in the same statement (same snapshot).
USER_RATINGS_SQL = {
    "sqlite": "SELECT group_concat(movie_id || ':' || rating),"
    " (SELECT version FROM model_versions WHERE is_active = 1)"
    " FROM ratings WHERE user_id = ?",
    "postgresql": "SELECT array_agg(movie_id), array_agg(rating),"
    " (SELECT version FROM model_versions WHERE is_active)"
    " FROM ratings WHERE user_id = %s",
}
NO_RATINGS = (np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32))


def _row_key(row: tuple | None) -> object:
    """A hashable form of the aggregated row (a string on SQLite, two lists on PostgreSQL)."""
    if row is None or len(row) == 1:
        return row
    return tuple(row[0] or ()), tuple(row[1] or ())


def _parse_user_ratings(row: tuple | None) -> tuple[np.ndarray, np.ndarray]:
    """(movie ids, ratings) from either dialect's aggregated row."""
    if row is None or row[0] is None:
        return NO_RATINGS
    if len(row) == 2:  # PostgreSQL arrays
        return np.asarray(row[0], dtype=np.int64), np.asarray(row[1], dtype=np.float32)
    pairs = np.asarray(row[0].replace(":", ",").split(","), dtype=np.float64).reshape(-1, 2)
    return pairs[:, 0].astype(np.int64), pairs[:, 1].astype(np.float32)


@dataclass(frozen=True)
class Catalog:
    """Titles and genres aligned with an index of movie ids (the model's or popularity's)."""

    movie_ids: np.ndarray
    titles: list[str]
    genres: list[list[str]]
    genre_masks: dict[str, np.ndarray]

    def mask_for(self, genre: str | None) -> np.ndarray | None:
        if genre is None:
            return None
        return self.genre_masks.get(genre.lower(), np.zeros(len(self.movie_ids), dtype=bool))

    def item(self, index: int, score: float, **extra: Any) -> dict[str, Any]:
        return {
            "movie_id": int(self.movie_ids[index]),
            "title": self.titles[index],
            "genres": self.genres[index],
            "score": round(float(score), 6),
            **extra,
        }


def load_catalog(session: Session, movie_ids: np.ndarray) -> Catalog:
    """Fetch titles and genres for exactly these ids, in this order (missing ids keep '')."""
    position = {int(m): i for i, m in enumerate(movie_ids)}
    titles = [""] * len(movie_ids)
    genres: list[list[str]] = [[] for _ in movie_ids]
    masks: dict[str, np.ndarray] = {}
    ids = [int(m) for m in movie_ids]
    for start in range(0, len(ids), 5000):
        chunk = ids[start : start + 5000]
        for movie_id, title in session.execute(
            select(Movie.id, Movie.title).where(Movie.id.in_(chunk))
        ):
            titles[position[movie_id]] = title
        for movie_id, genre in session.execute(
            select(MovieGenre.movie_id, MovieGenre.genre)
            .where(MovieGenre.movie_id.in_(chunk))
            .order_by(MovieGenre.movie_id, MovieGenre.genre)
        ):
            i = position[movie_id]
            genres[i].append(genre)
            masks.setdefault(genre.lower(), np.zeros(len(ids), dtype=bool))[i] = True
    return Catalog(np.asarray(movie_ids, dtype=np.int64), titles, genres, masks)


@dataclass(frozen=True)
class ServingModel:
    version: str
    loaded: LoadedModel
    catalog: Catalog
    scorer: FoldInScorer
    # Answers by exact input (the user's ratings as read, n, genre). The same ratings give
    # the same answer from the same model, so a repeat skips the forward pass but never a
    # fresh read: a new rating changes the key. Per version, so a swap starts empty.
    answers: dict[tuple, list[dict[str, Any]]] = field(default_factory=dict)

    cache_size: int = 20_000

    def remember(self, key: tuple, items: list[dict[str, Any]]) -> None:
        if self.cache_size <= 0:
            return
        if len(self.answers) >= self.cache_size:
            self.answers.clear()  # crude but O(1) and safe under concurrent readers
        self.answers[key] = items

    def encode(
        self, movie_ids: np.ndarray, ratings: np.ndarray
    ) -> tuple[UserState, np.ndarray] | None:
        """The user's state and the model columns they rated; None if the model knows none."""
        cols = self.loaded.movies.index_of(movie_ids)
        known = cols >= 0
        if not known.any():
            return None
        cols, ratings = cols[known], ratings[known]
        return self.scorer.encode(cols, ratings), cols


@dataclass(frozen=True)
class PopularList:
    """Movies by damped mean rating: (sum + m * global_mean) / (count + m).

    Raw counts favour what is merely common, raw means a single 5-star vote; the damped
    mean needs both many and good ratings to rise, with m = POPULAR_PRIOR_COUNT.
    """

    catalog: Catalog
    scores: np.ndarray  # sorted descending, aligned with catalog
    built_at: float = field(default_factory=time.monotonic)


def build_popular_list(session: Session, prior_count: float) -> PopularList:
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
class UserRead:
    """One round trip's answer: the user's ratings (raw row) and the active version."""

    row: tuple | None
    version: str | None
    generation: int  # the recommender's switch count before the read (see _model_for)

    @property
    def key(self) -> object:
        return _row_key(self.row)

    def ratings(self) -> tuple[np.ndarray, np.ndarray]:
        return _parse_user_ratings(self.row)


@dataclass(frozen=True)
class LoadFailure:
    """Why a version did not load, and which file, so it is retried only when it may work."""

    path: str | None
    mtime: float | None
    at: float
    message: str


class Recommender:
    """One per process: holds the serving models and popular list, answers requests."""

    def __init__(
        self,
        engine: Engine,
        model_dir: Path,
        prior_count: float = 20.0,
        threads: int = 2,
        answer_cache_size: int = 20_000,
        cached_versions: int = 3,
        retry_seconds: float = 30.0,
    ) -> None:
        self._answer_cache_size = answer_cache_size
        self.executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="recommend")
        self._model_dir = model_dir
        self._engine = engine
        self._user_ratings_sql = USER_RATINGS_SQL[engine.dialect.name]
        self._sessions = create_session_factory(engine)
        self._prior_count = prior_count
        self._model: ServingModel | None = None  # the newest active version seen, loaded
        self._generation = 0  # bumped on every change of _model
        self._recent: OrderedDict[str, ServingModel] = OrderedDict()
        self._cached_versions = max(1, cached_versions)
        self._retry_seconds = retry_seconds
        self._popular: PopularList | None = None
        self._load_lock = threading.Lock()  # single flight: one model load at a time
        self._swap_lock = threading.Lock()  # never held across I/O
        self.model_error: str | None = None
        self._failed: dict[str, LoadFailure] = {}  # by version

    @property
    def model(self) -> ServingModel | None:
        return self._model

    @property
    def version(self) -> str | None:
        model = self._model
        return model.version if model else None

    # -- following the registry -----------------------------------------------------------
    def refresh_model(self) -> bool:
        """Load the registry's active version if it differs from ours; True on a swap.

        Requests already follow the registry on their own; this poll only preloads, so a
        quiet process has the new model ready before its next request asks for it.
        """
        generation = self._generation
        with self._sessions() as session:
            wanted = registry.active_version_id(session)
        before = self._model
        self._model_for(wanted, generation)
        return self._model is not before

    def _model_for(self, wanted: str | None, generation: int) -> ServingModel | None:
        """The model that answers a read which saw `wanted` as active.

        Always that version when it loads (the read is the request's snapshot of the
        registry), else the previously served model. The process-wide current model moves
        only if no switch happened since the read began: then this read is the newest, and
        a request that read before an activation cannot move the process back.
        """
        current = self._model
        if wanted == (current.version if current else None):
            self.model_error = None  # e.g. rolled back to the model we serve
            return current
        model = self._cached_or_loaded(wanted) if wanted is not None else None
        if wanted is not None and model is None:
            failure = self._failed.get(wanted)
            self.model_error = failure.message if failure else self.model_error
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
        scorer = loaded.model.scorer
        model = ServingModel(version, loaded, catalog, scorer, cache_size=self._answer_cache_size)
        self._failed.pop(version, None)
        self._recent[version] = model
        while len(self._recent) > self._cached_versions:
            self._recent.popitem(last=False)
        MODEL_LOADS.labels("ok").inc()
        log.info("model_loaded", version=version, ms=round((time.perf_counter() - started) * 1e3))
        return model

    def _load_failed(self, version: str, path: str | None, exc: Exception) -> None:
        kind = "" if isinstance(exc, ArtifactError) else f"{type(exc).__name__}: "
        message = f"active model {version} cannot be loaded: {kind}{exc}"
        mtime = _mtime(path) if path else None
        self._failed[version] = LoadFailure(path, mtime, time.monotonic(), message)
        self.model_error = message
        MODEL_LOADS.labels("failed").inc()
        log.error("model_load_failed", version=version, error=f"{type(exc).__name__}: {exc}")

    def _swap(self, model: ServingModel | None) -> None:
        """Make `model` the process's current one (under the swap lock)."""
        old = self._model
        if model is old:
            return
        self._model = model
        self._generation += 1
        self.model_error = None
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

    def refresh_popular(self) -> None:
        with self._sessions() as session:
            self._popular = build_popular_list(session, self._prior_count)

    def popular(self) -> PopularList:
        if self._popular is None:  # only when the build at start-up failed (database away)
            self.refresh_popular()
        assert self._popular is not None
        return self._popular

    # -- answering ------------------------------------------------------------------------
    def read_user(self, user_id: int) -> UserRead:
        """The user's current ratings and the active version, in one round trip."""
        generation = self._generation  # before the read: see _model_for
        row = self._user_ratings_row(user_id)
        if row is None:
            return UserRead(None, None, generation)
        return UserRead(tuple(row[:-1]), row[-1], generation)

    def user_ratings(self, user_id: int) -> tuple[np.ndarray, np.ndarray]:
        """The user's current ratings as (movie ids, ratings)."""
        return self.read_user(user_id).ratings()

    def _user_ratings_row(self, user_id: int) -> tuple | None:
        """The user's current ratings: one indexed lookup on the primary key's prefix.

        The hot path of every request, so it uses a pooled DBAPI connection directly:
        SQLAlchemy's result machinery cost more than the query itself. Driver errors are
        re-raised as SQLAlchemy's, so the API maps them as everywhere else (503).
        """
        dialect = self._engine.dialect
        try:
            raw = self._engine.raw_connection()
        except dialect.loaded_dbapi.Error as exc:  # connecting is not wrapped either
            raise DBAPIError.instance(None, None, exc, dialect.loaded_dbapi.Error) from exc
        cursor = None
        try:
            cursor = raw.cursor()
            cursor.execute(self._user_ratings_sql, (user_id,))
            row = cursor.fetchone()
        except dialect.loaded_dbapi.Error as exc:
            if dialect.is_disconnect(exc, raw.dbapi_connection, cursor):
                raw.invalidate(exc)
            raise DBAPIError.instance(
                self._user_ratings_sql, (user_id,), exc, dialect.loaded_dbapi.Error
            ) from exc
        finally:
            if cursor is not None:
                cursor.close()
            raw.close()  # back to the pool (rolled back on return)
        return row

    def recommend(self, user_id: int, n: int, genre: str | None) -> dict[str, Any]:
        started = time.perf_counter()
        answer = self._recommend(user_id, n, genre)
        RECOMMEND_LATENCY.labels(answer["strategy"]).observe(time.perf_counter() - started)
        return answer

    def _recommend(self, user_id: int, n: int, genre: str | None) -> dict[str, Any]:
        read = self.read_user(user_id)  # always read: fold-in sees every new rating
        model = self._model_for(read.version, read.generation)  # one snapshot per request
        key = (read.key, n, genre)
        if model is not None and (cached := model.answers.get(key)) is not None:
            return _answer(user_id, model.version, "autoencoder", cached)
        movie_ids, ratings = read.ratings()
        encoded = model.encode(movie_ids, ratings) if model is not None and len(movie_ids) else None
        if model is not None and encoded is not None:
            items = self._model_items(model, *encoded, n, genre)
            model.remember(key, items)
            return _answer(user_id, model.version, "autoencoder", items)
        items = self._popular_items(movie_ids, n, genre)
        return _answer(user_id, model.version if model else None, "popular", items)

    def _model_items(
        self,
        model: ServingModel,
        state: UserState,
        rated_cols: np.ndarray,
        n: int,
        genre: str | None,
    ) -> list[dict[str, Any]]:
        scores = model.scorer.scores(state)  # a fresh array: ours to overwrite
        scores[~np.isfinite(scores)] = -np.inf  # a diverged model must not break the JSON
        scores[rated_cols] = -np.inf  # never a movie the user rated
        mask = model.catalog.mask_for(genre)
        if mask is not None:
            scores[~mask] = -np.inf
        top = _top_indices(scores, n)
        predicted = model.scorer.ratings(state, top)
        return [
            model.catalog.item(i, scores[i], predicted_rating=round(float(p), 4))
            for i, p in zip(top, predicted, strict=True)
        ]

    def _popular_items(self, rated: np.ndarray, n: int, genre: str | None) -> list[dict[str, Any]]:
        popular = self.popular()
        allowed = ~np.isin(popular.catalog.movie_ids, rated)
        mask = popular.catalog.mask_for(genre)
        if mask is not None:
            allowed &= mask
        top = np.flatnonzero(allowed)[:n]  # already sorted by score
        return [popular.catalog.item(i, popular.scores[i]) for i in top]

    def predict(self, user_id: int, movie_ids: list[int]) -> dict[str, Any]:
        """Predicted ratings by the version active at the read (same rule as recommend)."""
        read = self.read_user(user_id)
        model = self._model_for(read.version, read.generation)
        if model is None:
            raise UnavailableError(
                self.model_error or "no model is trained yet; POST /admin/retrain"
            )
        wanted = list(dict.fromkeys(movie_ids))
        self._check_movies_exist(wanted)
        ids, values = read.ratings()
        cols = model.loaded.movies.index_of(np.array(wanted, dtype=np.int64))
        encoded = model.encode(ids, values)
        state = encoded[0] if encoded else model.scorer.encode(np.zeros(0), np.zeros(0))
        predicted = model.scorer.ratings(state, np.where(cols >= 0, cols, 0))
        fallback = float(model.loaded.model.bias.mean)
        items = [
            {
                "movie_id": m,
                "predicted_rating": round(float(p) if c >= 0 else fallback, 4),
                "known_to_model": bool(c >= 0),
            }
            for m, c, p in zip(wanted, cols, predicted, strict=True)
        ]
        return {"user_id": user_id, "model_version": model.version, "items": items}

    def _check_movies_exist(self, movie_ids: list[int]) -> None:
        with self._sessions() as session:
            existing = set(session.scalars(select(Movie.id).where(Movie.id.in_(movie_ids))))
        missing = [m for m in movie_ids if m not in existing]
        if missing:
            raise NotFoundError({"message": "unknown movie ids", "movie_ids": missing})


def _mtime(path: str) -> float | None:
    try:
        return Path(path).stat().st_mtime
    except OSError:
        return None


def _top_indices(scores: np.ndarray, n: int) -> np.ndarray:
    """Indices of the n best finite scores, best first (argpartition: O(movies))."""
    fits = len(scores) <= n
    candidates = np.arange(len(scores)) if fits else np.argpartition(-scores, n - 1)[:n]
    candidates = candidates[np.isfinite(scores[candidates])]
    return candidates[np.lexsort((candidates, -scores[candidates]))]


def _answer(user_id: int, version: str | None, strategy: str, items: list) -> dict[str, Any]:
    return {"user_id": user_id, "model_version": version, "strategy": strategy, "items": items}
