"""Writing rating rows, per dialect: incremental (a staged, deduplicated INSERT ... ON
CONFLICT DO NOTHING) or bulk (indexes dropped and rebuilt; binary COPY on PostgreSQL,
multi-row INSERTs on SQLite); `ratings_writer` picks one (see `app.movielens.importer`)."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError

from app.movielens.rows import Batch, StoredPairs, UserRuns, first_of_pairs

# The bulk path (see ratings_writer): taken when `ratings` holds at most this many rows and
# no more than the file brings (its size over RATING_LINE_BYTES, a low guess per line).
BULK_EXISTING_MAX = 1_000_000
RATING_LINE_BYTES = 16
PG_LOCK_WAIT = 3.0  # seconds the bulk path tries for its locks, then goes incremental
SQLITE_ROWS = 200  # rows per INSERT: 800 parameters, under SQLite's historic 999


class RatingWriter(Protocol):
    """Takes validated blocks; `finish` returns (distinct pairs of the file, rows added).
    A context manager, so a failure can abort a half-written COPY."""

    def __enter__(self) -> RatingWriter: ...
    def __exit__(self, *exc_info: Any) -> None: ...
    def write(self, batch: Batch) -> None: ...
    def finish(self) -> tuple[int, int]: ...


def _quote(conn: Connection, name: str) -> str:
    return conn.dialect.identifier_preparer.quote(name)


def _sqlite_insert(conn: Connection, head: str, batch: Batch, tail: str = "") -> int:
    """`head` + multi-row VALUES (+ `tail`), SQLITE_ROWS a statement (a quarter of the cost
    of a statement a row); the rows changed."""
    if not len(batch):
        return 0
    halves = np.rint(batch.rating * 2).astype(np.int64)
    if not ((halves >= 1) & (halves <= 10) & (halves == batch.rating * 2)).all():
        raise AssertionError("a rating that is not a half star reached the insert")
    rows = np.stack([batch.user, batch.movie, halves, batch.timestamp], axis=1)
    full = len(rows) - len(rows) % SQLITE_ROWS
    cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
    try:
        changed = 0
        if full:
            values = ", ".join(["(?, ?, ? * 0.5, ?)"] * SQLITE_ROWS)
            cursor.executemany(
                head + values + tail, rows[:full].reshape(-1, 4 * SQLITE_ROWS).tolist()
            )
            changed += max(cursor.rowcount, 0)
        if len(rows) > full:
            values = ", ".join(["(?, ?, ? * 0.5, ?)"] * (len(rows) - full))
            cursor.execute(head + values + tail, rows[full:].ravel().tolist())
            changed += max(cursor.rowcount, 0)
        return changed
    finally:
        cursor.close()


_RATINGS_INSERT = 'INSERT INTO ratings (user_id, movie_id, rating, "timestamp") VALUES '


class _SqliteRatingWriter:
    """A keyed temp table absorbs in-file duplicates (first wins) before the real insert."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.staged = 0

    def __enter__(self) -> _SqliteRatingWriter:
        self.conn.exec_driver_sql("DROP TABLE IF EXISTS temp._ml_stage")
        self.conn.exec_driver_sql(
            "CREATE TEMP TABLE _ml_stage (user_id INTEGER NOT NULL, movie_id INTEGER NOT NULL,"
            " rating REAL NOT NULL, ts INTEGER NOT NULL, PRIMARY KEY (user_id, movie_id))"
            " WITHOUT ROWID"
        )
        return self

    def __exit__(self, *exc_info: Any) -> None:
        """Nothing to undo: the temp table goes with the rolled-back transaction."""

    def write(self, batch: Batch) -> None:
        head = "INSERT OR IGNORE INTO temp._ml_stage VALUES "
        self.staged += _sqlite_insert(self.conn, head, first_of_pairs(batch))

    def finish(self) -> tuple[int, int]:
        result = self.conn.exec_driver_sql(
            'INSERT INTO ratings (user_id, movie_id, rating, "timestamp")'
            " SELECT user_id, movie_id, rating, ts FROM temp._ml_stage WHERE true"
            " ON CONFLICT DO NOTHING"
        )
        added = result.rowcount
        self.conn.exec_driver_sql("DROP TABLE temp._ml_stage")
        return self.staged, added


