"""The hot-path read: a batch of users' ratings and dismissals, the hidden movies and the
active version, in one statement (one snapshot, one round trip)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError

from app.db import create_read_engine
from app.serving.catalog import NO_IDS

# One statement (one snapshot, one round trip, one text whatever the batch size) reads, per
# user, a row of ratings and one of dismissals, aggregated to comma lists numpy parses in
# one call (per-rating rows cost the GIL per value), and a row with the hidden movies, the
# active version and the running experiment: everything that decides the answers. Ratings
# travel as integer half stars: SQLite formats integers far faster than floats. Row shape:
# (kind, user_id, movie ids, half stars, active version, experiment id, candidate, share).
RATINGS, DISMISSALS = 0, 1  # the row kinds (2: the catalog's row)
_NO_EXPERIMENT = ", NULL, NULL, CAST(NULL AS REAL)"  # typed: PostgreSQL unions by type
_EXPERIMENT = "".join(
    f", (SELECT {column} FROM experiments WHERE status = 'running')"
    for column in ("id", "candidate", "share")
)


USERS_STATE_SQL = {
    "sqlite": "SELECT 0, user_id, group_concat(movie_id),"
    f" group_concat(CAST(rating * 2 AS INTEGER)), NULL{_NO_EXPERIMENT} FROM ratings"
    " WHERE user_id IN (SELECT value FROM json_each(?)) GROUP BY user_id"
    f" UNION ALL SELECT 1, user_id, group_concat(movie_id), NULL, NULL{_NO_EXPERIMENT}"
    " FROM dismissals WHERE user_id IN (SELECT value FROM json_each(?)) GROUP BY user_id"
    " UNION ALL SELECT 2, NULL, (SELECT group_concat(id) FROM movies WHERE hidden = 1), NULL,"
    f" (SELECT version FROM model_versions WHERE is_active = 1){_EXPERIMENT}",
    "postgresql": "SELECT 0, user_id, string_agg(movie_id::text, ','),"
    f" string_agg(CAST(rating * 2 AS INTEGER)::text, ','), NULL{_NO_EXPERIMENT} FROM ratings"
    " WHERE user_id = ANY(%s::bigint[]) GROUP BY user_id"
    f" UNION ALL SELECT 1, user_id, string_agg(movie_id::text, ','), NULL, NULL{_NO_EXPERIMENT}"
    " FROM dismissals WHERE user_id = ANY(%s::bigint[]) GROUP BY user_id"
    " UNION ALL SELECT 2, NULL, (SELECT string_agg(id::text, ',') FROM movies WHERE hidden),"
    f" NULL, (SELECT version FROM model_versions WHERE is_active){_EXPERIMENT}",
}


NO_RATINGS = (NO_IDS, np.zeros(0, dtype=np.float32))


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
    # as integers: numpy's float parser releases the GIL per number, the inference thread
    # then waited for the event loop each time
    halves = np.fromstring(row[1], dtype=np.int64, sep=",").astype(np.float32)
    halves *= np.float32(0.5)
    return ids, halves


@dataclass(frozen=True)
class RunningExperiment:
    """The experiment a read saw running."""

    id: str
    candidate: str
    share: float

    def arm_of(self, user_id: int | None) -> str:
        """Candidate when a stable hash (blake2b, not the per-process salted hash()) of
        (experiment, user) falls below the share; sessions are the control's."""
        if user_id is None:
            return "control"
        digest = hashlib.blake2b(f"{self.id}:{user_id}".encode(), digest_size=8).digest()
        return "candidate" if int.from_bytes(digest, "big") < self.share * 2**64 else "control"


@dataclass(frozen=True)
class UserRead:
    """One user's raw read: (movie ids, half stars, dismissals, hidden movies) and the
    active version."""

    row: tuple
    version: str | None
    generation: int  # the recommender's switch count before the read (see _model_for)
    experiment: RunningExperiment | None = None

    @property
    def key(self) -> object:
        return self.row  # strings and numbers: hashable as read

    def ratings(self) -> tuple[np.ndarray, np.ndarray]:
        return _parse_user_ratings(self.row)

    def dismissed(self) -> np.ndarray:
        return _parse_ids(self.row[2])

    def hidden(self) -> np.ndarray:
        return _parse_ids(self.row[3])


class UserReader:
    """The hot-path read of a batch of users (`USERS_STATE_SQL`)."""

    def __init__(self, engine: Engine, connections: int = 1) -> None:
        self._engine = create_read_engine(engine, connections)
        self._owns_engine = self._engine is not engine
        self._sql = USERS_STATE_SQL[engine.dialect.name]
        self._sqlite = engine.dialect.name == "sqlite"

    def dispose(self) -> None:
        if self._owns_engine:
            self._engine.dispose()

    def read_many(self, user_ids: Sequence[int | None], generation: int) -> list[UserRead]:
        """One `UserRead` per id, in order (None, a session, reads no ratings). `generation`:
        the model switch count taken before this read (see `ModelLifecycle.model_for`)."""
        ratings, dismissed, hidden, version, experiment = self._read(
            [u for u in user_ids if u is not None]
        )
        return [
            UserRead(
                (*ratings.get(user, (None, None)), dismissed.get(user), hidden),
                version,
                generation,
                experiment,
            )
            for user in user_ids
        ]

    def read_catalog_state(self, generation: int) -> UserRead:
        """The hidden movies and the active version only (lists about a movie, no user)."""
        _, _, hidden, version, experiment = self._read(())
        return UserRead((None, None, None, hidden), version, generation, experiment)

    def statement(self, user_ids: Sequence[int]) -> tuple[str, tuple[object, ...]]:
        """The read's SQL and its parameters for these users (the benchmark EXPLAINs it)."""
        wanted: object = json.dumps(list(user_ids)) if self._sqlite else list(user_ids)
        return self._sql, (wanted, wanted)

    def _read(
        self, user_ids: Sequence[int]
    ) -> tuple[dict, dict, Any, str | None, RunningExperiment | None]:
        """(ratings by user, dismissals by user, hidden, active version, experiment), raw."""
        ratings: dict[int, tuple[Any, Any]] = {}
        dismissed: dict[int, Any] = {}
        hidden, version, experiment = None, None, None
        for kind, user, ids, halves, active, *running in self._rows(*self.statement(user_ids)):
            if kind == RATINGS:
                ratings[user] = (ids, halves)
            elif kind == DISMISSALS:
                dismissed[user] = ids
            else:
                hidden, version = ids, active
                if running[0] is not None:
                    experiment = RunningExperiment(running[0], running[1], float(running[2]))
        return ratings, dismissed, hidden, version, experiment

    def _rows(self, sql: str, params: tuple[object, ...]) -> list[tuple]:
        """A pooled DBAPI connection directly (SQLAlchemy's results cost more than the
        query), driver errors raised as SQLAlchemy's (503). The pool does not ping: a read
        on a connection the server dropped is tried once more."""
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
