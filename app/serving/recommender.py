"""Serving: the active model, fold-in of a user's current ratings, and the popular fallback.

`Recommender` composes `ModelLifecycle` (which version serves), `UserReader` (the per-user
read, with the active version: read your writes), `Popularity`, the ranking functions and
`AnswerCache`, and owns the inference executor.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from sqlalchemy import Engine, select

from app.config import Settings
from app.db import create_session_factory
from app.ml.scoring import top_many
from app.models import Movie
from app.observability import RECOMMEND_LATENCY, get_logger
from app.services.errors import NotFoundError, UnavailableError
from app.serving.batcher import Batcher
from app.serving.cache import AnswerCache
from app.serving.catalog import NO_IDS
from app.serving.filters import Filters, filter_scores
from app.serving.impressions import ImpressionRecorder
from app.serving.lifecycle import ModelLifecycle, ServingModel
from app.serving.popular import PRIOR_COUNT, REFRESH_SECONDS, Popularity
from app.serving.ranking import (
    RECOMMEND_BATCH,
    Pending,
    RecommendRequest,
    by_model,
    observe_stage,
    predicted_items,
    rank_batch,
)
from app.serving.reader import RunningExperiment, UserRead, UserReader

log = get_logger("saerec.recommender")


INFERENCE_THREADS = 1
"""threads computing answers at once: a second one only fought the event loop for the GIL."""
TORCH_THREADS = 1
"""torch/BLAS threads inside one inference: the workers already use the cores."""


class Recommender:
    """One per process; inference runs on its executor, behind async methods."""

    def __init__(self, engine: Engine, settings: Settings) -> None:
        self._executor = ThreadPoolExecutor(INFERENCE_THREADS, thread_name_prefix="recommend")
        self._batcher: Batcher | None = None
        self._sessions = create_session_factory(engine)
        self.models = ModelLifecycle(self._sessions, settings.model_dir)
        self.reader = UserReader(engine, INFERENCE_THREADS)
        self.popularity = Popularity(self._sessions, PRIOR_COUNT, REFRESH_SECONDS)
        self.answers = AnswerCache(settings.answer_cache_size)
        self.impressions = ImpressionRecorder(
            engine,
            settings.impression_queue_size,
            settings.record_impressions,
            settings.impression_retention_days,
        )

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
        """Drop queued inference (running work is not waited for), write queued impressions."""
        self._executor.shutdown(wait=False, cancel_futures=True)
        self.impressions.close()
        self.reader.dispose()

    def _loop_batcher(self) -> Batcher:
        """The batcher of the running event loop (one loop per process in production)."""
        batcher = self._batcher
        if batcher is None or batcher.loop is not asyncio.get_running_loop():
            batcher = Batcher(self._executor, self.recommend_many, INFERENCE_THREADS)
            self._batcher = batcher
        return batcher

    @property
    def version(self) -> str | None:
        return self.models.version

    @property
    def model_error(self) -> str | None:
        return self.models.error

    def refresh_model(self) -> bool:
        return self.models.refresh()

    def refresh_new_movies(self) -> bool:
        return self.models.refresh_new_movies()

    def read_users(self, user_ids: Sequence[int | None]) -> list[UserRead]:
        """The users' current ratings and the active version, in one round trip."""
        return self.reader.read_many(user_ids, self.models.generation)  # generation: first

    def read_user(self, user_id: int) -> UserRead:
        return self.read_users([user_id])[0]

    def user_ratings(self, user_id: int) -> tuple[np.ndarray, np.ndarray]:
        return self.read_user(user_id).ratings()

    def recommend(self, request: RecommendRequest) -> dict[str, Any]:
        answer = self.recommend_many([request])[0]
        if isinstance(answer, BaseException):
            raise answer
        return answer

    def recommend_many(self, requests: list[RecommendRequest]) -> list[dict[str, Any] | Exception]:
        """Answers in order, a failed request's exception in its place. One read after every
        request arrived (read your writes holds per request), then one forward pass per model
        for the cache misses: one product over the catalog instead of one per user."""
        started = time.perf_counter()
        RECOMMEND_BATCH.observe(len(requests))
        try:
            reads = self.read_users([request.user_id for request in requests])
        except Exception as exc:  # e.g. the database away: every request's 503
            return [exc] * len(requests)
        answers: list[dict[str, Any] | Exception] = []
        pending: list[Pending] = []
        arms = [self._arm(request, read) for request, read in zip(requests, reads, strict=True)]
        for index, (request, read) in enumerate(zip(requests, reads, strict=True)):
            answer: dict[str, Any] | Exception
            try:
                answer = self._start(request, read, index, pending, arms[index])
            except Exception as exc:  # e.g. a model that fails to load: this request's
                answer = exc
            answers.append(answer)
        read_at = time.perf_counter()
        for model, group in by_model(pending):
            for job, items in zip(group, rank_batch(model, group, read_at), strict=True):
                self.answers.remember(job.key, items)
                answers[job.index] = _answer(
                    job.request.user_id, model.version, "autoencoder", items
                )
        if pending:
            share = len(pending) / len(requests)  # the read served the cache hits too
            observe_stage("db_read", (read_at - started) * share, len(pending))
        elapsed = time.perf_counter() - started
        for index, answer in enumerate(answers):
            if isinstance(answer, dict):
                RECOMMEND_LATENCY.labels(answer["strategy"]).observe(elapsed)
                answers[index] = self._shown(answer, reads[index].experiment, arms[index])
        return answers

    @staticmethod
    def _arm(request: RecommendRequest, read: UserRead) -> str | None:
        """The experiment arm of a stored user (None: no experiment, or a session)."""
        if read.experiment is None or request.user_id is None:
            return None
        return read.experiment.arm_of(request.user_id)

    def _shown(
        self, answer: dict[str, Any], experiment: RunningExperiment | None, drawn: str | None
    ) -> dict[str, Any]:
        """A new recommendation_id and its impression, outside the cache (a cached answer is
        a new impression). The arm is the answering version's: a candidate that could not
        load answered as the control, and is left out of both arms."""
        arm = None
        if experiment is not None and drawn is not None:
            arm = "candidate" if answer["model_version"] == experiment.candidate else "control"
            if arm == "control" and drawn == "candidate":
                arm = None
        rid = self.impressions.record(
            answer["user_id"],
            answer["model_version"],
            answer["strategy"],
            [item["movie_id"] for item in answer["items"]],
            experiment.id if experiment is not None and arm else None,
            arm,
        )
        return {"recommendation_id": rid, **answer}

    def _start(
        self,
        request: RecommendRequest,
        read: UserRead,
        index: int,
        pending: list[Pending],
        arm: str | None = None,
    ) -> dict[str, Any]:
        """Answer from the cache or the popular list, or queue a fold-in (its placeholder is
        replaced after the batch). The key is all the answer depends on: the model, the row
        as read (ratings, dismissals, hidden movies) and the request."""
        user_id = request.user_id
        model = self.models.model_for(read.version, read.generation)  # one per request
        if arm == "candidate" and read.experiment is not None:
            model = self.models.arm_model(read.experiment.candidate) or model
        key = (model.answer_key if model else None, read.key, request)
        if model is not None and (cached := self.answers.get(key)) is not None:
            return _answer(user_id, model.version, "autoencoder", cached)
        if request.session is None:
            movie_ids, ratings = read.ratings()
        else:  # a session's ratings are its row: the same fold-in, filters and batch
            movie_ids, ratings = request.session.arrays
            self._check_session_movies(movie_ids, model)
        filters = Filters.of(request.genres, request.exclude, read.dismissed(), read.hidden())
        known = model.known(movie_ids, ratings) if model is not None and len(movie_ids) else None
        if model is not None and known is not None:
            rated = model.rated(movie_ids)
            pending.append(Pending(index, request, filters, key, model, rated, *known))
            return {}
        items = self.popularity.items(movie_ids, request.n, filters)
        if request.explain:  # nothing of the user's raised a popular movie's score
            items = [{**item, "because": []} for item in items]
        return _answer(user_id, model.version if model else None, "popular", items)

    def _check_session_movies(self, movie_ids: np.ndarray, model: ServingModel | None) -> None:
        """404 listing a session's movies the catalog lacks. Movies are never deleted, so only
        those neither the model nor the popular list knows cost a query."""
        unknown = movie_ids if model is None else movie_ids[model.columns(movie_ids) < 0]
        if unknown.size:
            unknown = unknown[~np.isin(unknown, self.popularity.current().catalog.movie_ids)]
        if unknown.size:
            self._check_movies_exist(unknown.tolist())

    def similar(self, movie_id: int, n: int, genres: tuple[str, ...]) -> dict[str, Any]:
        """The movies the served model finds most alike (`ServingModel.similar_scores`), never
        the movie itself or a hidden one; for one the model does not know, the popular movies
        within its genres. 404 for an unknown movie."""
        movie_genres = self._movie_genres(movie_id)
        read = self.reader.read_catalog_state(self.models.generation)
        model = self.models.model_for(read.version, read.generation)
        filters = Filters.of(genres, (movie_id,), read.hidden())
        col = int(model.columns(np.array([movie_id]))[0]) if model is not None else -1
        if model is None or col < 0 or not model.ties(col):
            within = filters if genres else Filters(filters.blocked, tuple(movie_genres))
            items = self.popularity.items(NO_IDS, n, within)
            return self._similar_shown(_similar_answer(movie_id, model, "popular", items))
        scores = model.similar_scores(col)[None, :]
        filter_scores(scores, model, [np.array([col])], [filters])
        top, exact = top_many(scores, [n])[0]
        items = model.catalog.items(top, exact)
        return self._similar_shown(_similar_answer(movie_id, model, "autoencoder", items))

    def _similar_shown(self, answer: dict[str, Any]) -> dict[str, Any]:
        """A similar-movies list is an impression too: no user, the control's version."""
        movie_ids = [item["movie_id"] for item in answer["items"]]
        rid = self.impressions.record(None, answer["model_version"], answer["strategy"], movie_ids)
        return {"recommendation_id": rid, **answer}

    def _movie_genres(self, movie_id: int) -> list[str]:
        with self._sessions() as session:
            movie = session.get(Movie, movie_id)
            if movie is None:
                raise NotFoundError(f"movie {movie_id} not found")
            return movie.genre_names

    def predict(self, user_id: int, movie_ids: list[int]) -> dict[str, Any]:
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


def _answer(user_id: int | None, version: str | None, strategy: str, items: list) -> dict[str, Any]:
    return {"user_id": user_id, "model_version": version, "strategy": strategy, "items": items}