class _SqliteBulkWriter:
    """Rows straight in (the first of a pair wins), the secondary indexes dropped and rebuilt
    from their own SQL at the end: a sort, not a B-tree insert per row."""

    def __init__(self, conn: Connection, stored: StoredPairs) -> None:
        self.conn, self.stored = conn, stored
        self.added = 0
        self.indexes: list[tuple[str, str]] = []

    def __enter__(self) -> _SqliteBulkWriter:
        self.indexes = [
            (name, sql)
            for name, sql in self.conn.exec_driver_sql(
                "SELECT name, sql FROM sqlite_master"
                " WHERE type = 'index' AND tbl_name = 'ratings' AND sql IS NOT NULL"
            )
        ]
        for name, _ in self.indexes:
            self.conn.exec_driver_sql(f"DROP INDEX {_quote(self.conn, name)}")
        return self

    def __exit__(self, *exc_info: Any) -> None:
        """The dropped indexes come back with the commit, or with the rollback."""

    def write(self, batch: Batch) -> None:
        batch = self.stored.drop_stored(first_of_pairs(batch))
        self.added += _sqlite_insert(self.conn, _RATINGS_INSERT, batch, " ON CONFLICT DO NOTHING")

    def finish(self) -> tuple[int, int]:
        for _, sql in self.indexes:
            self.conn.exec_driver_sql(sql)
        return self.stored.matched + self.added, self.added


_PG_SIGNATURE = b"PGCOPY\n\xff\r\n\x00" + b"\x00" * 8
_PG_TRAILER = b"\xff\xff"


def _pg_row(kinds: str) -> np.dtype:
    fields: list[tuple[str, str]] = [("fields", ">i2")]
    for at, kind in enumerate(kinds):
        fields += [(f"len{at}", ">i4"), (f"v{at}", ">i8" if kind == "i" else ">f8")]
    return np.dtype(fields)


class _PgCopy:
    """One binary `COPY ... FROM STDIN`; rows are laid out by numpy, no per-row Python."""

    def __init__(self, conn: Connection, statement: str, kinds: str) -> None:
        self.row = _pg_row(kinds)
        self.stack = contextlib.ExitStack()
        driver: Any = conn.connection.driver_connection
        cursor = self.stack.enter_context(driver.cursor())
        self.copy = self.stack.enter_context(cursor.copy(statement))
        self.copy.write(_PG_SIGNATURE)

    def write(self, *columns: np.ndarray) -> None:
        rows = np.empty(len(columns[0]), dtype=self.row)
        rows["fields"] = len(columns)
        for at, column in enumerate(columns):
            rows[f"len{at}"] = 8
            rows[f"v{at}"] = column
        self.copy.write(rows.tobytes())

    def close(self, *exc_info: Any) -> None:
        """Ends the COPY; given an error, psycopg aborts it instead of committing it."""
        if not exc_info or exc_info[0] is None:
            self.copy.write(_PG_TRAILER)
            exc_info = (None, None, None)
        self.stack.__exit__(*exc_info)


