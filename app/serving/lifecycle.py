"""Which model version a process serves: load, keep the recent ones, swap.

Read your writes: every request reads the registry's active version in the same database
round trip as the user's ratings and is answered by exactly that version, loading it first
when this process has not yet (one load at a time per process; the others wait for it).
Loaded models are immutable snapshots kept in a small cache, which makes a rollback to a
recent version instant.
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
    """One loaded version, immutable: everything a request needs is built before it serves
    (the answers it gives are cached by `AnswerCache`, which may mutate).

    Its scores cover the trained movies (columns 0..n-1) then the new movies of ``new``
    (`app.serving.new_movies`): a refresh of those is a new `ServingModel` of the same
    version, swapped in by one reference assignment; a request keeps the one it started with.
    """

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
        """The same version serving ``new``; what depends on the trained model only (the
        explainer, the similarity) is shared, not built again."""
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
        """What of the model an answer depends on: its version and its new movies."""
        return self.version, self.new.stamp

    @functools.cached_property
    def explainer(self) -> Explainer:
        """Leave-one-out reasons for a recommendation (`app.ml.explain`), built on first use."""
        return Explainer(self.scorer)

    @functools.cached_property
    def similarity(self) -> ItemSimilarity:
        """Movies alike by the model's item representations (`app.ml.explain`)."""
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
        """The trained columns the user rated and those ratings (what the networks fold
        in); None if the model was trained on none of them."""
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
        rater with any: then nothing is known of it but its ratings)."""
        n = self.n_trained
        return col < n or bool(self.new.columns.weights[col - n].sum() > 0)

    def similar_scores(self, col: int) -> np.ndarray:
        """Similarity of every served movie to column ``col`` (see `Recommender.similar`)."""
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
        """Predicted ratings at each user's served columns: the model's at trained ones,
        the bias terms with the movie's own bias at new ones."""
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
    """Why a version did not load, and which file, so it is retried only when it may work."""

    path: str | None
    mtime: float | None
    at: float
    message: str


CACHED_VERSIONS = 3
"""loaded versions kept per process: a rollback to one of them is instant."""
RETRY_SECONDS = 30.0
"""how soon a version that failed to load is tried again (sooner when its file changes)."""


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
        Then preload the version registered after it (`registry.upcoming_version_id`) and
        a running experiment's candidate, which answers some users beside it.

        Requests already follow the registry on their own; this poll only preloads, so a
        quiet process has a new model ready before its first request asks for it: one
        registered a moment ago (a retrain about to be activated, by its gate or an
        admin) is loaded here before it is active. Two id queries when nothing changed.
        """
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
        """Load `version` among the recent ones without serving it: an activation about to
        commit, so that the swap needs no load (seconds for a 60,000-movie catalog, during
        which every request that read the new version would wait)."""
        self._cached_or_loaded(version)

    def arm_model(self, version: str) -> ServingModel | None:
        """An experiment's candidate, loaded beside the served model and never swapped in
        (the control stays the process's current one); None when it cannot load."""
        model = self._cached_or_loaded(version)
        if model is not None and version in self._recent:
            self._recent.move_to_end(version)  # in use: the last one the cache would drop
        return model

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
        """A failed version is retried when its file changes or after RETRY_SECONDS,
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
                path = str(ArtifactStore(self._model_dir).path(version))
                loaded = load_artifact(registry.local_artifact(session, row, self._model_dir))
                catalog = load_catalog(session, loaded.movies.ids)
        except Exception as exc:  # a broken artifact, a pruned row, the database away
            self._load_failed(version, path, exc)
            return None
        model = self._with_new_movies(ServingModel.build(version, loaded, catalog))
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

    def _with_new_movies(self, model: ServingModel) -> ServingModel:
        """``model`` with the database's new movies; as it is when they cannot be read
        (the next `refresh_new_movies` tries again)."""
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
        """Rebuild the served model's new movies (`app.serving.new_movies`); True when they
        changed. The same version with other new movies: swapped by one assignment, no
        generation change (read your writes is about versions, and the version stays)."""
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
