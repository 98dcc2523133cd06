"""New movies before a retrain, read from the database for a loaded model, per process.

A rated movie the model was not trained on becomes a column after the model's own
(`app.ml.new_movies`), built at load and every NEW_MOVIES_REFRESH_SECONDS. Bounded: at most
`MAX_NEW_MOVIES`, each from its `RATERS` latest raters; a refresh re-reads only the movies
whose rating count changed, and every read is indexed.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.ml import new_movies
from app.ml.artifacts import LoadedModel
from app.ml.new_movies import NewMovieColumns
from app.models import Movie, Rating
from app.serving.catalog import NO_IDS, Catalog, load_catalog

MAX_NEW_MOVIES = 500
"""new movies served per model: past it, a retrain is overdue (the next one takes them in)."""
RATERS = 500
"""latest raters read per new movie: enough for its neighbours, a bounded read per movie."""
CHUNK = 500
"""ids per IN-list."""

_stamps = itertools.count(1)


@dataclass(frozen=True, eq=False)
class NewMovies:
    movie_ids: np.ndarray
    """sorted; column n + i of the served scores is movie_ids[i]"""
    counts: np.ndarray
    columns: NewMovieColumns
    catalog: Catalog
    stamp: int
    """distinct per snapshot in this process: part of the answer cache's key"""

    @classmethod
    def empty(cls) -> NewMovies:
        return cls(NO_IDS, NO_IDS, NewMovieColumns.empty(), Catalog(NO_IDS, [], [], {}), 0)

    def __len__(self) -> int:
        return int(self.movie_ids.size)

    def positions(self, movie_ids: np.ndarray) -> np.ndarray:
        if not len(self):
            return np.full(np.shape(movie_ids), -1, dtype=np.int64)
        at = np.minimum(np.searchsorted(self.movie_ids, movie_ids), len(self) - 1)
        return np.where(self.movie_ids[at] == movie_ids, at, -1).astype(np.int64)


def read_new_movies(session: Session, loaded: LoadedModel, previous: NewMovies) -> NewMovies:
    """The new movies of ``loaded`` now; ``previous`` (the same model's) when unchanged."""
    ids, counts = _rated_new_movies(session, loaded)
    if np.array_equal(ids, previous.movie_ids) and np.array_equal(counts, previous.counts):
        return previous
    at = previous.positions(ids)
    kept = at >= 0
    kept[kept] = previous.counts[at[kept]] == counts[kept]
    changed = np.flatnonzero(~kept)
    fitted = _fit(session, loaded, ids[changed], counts[changed])
    # the kept rows and the refitted ones, back in id order
    order = np.argsort(np.concatenate([np.flatnonzero(kept), changed]), kind="stable")
    columns = NewMovieColumns.concat([previous.columns.take(at[kept]), fitted])
    columns = columns.take(order)
    return NewMovies(ids, counts, columns, load_catalog(session, ids), next(_stamps))


def _rated_new_movies(session: Session, loaded: LoadedModel) -> tuple[np.ndarray, np.ndarray]:
    """(ids, rating counts) of the `MAX_NEW_MOVIES` most rated movies the model lacks."""
    every = np.array(session.scalars(select(Movie.id)).all(), dtype=np.int64)
    candidates = every[loaded.movies.index_of(every) < 0]
    found: dict[int, int] = {}
    for chunk in _chunks(candidates.tolist()):
        query = (
            select(Rating.movie_id, func.count())
            .where(Rating.movie_id.in_(chunk))
            .group_by(Rating.movie_id)
        )
        found.update((int(m), int(c)) for m, c in session.execute(query))
    ids = np.array(list(found), dtype=np.int64)
    counts = np.array(list(found.values()), dtype=np.int64)
    most = np.lexsort((ids, -counts))[:MAX_NEW_MOVIES]
    ids, counts = ids[most], counts[most]
    order = np.argsort(ids)
    return ids[order], counts[order]


def _fit(
    session: Session, loaded: LoadedModel, ids: np.ndarray, counts: np.ndarray
) -> NewMovieColumns:
    if not ids.size:
        return NewMovieColumns.empty()
    movie_pos, rater_ids, stars = _latest_ratings(session, ids)
    users = np.unique(rater_ids)
    rated_by = sp.csr_matrix(
        (stars, (movie_pos, np.searchsorted(users, rater_ids))), shape=(ids.size, users.size)
    )
    rows, cols, values = [], [], []
    for chunk in _chunks(users.tolist()):
        query = select(Rating.user_id, Rating.movie_id, Rating.rating).where(
            Rating.user_id.in_(chunk)
        )
        for user, movie, rating in session.execute(query):
            rows.append(user)
            cols.append(movie)
            values.append(rating)
    col = loaded.movies.index_of(np.array(cols, dtype=np.int64))
    trained = col >= 0
    row = np.searchsorted(users, np.array(rows, dtype=np.int64))
    model = loaded.model
    raters = sp.csr_matrix(
        (np.array(values, dtype=np.float32)[trained], (row[trained], col[trained])),
        shape=(users.size, model.n_movies),
    )
    return new_movies.fit(
        raters,
        rated_by,
        counts,
        np.expm1(model.log_popularity.astype(np.float64)),
        model.bias,
        model.config.movie_bias_reg,
    )


def _latest_ratings(session: Session, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(position in ``ids``, user, stars) of each movie's `RATERS` latest ratings."""
    positions, users, stars = [], [], []
    for chunk in _chunks(ids.tolist()):
        latest = (
            select(
                Rating.movie_id,
                Rating.user_id,
                Rating.rating,
                func.row_number()
                .over(
                    partition_by=Rating.movie_id,
                    order_by=(Rating.timestamp.desc(), Rating.user_id.desc()),
                )
                .label("nth"),
            )
            .where(Rating.movie_id.in_(chunk))
            .subquery()
        )
        query = select(latest.c.movie_id, latest.c.user_id, latest.c.rating).where(
            latest.c.nth <= RATERS
        )
        for movie, user, rating in session.execute(query):
            positions.append(movie)
            users.append(user)
            stars.append(rating)
    at = np.searchsorted(ids, np.array(positions, dtype=np.int64))
    return at, np.array(users, dtype=np.int64), np.array(stars, dtype=np.float32)


def _chunks(values: Sequence[int]) -> Iterator[list[int]]:
    for start in range(0, len(values), CHUNK):
        yield list(values[start : start + CHUNK])