class _PostgresRatingWriter:
    """One binary COPY into an unkeyed temp table; dedupe and insert in one statement."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.seq = 0

    def __enter__(self) -> _PostgresRatingWriter:
        self.conn.exec_driver_sql("SET LOCAL work_mem = '256MB'")
        self.copy = _pg_stage(self.conn)
        return self

    def __exit__(self, *exc_info: Any) -> None:
        if exc_info[0] is not None:
            self.copy.close(*exc_info)

    def write(self, batch: Batch) -> None:
        if not len(batch):
            return
        seq = np.arange(self.seq, self.seq + len(batch))
        self.seq += len(batch)
        self.copy.write(batch.user, batch.movie, batch.rating, batch.timestamp, seq)

    def finish(self) -> tuple[int, int]:
        self.copy.close()
        distinct, added = self.conn.exec_driver_sql(
            "WITH firsts AS (SELECT DISTINCT ON (user_id, movie_id) user_id, movie_id, rating, ts"
            " FROM _ml_stage ORDER BY user_id, movie_id, seq),"
            ' added AS (INSERT INTO ratings (user_id, movie_id, rating, "timestamp")'
            " SELECT user_id, movie_id, rating, ts FROM firsts ON CONFLICT DO NOTHING"
            " RETURNING 1)"
            " SELECT (SELECT count(*) FROM firsts), (SELECT count(*) FROM added)"
        ).one()
        self.conn.exec_driver_sql("DROP TABLE _ml_stage")
        return int(distinct), int(added)


def _pg_stage(conn: Connection) -> _PgCopy:
    """A COPY into a new temp table of staged rows, `seq` their file order."""
    conn.exec_driver_sql(
        "CREATE TEMP TABLE _ml_stage (user_id bigint, movie_id bigint, rating float8,"
        " ts bigint, seq bigint) ON COMMIT DROP"
    )
    return _PgCopy(conn, "COPY _ml_stage FROM STDIN (FORMAT BINARY)", "iifii")


@dataclass
class _PgRebuild:
    """What a bulk load drops from `ratings` and puts back, as the catalog defines it."""

    drop: list[str]
    keys: list[str]  # primary key and unique constraints: first, staged rows need them
    rest: list[str]  # plain indexes, then foreign keys


def _pg_rebuild(conn: Connection) -> _PgRebuild | None:
    """None when another table's foreign key references `ratings` (its key must stay)."""
    if conn.exec_driver_sql(
        "SELECT 1 FROM pg_constraint WHERE confrelid = 'ratings'::regclass LIMIT 1"
    ).first():
        return None
    constraints = conn.exec_driver_sql(
        "SELECT conname, contype, pg_get_constraintdef(oid) FROM pg_constraint"
        " WHERE conrelid = 'ratings'::regclass AND contype IN ('p', 'u', 'f') ORDER BY conname"
    ).all()
    indexes = conn.exec_driver_sql(
        "SELECT i.indexrelid::regclass::text, pg_get_indexdef(i.indexrelid) FROM pg_index i"
        " WHERE i.indrelid = 'ratings'::regclass AND NOT EXISTS (SELECT 1 FROM pg_constraint k"
        " WHERE k.conrelid = i.indrelid AND k.conindid = i.indexrelid) ORDER BY 1"
    ).all()
    add = "ALTER TABLE ratings ADD CONSTRAINT {} {}"
    foreign = [(name, sql) for name, kind, sql in constraints if kind == "f"]
    keys = [(name, sql) for name, kind, sql in constraints if kind != "f"]
    return _PgRebuild(
        drop=[f"ALTER TABLE ratings DROP CONSTRAINT {_quote(conn, n)}" for n, _ in foreign]
        + [f"DROP INDEX {name}" for name, _ in indexes]
        + [f"ALTER TABLE ratings DROP CONSTRAINT {_quote(conn, n)}" for n, _ in keys],
        keys=[add.format(_quote(conn, n), sql) for n, sql in keys],
        rest=[sql for _, sql in indexes] + [add.format(_quote(conn, n), sql) for n, sql in foreign],
    )


class PostgresBulkWriter:
    """The manual's "Populating a Database", on a locked `ratings`: keys, indexes and
    foreign keys dropped, rows COPYed straight in while each user's ratings come together
    (`UserRuns`), else staged; then keys built by sorting, ANALYZE; one transaction."""

    def __init__(self, conn: Connection, stored: StoredPairs, rebuild: _PgRebuild) -> None:
        self.conn, self.stored, self.rebuild = conn, stored, rebuild
        self.runs: UserRuns | None = UserRuns()
        self.direct = self.seq = 0

    def __enter__(self) -> PostgresBulkWriter:
        # (a larger maintenance_work_mem made the index builds slower here)
        self.conn.exec_driver_sql("SET LOCAL work_mem = '256MB'")
        for statement in self.rebuild.drop:
            self.conn.exec_driver_sql(statement)
        self.copy = _PgCopy(
            self.conn,
            'COPY ratings (user_id, movie_id, rating, "timestamp") FROM STDIN (FORMAT BINARY)',
            "iifi",
        )
        return self

    def __exit__(self, *exc_info: Any) -> None:
        if exc_info[0] is not None:
            self.copy.close(*exc_info)

    def write(self, batch: Batch) -> None:
        if not len(batch):
            return
        last_user = int(batch.user[-1])
        batch = self.stored.drop_stored(first_of_pairs(batch))
        if self.runs is not None:
            new = self.runs.new_rows(batch, last_user)
            if new is not None:
                self.direct += len(new)
                self.copy.write(new.user, new.movie, new.rating, new.timestamp)
                return
            self._stage_from_now_on()
        seq = np.arange(self.seq, self.seq + len(batch))
        self.seq += len(batch)
        self.copy.write(batch.user, batch.movie, batch.rating, batch.timestamp, seq)

    def _stage_from_now_on(self) -> None:
        """A user came back: stage the rest and leave their repeats to SQL at the end."""
        self.runs = None
        self.copy.close()
        self.copy = _pg_stage(self.conn)

    def finish(self) -> tuple[int, int]:
        self.copy.close()
        for statement in self.rebuild.keys:
            self.conn.exec_driver_sql(statement)
        added = self.direct
        if self.runs is None:
            added += self.conn.exec_driver_sql(
                'INSERT INTO ratings (user_id, movie_id, rating, "timestamp")'
                " SELECT DISTINCT ON (user_id, movie_id) user_id, movie_id, rating, ts"
                " FROM _ml_stage ORDER BY user_id, movie_id, seq ON CONFLICT DO NOTHING"
            ).rowcount
            self.conn.exec_driver_sql("DROP TABLE _ml_stage")
        for statement in self.rebuild.rest:
            self.conn.exec_driver_sql(statement)
        self.conn.exec_driver_sql("ANALYZE ratings")
        return self.stored.matched + added, added


