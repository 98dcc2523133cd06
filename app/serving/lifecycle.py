"""Which model version a process serves: load, keep the recent ones, swap.

Read your writes: each request is answered by the version its own read saw active, loaded
first if need be (one load at a time per process). Loaded models are immutable snapshots;
the recent ones are kept, so a rollback is instant.
"""

from __future__ import annotations

import functools
import gc
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from sqlalchemy.orm import Session, sessionmaker

from app.ml.artifacts import ArtifactError, ArtifactStore, LoadedModel, load_artifact
from app.ml.explain import Explainer, ItemSimilarity
from app.ml.scoring import FoldInScorer, UserBatch
from app.observability import MODEL_INFO, MODEL_LOADS, get_logger
from app.services import registry
from app.serving.catalog import Catalog, load_catalog
from app.serving.new_movies import NewMovies, read_new_movies

log = get_logger("saerec.recommender")


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
    """One loaded version, immutable, built before it serves. Its scores cover the trained
    movies (columns 0..n-1) then ``new``'s (`app.serving.new_movies`); a refresh of those is
    a new `ServingModel` of the same version, swapped in by one assignment."""

    version: str
    loaded: LoadedModel
    catalog: Catalog
    """the trained movies' titles and genres, then the new movies'"""
    scorer: FoldInScorer
    column_of: np.ndarray | None
    new: NewMovies = field(default_factory=NewMovies.empty)

    @classmethod
    def build(cls, version: str, loaded: LoadedModel, catalog: Catalog) -> ServingModel:
        # the validated rating parts are the quality gate's, never served: not kept in memory
        loaded = replace(loaded, model=replace(loaded.model, validated=None))
        scorer = FoldInScorer(loaded.model)
        model = cls(version, loaded, catalog, scorer, _column_table(loaded.movies.ids))
        _ = model.scorer.item_table  # built now, not by the first requests
        _ = model.scorer.rank_head_t
        return model

    def with_new_movies(self, new: NewMovies) -> ServingModel:
        """The same version serving ``new``, sharing the explainer and similarity built."""
        trained = self.catalog
        if len(self.new):
            n = self.n_trained
            trained = Catalog(
                trained.movie_ids[:n],
                trained.titles[:n],
                trained.genres[:n],
                {genre: mask[:n] for genre, mask in trained.genre_masks.items()},
            )
        model = replace(self, catalog=trained.followed_by(new.catalog), new=new)
        for built in ("explainer", "similarity"):
            if built in self.__dict__:
                model.__dict__[built] = self.__dict__[built]
        return model

    @property
    def n_trained(self) -> int:
        return self.scorer.n_movies

    @property
    def answer_key(self) -> tuple[str, int]:
        return self.version, self.new.stamp

    @functools.cached_property
    def explainer(self) -> Explainer:
        return Explainer(self.scorer)

    @functools.cached_property
    def similarity(self) -> ItemSimilarity:
        return ItemSimilarity(self.scorer)

    def columns(self, movie_ids: np.ndarray) -> np.ndarray:
        """Each movie's column in the served scores (a new movie's after the trained ones),
        -1 for a movie the model neither was trained on nor holds as new."""
        table = self.column_of
        if table is None:
            cols = self.loaded.movies.index_of(movie_ids)
        else:
            cols = table.take(np.minimum(movie_ids, table.size - 1))
        if len(self.new) and (missing := cols < 0).any():
            at = self.new.positions(movie_ids[missing])
            cols[missing] = np.where(at >= 0, at + self.n_trained, -1)
        return cols

    def known(
        self, movie_ids: np.ndarray, ratings: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """The trained columns rated and their ratings (what the networks fold in); None if
        the model was trained on none of them."""
        cols = self.columns(movie_ids)
        known = (cols >= 0) & (cols < self.n_trained)
        if not known.all():  # movies added after training: rare, so checked, not filtered
            if not known.any():
                return None
            cols, ratings = cols[known], ratings[known]
        return cols, ratings

    def rated(self, movie_ids: np.ndarray) -> np.ndarray:
        """The columns of the movies a user rated, new ones included (never to list)."""
        cols = self.columns(movie_ids)
        return cols[cols >= 0]

    def ties(self, col: int) -> bool:
        """Whether column ``col`` is tied to the trained movies (a new movie may share no
        rater with any)."""
        n = self.n_trained
        return col < n or bool(self.new.columns.weights[col - n].sum() > 0)

    def similar_scores(self, col: int) -> np.ndarray:
        """Similarity of every served movie to column ``col``: a new movie's neighbours by
        weight; new movies in a trained one's by their neighbours' weighted mean."""
        n = self.n_trained
        columns = self.new.columns
        if col < n:
            alike = self.similarity.scores(col)[None, :]
            return columns.scores(alike, self.scorer.popularity, 0.0)[0]
        scores = np.full(n + len(columns), -np.inf, dtype=np.float32)
        weights = columns.weights[col - n]
        tied = weights > 0
        scores[columns.neighbours[col - n][tied]] = weights[tied]
        return scores

    def scores(self, batch: UserBatch) -> np.ndarray:
        """Ranking scores over the trained then the new movies (a fresh array)."""
        scorer = self.scorer
        trained = scorer.scores(batch)
        return self.new.columns.scores(trained, scorer.popularity, scorer.blend.popularity_penalty)

    def ratings(self, batch: UserBatch, cols: list[np.ndarray]) -> list[np.ndarray]:
        """Predicted ratings at each user's served columns (new movies: the bias terms)."""
        n = self.n_trained
        predicted = self.scorer.ratings(batch, [np.where(c < n, c, 0) for c in cols])
        for row, (user_cols, values) in enumerate(zip(cols, predicted, strict=True)):
            new = user_cols >= n
            if new.any():
                values[new] = self.new.columns.ratings(
                    self.scorer.bias,
                    batch.bias_user_bias[row],
                    user_cols[new] - n,
                    self.scorer.scale,
                )
        return predicted


@dataclass(frozen=True)
class LoadFailure:
    """Why a version did not load, and which file: it is retried only when it may work."""

    path: str | None
    mtime: float | None
    at: float
    message: str


CACHED_VERSIONS = 3
"""loaded versions kept per process: a rollback to one of them is instant."""
RETRY_SECONDS = 30.0
"""how soon a version that failed to load is tried again (sooner when its file changes)."""


class ModelLifecycle:
    """Which version this process serves: loads (one at a time), keeps the recent ones, and
    swaps the current one by one reference assignment."""

    def __init__(self, sessions: sessionmaker[Session], model_dir: Path) -> None:
        self._sessions = sessions
        self._model_dir = model_dir
        self._model: ServingModel | None = None  # the newest active version seen, loaded
        self._generation = 0  # bumped on every change of _model
        self._recent: OrderedDict[str, ServingModel] = OrderedDict()
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
        return tuple(self._recent)

    def refresh(self) -> bool:
        """Load the active version if it is not ours (True on a swap), then preload the one
        registered after it and a running experiment's candidate: requests follow the
        registry on their own, so this poll only has a quiet process ready before them."""
        generation = self._generation
        with self._sessions() as session:
            wanted = registry.active_version_id(session)
            upcoming = registry.upcoming_version_id(session)
            candidate = registry.experiment_candidate_id(session)
        swapped = False
        if wanted == self.version:
            self.error = None  # e.g. rolled back to the model we serve
        else:
            before = self._model
            self.model_for(wanted, generation)
            swapped = self._model is not before
        for version in (upcoming, candidate):
            if version is not None and version not in self._recent:
                self._cached_or_loaded(version)
        return swapped

    def preload(self, version: str) -> None:
        """Load `version` without serving it: an activation about to commit swaps with no load."""
        self._cached_or_loaded(version)

    def arm_model(self, version: str) -> ServingModel | None:
        """An experiment's candidate, loaded beside the served model, never swapped in; None
        when it cannot load."""
        model = self._cached_or_loaded(version)
        if model is not None and version in self._recent:
            self._recent.move_to_end(version)  # in use: the last one the cache would drop
        return model

    def model_for(self, wanted: str | None, generation: int) -> ServingModel | None:
        """The model answering a read that saw `wanted` active: that version when it loads,
        else the one served. The current model moves only if no switch happened since the
        read began, so a read from before an activation cannot move the process back."""
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
        """Retried when its file changes or after RETRY_SECONDS, not on every request."""
        failed = self._failed.get(version)
        if failed is None:
            return False
        fresh = time.monotonic() - failed.at < RETRY_SECONDS
        return fresh and (failed.path is None or _mtime(failed.path) == failed.mtime)

    def _load(self, version: str) -> ServingModel | None:
        """Load one version (under the load lock); None, logged and counted, if it cannot."""
        started = time.perf_counter()
        path: str | None = None
        try:
            with self._sessions() as session:
                row = registry.get_version(session, version)
                path = str(ArtifactStore(self._model_dir).path(version))
                loaded = load_artifact(registry.local_artifact(session, row, self._model_dir))
                catalog = load_catalog(session, loaded.movies.ids)
        except Exception as exc:  # a broken artifact, a pruned row, the database away
            self._load_failed(version, path, exc)
            return None
        model = self._with_new_movies(ServingModel.build(version, loaded, catalog))
        # what is alive now lives as long as the process: a full collection's walk of it
        # (~0.1 s holding the GIL) was every route's p99
        gc.freeze()
        self._failed.pop(version, None)
        self._recent[version] = model
        while len(self._recent) > CACHED_VERSIONS:
            self._recent.popitem(last=False)
        MODEL_LOADS.labels("ok").inc()
        log.info(
            "model_loaded",
            version=version,
            ms=round((time.perf_counter() - started) * 1e3),
        )
        return model

    def _with_new_movies(self, model: ServingModel) -> ServingModel:
        """``model`` with the database's new movies; as it is when they cannot be read."""
        try:
            with self._sessions() as session:
                new = read_new_movies(session, model.loaded, model.new)
        except Exception as exc:
            log.warning(
                "new_movies_failed", version=model.version, error=f"{type(exc).__name__}: {exc}"
            )
            return model
        return model if new is model.new else model.with_new_movies(new)

    def refresh_new_movies(self) -> bool:
        """Rebuild the served model's new movies; True when they changed. No generation
        change: read your writes is about versions, and the version stays."""
        current = self._model
        if current is None:
            return False
        updated = self._with_new_movies(current)
        if updated is current:
            return False
        with self._swap_lock:
            if self._model is not current:  # another version meanwhile: its own turn next
                return False
            self._model = updated
            if current.version in self._recent:
                self._recent[current.version] = updated
        return True

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


def _mtime(path: str) -> float | None:
    try:
        return Path(path).stat().st_mtime
    except OSError:
        return None
