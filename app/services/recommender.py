"""Serving: the active model, fold-in of a user's current ratings, and the popular fallback.

The active model lives in one attribute that is replaced, never mutated: a request reads
it once and uses that snapshot to the end, so a swap can neither fail a request nor mix
two models. The popular list is swapped the same way.
"""

from __future__ import annotations

import threading
import time
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
from app.observability import MODEL_INFO, RECOMMEND_LATENCY, get_logger
from app.services import registry
from app.services.errors import NotFoundError, UnavailableError

log = get_logger("saerec.recommender")
# One aggregated row instead of one row per rating: the driver then crosses the GIL once,
# not once per rating, which is what throttled the executor threads under load.
USER_RATINGS_SQL = {
    "sqlite": "SELECT group_concat(movie_id || ':' || rating) FROM ratings WHERE user_id = ?",
    "postgresql": "SELECT array_agg(movie_id), array_agg(rating) FROM ratings WHERE user_id = %s",
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


class Recommender:
    """One per process: holds the serving model and popular list, answers requests."""

    def __init__(
        self,
        engine: Engine,
        model_dir: Path,
        prior_count: float = 20.0,
        threads: int = 2,
        answer_cache_size: int = 20_000,
    ) -> None:
        self._answer_cache_size = answer_cache_size
        self.executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="recommend")
        self._model_dir = model_dir
        self._engine = engine
        self._user_ratings_sql = USER_RATINGS_SQL[engine.dialect.name]
        self._sessions = create_session_factory(engine)
        self._prior_count = prior_count
        self._model: ServingModel | None = None
        self._popular: PopularList | None = None
        self._lock = threading.Lock()  # serialises reloads, never requests
        self.model_error: str | None = None
        self._failed: tuple[str, float | None] | None = None

    @property
    def model(self) -> ServingModel | None:
        return self._model

    @property
    def version(self) -> str | None:
        model = self._model
        return model.version if model else None

    # -- keeping state current ------------------------------------------------------------
    def refresh_model(self) -> bool:
        """Load the registry's active version if it differs from ours; True on a swap."""
        with self._lock, self._sessions() as session:
            row = registry.active_version(session)
            wanted = row.version if row else None
            if wanted == self.version:
                self.model_error, self._failed = None, None  # e.g. rolled back to ours
                return False
            if row is None:
                self._swap(None)
                return True
            if self._failed == (wanted, _mtime(row.artifact_path)):
                return False  # same broken file as last time: do not reload it every poll
            try:
                loaded = load_artifact(registry.local_artifact(session, row, self._model_dir))
            except ArtifactError as exc:
                self._failed = (wanted, _mtime(row.artifact_path))
                self.model_error = f"active model {row.version} cannot be loaded: {exc}"
                log.error("model_load_failed", version=row.version, error=str(exc))
                return False
            catalog = load_catalog(session, loaded.movies.ids)
        scorer = loaded.model.scorer
        self._swap(
            ServingModel(row.version, loaded, catalog, scorer, cache_size=self._answer_cache_size)
        )
        return True

    def _swap(self, model: ServingModel | None) -> None:
        old = self._model
        self._model = model  # the single reference assignment requests observe
        self.model_error = None
        self._failed = None
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
        if self._popular is None:
            self.refresh_popular()
        assert self._popular is not None
        return self._popular

    # -- answering ------------------------------------------------------------------------
    def user_ratings(self, user_id: int) -> tuple[np.ndarray, np.ndarray]:
        """The user's current ratings as (movie ids, ratings)."""
        return _parse_user_ratings(self._user_ratings_row(user_id))

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
        model = self._model  # one snapshot for the whole request
        row = self._user_ratings_row(user_id)  # always read: fold-in sees every new rating
        key = (_row_key(row), n, genre)
        cached = model.answers.get(key) if model is not None else None
        if cached is not None:
            return _answer(user_id, model.version, "autoencoder", cached)
        movie_ids, ratings = _parse_user_ratings(row)
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

    def predict(self, session: Session, user_id: int, movie_ids: list[int]) -> dict[str, Any]:
        model = self._model
        if model is None:
            raise UnavailableError(
                self.model_error or "no model is trained yet; POST /admin/retrain"
            )
        wanted = list(dict.fromkeys(movie_ids))
        existing = set(session.scalars(select(Movie.id).where(Movie.id.in_(wanted))))
        missing = [m for m in wanted if m not in existing]
        if missing:
            raise NotFoundError({"message": "unknown movie ids", "movie_ids": missing})
        ids, values = self.user_ratings(user_id)
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