def _bounded_count(conn: Connection, limit: int) -> int:
    return int(
        conn.exec_driver_sql(
            f"SELECT count(*) FROM (SELECT 1 FROM ratings LIMIT {int(limit) + 1}) AS head"
        ).scalar()
        or 0
    )


def _stored_pairs(conn: Connection, known: np.ndarray, limit: int) -> StoredPairs | None:
    """The pairs in `ratings` when there are at most `limit` of them, else None."""
    if _bounded_count(conn, limit) > limit:
        return None
    cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
    try:  # plain tuples: numpy reads them far faster than SQLAlchemy rows
        cursor.execute("SELECT user_id, movie_id FROM ratings")
        pairs = np.array(cursor.fetchall(), dtype=np.int64).reshape(-1, 2)
    finally:
        cursor.close()
    return StoredPairs(pairs[:, 0], pairs[:, 1], known)


def _pg_lock_for_bulk(conn: Connection) -> Any:
    """ACCESS EXCLUSIVE on `movies` and `ratings` in a savepoint the caller ends, or None
    when not free within PG_LOCK_WAIT. NOWAIT, retried: the import holds weaker locks on
    both already, so waiting could deadlock with a writer holding one."""
    deadline = time.monotonic() + PG_LOCK_WAIT
    while True:
        savepoint = conn.begin_nested()
        try:
            conn.exec_driver_sql("LOCK TABLE movies, ratings IN ACCESS EXCLUSIVE MODE NOWAIT")
            return savepoint
        except DBAPIError as exc:
            savepoint.rollback()
            if getattr(exc.orig, "sqlstate", None) != "55P03":  # lock_not_available
                raise
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.05)


def _postgres_writer(conn: Connection, known: np.ndarray, limit: int) -> RatingWriter:
    """Bulk when `ratings` is small and both tables can be locked, else incremental."""
    if _bounded_count(conn, limit) > limit:
        return _PostgresRatingWriter(conn)
    savepoint = _pg_lock_for_bulk(conn)
    if savepoint is None:
        return _PostgresRatingWriter(conn)
    stored = _stored_pairs(conn, known, limit)  # under the lock: exact
    rebuild = _pg_rebuild(conn) if stored is not None else None
    if stored is None or rebuild is None:
        savepoint.rollback()
        return _PostgresRatingWriter(conn)
    savepoint.commit()  # the locks stay, with the transaction
    return PostgresBulkWriter(conn, stored, rebuild)


def _sqlite_writer(conn: Connection, known: np.ndarray, limit: int) -> RatingWriter:
    """Bulk when `ratings` is small, else incremental; the write lock first, so what is
    counted is what the import writes to."""
    driver: Any = conn.connection.driver_connection
    if not driver.in_transaction:  # pysqlite begins only before DML, not before DDL
        conn.exec_driver_sql("BEGIN IMMEDIATE")
    stored = _stored_pairs(conn, known, limit)
    if stored is None:
        return _SqliteRatingWriter(conn)
    return _SqliteBulkWriter(conn, stored)


def ratings_writer(conn: Connection, known: np.ndarray, file_bytes: int) -> RatingWriter:
    """Bulk when the file brings at least as many ratings as the table holds (rebuilding the
    indexes then costs less than updating them), else incremental."""
    limit = min(BULK_EXISTING_MAX, file_bytes // RATING_LINE_BYTES)
    if conn.dialect.name == "postgresql":
        return _postgres_writer(conn, known, limit)
    return _sqlite_writer(conn, known, limit)
