"""Bulk import of the GroupLens MovieLens data sets (their download: downloads.py).

The import streams the ratings file in blocks (never the whole file in memory), validates
each block with numpy, and hands the good rows to one of two paths (`_ratings_writer`):

- bulk, when `ratings` holds no more rows than the file brings (a first import): its
  secondary indexes (PostgreSQL: also its keys and foreign keys) are dropped, the rows go
  straight in (binary `COPY` on PostgreSQL, multi-row INSERTs on SQLite), and what was
  dropped is rebuilt at the end by sorting, then ANALYZEd (PostgreSQL). 25M ratings (the
  synthetic ml-25m of scripts/generate_ml25m.py): about 80 s either backend, on 2 cores.
  On PostgreSQL this holds ACCESS EXCLUSIVE locks on `ratings` and `movies` until the
  commit: readers wait (they never see the table half loaded or without its keys);
  the path is skipped if those locks are not free within PG_LOCK_WAIT seconds.
- incremental, otherwise: rows are staged in a temp table, deduplicated and inserted
  with ON CONFLICT DO NOTHING; nothing is dropped and nobody is blocked.

Everything lands in one transaction, so a crash never leaves half a catalog behind, nor
a table without its indexes.

Semantics worth knowing:
- Rows already in the database are left as they are (INSERT ... ON CONFLICT DO NOTHING),
  so a second run adds nothing.
- A (user, movie) pair repeated in the file keeps its FIRST occurrence, the same rule as
  for rows already in the database; later copies are counted as `ratings.duplicate`.
- Every row that cannot be used is counted per reason in `ImportReport.skipped`.
- Movie ids are taken as they are: ml-100k and the other data sets number movies
  differently, so do not import both into one database.
"""

from __future__ import annotations

import contextlib
import csv
import io
import re
import time
import zipfile
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Any, Protocol

import numpy as np
from sqlalchemy import Connection, Engine, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError

from app.ml.datasets import ID_LIMIT, drop_header, line_blocks, parse_block, valid_ratings
from app.models import Movie, MovieGenre

# What a long read reports: (what is being read, bytes so far, bytes in all if known). The
# caller draws it (the CLI's bar); a service never writes to the terminal itself.
Progress = Callable[[str, int, int | None], None]
STANDARD_100K_GENRES = (
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
)
NO_GENRES = "(no genres listed)"
TITLE_MAX = 500
GENRE_MAX = 64
YEAR_MIN, YEAR_MAX = 1800, 3000
BLOCK_BYTES = 2 * 1024 * 1024  # about 100k rating lines: bounded memory, few round trips
MOVIE_BATCH = 5_000
# The bulk path (see _ratings_writer): taken when `ratings` holds at most this many rows and
# no more than the file brings (its size over RATING_LINE_BYTES, a low guess per line).
BULK_EXISTING_MAX = 1_000_000
RATING_LINE_BYTES = 16
PG_LOCK_WAIT = 3.0  # seconds the bulk path tries for its locks, then goes incremental
SQLITE_ROWS = 200  # rows per INSERT: 800 parameters, under SQLite's historic 999
_YEAR_RE = re.compile(r"\((\d{4})(?:\s*[-\u2013]\s*(?:\d{4})?\s*)?\)$")


class MovieLensFormatError(ValueError):
    """The path holds no MovieLens layout we know, or the layout is incomplete."""


@dataclass
class ImportReport:
    """What one import did; `skipped` maps a reason such as `ratings.bad_rating` to a count.

    `layout` is the file-format family: ml-100k; ml-1m (also ml-10m); ml-latest (also
    ml-latest-small, ml-20m, ml-25m).
    """

    layout: str
    source: str = ""
    movies_added: int = 0
    movies_seen: int = 0
    movies_existing: int = 0
    ratings_added: int = 0
    ratings_seen: int = 0
    ratings_existing: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def summary(self) -> str:
        """The lines the CLI prints: what was loaded, what was left out, how long it took."""
        rate = self.ratings_seen / self.seconds if self.seconds > 0 else 0.0
        lines = [
            f"MovieLens {self.layout} layout from {self.source}",
            f"  movies:  {self.movies_added} added, {self.movies_existing} already present, "
            f"{self.movies_seen} read",
            f"  ratings: {self.ratings_added} added, {self.ratings_existing} already present, "
            f"{self.ratings_seen} read",
        ]
        if self.skipped:
            total = sum(self.skipped.values())
            lines.append(f"  skipped: {total} rows")
            lines.extend(f"    {reason}: {n}" for reason, n in sorted(self.skipped.items()))
        else:
            lines.append("  skipped: none")
        lines.append(f"  took {self.seconds:.1f} s ({rate:,.0f} rating rows/s)")
        return "\n".join(lines)


@dataclass(frozen=True)
class _MovieRow:
    id: int
    title: str
    year: int | None
    genres: tuple[str, ...]


# --------------------------------------------------------------------------- sources


class _Source(Protocol):
    """A folder or a zip archive, seen as one directory of MovieLens files."""

    def has(self, name: str) -> bool: ...
    def open(self, name: str) -> IO[bytes]: ...
    def size(self, name: str) -> int: ...


class _FolderSource:
    def __init__(self, root: Path) -> None:
        self.root = root

    def has(self, name: str) -> bool:
        return (self.root / name).is_file()

    def open(self, name: str) -> IO[bytes]:
        return (self.root / name).open("rb")

    def size(self, name: str) -> int:
        return (self.root / name).stat().st_size

    def __str__(self) -> str:
        return str(self.root)


class _ZipSource:
    def __init__(self, archive: zipfile.ZipFile, path: Path, prefix: str) -> None:
        self.archive, self.path, self.prefix = archive, path, prefix
        self.names = set(archive.namelist())

    def has(self, name: str) -> bool:
        return self.prefix + name in self.names

    def open(self, name: str) -> IO[bytes]:
        return self.archive.open(self.prefix + name)

    def size(self, name: str) -> int:
        return self.archive.getinfo(self.prefix + name).file_size

    def __str__(self) -> str:
        return f"{self.path}!{self.prefix}" if self.prefix else str(self.path)


# --------------------------------------------------------------------------- layouts


@dataclass(frozen=True)
class _Layout:
    name: str
    covers: str
    ratings_file: str
    movies_file: str
    ratings_sep: bytes
    read_movies: Callable[[_Source, Counter[str]], dict[int, _MovieRow]]


def _decode(raw: bytes) -> str:
    """UTF-8 when it is (ml-10m, ml-latest), else latin-1 (ml-100k, ml-1m): never fails."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def parse_title(raw: str) -> tuple[str, int | None]:
    """Keep the whole title ("Star Wars (1977)") and read the year from its last brackets."""
    title = raw.replace("\x00", "").strip()
    match = _YEAR_RE.search(title)
    year = int(match.group(1)) if match else None
    if year is not None and not YEAR_MIN <= year <= YEAR_MAX:
        year = None
    return title, year


def _clean_genres(names: list[str], skipped: Counter[str]) -> tuple[str, ...]:
    """Drop blanks, repeats and the `(no genres listed)` marker; overlong names are counted."""
    kept: dict[str, None] = {}
    for name in (n.strip() for n in names):
        if not name or name == NO_GENRES:
            continue
        if len(name) > GENRE_MAX:
            skipped["genres.too_long"] += 1
            continue
        kept[name] = None
    return tuple(kept)


def _add_movie(
    catalog: dict[int, _MovieRow],
    skipped: Counter[str],
    raw_id: str,
    raw_title: str,
    genres: tuple[str, ...],
    fallback_year: int | None = None,
) -> None:
    """Validate one catalog entry; the first entry of an id wins, like for ratings."""
    try:
        movie_id = int(raw_id.strip())
    except ValueError:
        skipped["movies.malformed"] += 1
        return
    title, year = parse_title(raw_title)
    if movie_id < 1 or movie_id >= ID_LIMIT or not title:
        skipped["movies.malformed"] += 1
        return
    if movie_id in catalog:
        skipped["movies.duplicate_id"] += 1
        return
    if len(title) > TITLE_MAX:
        skipped["movies.title_truncated"] += 1
        title = title[:TITLE_MAX]
    catalog[movie_id] = _MovieRow(movie_id, title, year or fallback_year, genres)


def _text_lines(source: _Source, name: str) -> Iterator[str]:
    """Decoded lines without their line ending; blank lines are dropped."""
    with source.open(name) as handle:
        for raw in handle:
            line = _decode(raw).rstrip("\r\n")
            if line.strip():
                yield line


def _genres_100k(source: _Source) -> tuple[str, ...]:
    """u.genre (`name|index`) when present, else the 19 genres ml-100k documents."""
    if not source.has("u.genre"):
        return STANDARD_100K_GENRES
    pairs = []
    for line in _text_lines(source, "u.genre"):
        name, _, index = line.rpartition("|")
        if name and index.strip().isdigit():
            pairs.append((int(index), name))
    return tuple(name for _, name in sorted(pairs)) or STANDARD_100K_GENRES


def _release_year(date: str) -> int | None:
    """ml-100k release dates look like 01-Jan-1995: a year for titles that lack one."""
    tail = date.strip()[-4:]
    return int(tail) if tail.isdigit() and YEAR_MIN <= int(tail) <= YEAR_MAX else None


def _movies_100k(source: _Source, skipped: Counter[str]) -> dict[int, _MovieRow]:
    genre_names = _genres_100k(source)
    catalog: dict[int, _MovieRow] = {}
    for line in _text_lines(source, "u.item"):
        fields = line.split("|")
        if len(fields) != 5 + len(genre_names):
            skipped["movies.malformed"] += 1
            continue
        flags = fields[5:]
        if any(flag.strip() not in ("0", "1") for flag in flags):
            skipped["movies.malformed"] += 1
            continue
        names = [g for g, flag in zip(genre_names, flags, strict=True) if flag.strip() == "1"]
        genres = _clean_genres(names, skipped)
        _add_movie(catalog, skipped, fields[0], fields[1], genres, _release_year(fields[2]))
    return catalog


def _movies_dat(source: _Source, skipped: Counter[str]) -> dict[int, _MovieRow]:
    catalog: dict[int, _MovieRow] = {}
    for line in _text_lines(source, "movies.dat"):
        fields = line.split("::")
        if len(fields) < 3:
            skipped["movies.malformed"] += 1
            continue
        genres = _clean_genres(fields[-1].split("|"), skipped)
        _add_movie(catalog, skipped, fields[0], "::".join(fields[1:-1]), genres)
    return catalog


def _movies_csv(source: _Source, skipped: Counter[str]) -> dict[int, _MovieRow]:
    with source.open("movies.csv") as handle:
        text = _decode(handle.read()).lstrip("\ufeff")
    catalog: dict[int, _MovieRow] = {}
    for number, row in enumerate(csv.reader(io.StringIO(text, newline=""))):
        if number == 0 and row and row[0].strip() == "movieId":
            continue
        if not row or not "".join(row).strip():
            continue
        if len(row) != 3:
            skipped["movies.malformed"] += 1
            continue
        genres = _clean_genres(row[2].split("|"), skipped)
        _add_movie(catalog, skipped, row[0], row[1], genres)
    return catalog


LAYOUTS = (
    _Layout("ml-100k", "ml-100k", "u.data", "u.item", b"\t", _movies_100k),
    _Layout("ml-1m", "ml-1m, ml-10m", "ratings.dat", "movies.dat", b"::", _movies_dat),
    _Layout(
        "ml-latest",
        "ml-latest, ml-latest-small, ml-20m, ml-25m",
        "ratings.csv",
        "movies.csv",
        b",",
        _movies_csv,
    ),
)


def looked_for() -> str:
    """The files each layout needs, for messages that say what was searched for."""
    return "; ".join(f"{lay.ratings_file} + {lay.movies_file} ({lay.covers})" for lay in LAYOUTS)


def _layout_of(source: _Source) -> _Layout | None:
    """The layout whose ratings file is present; an incomplete one is an error, not None."""
    for layout in LAYOUTS:
        if source.has(layout.ratings_file):
            if not source.has(layout.movies_file):
                raise MovieLensFormatError(
                    f"{source} has {layout.ratings_file} but not {layout.movies_file}, "
                    f"which the {layout.name} layout needs for the movie catalog"
                )
            return layout
    return None


def _no_layout(path: Path) -> MovieLensFormatError:
    return MovieLensFormatError(
        f"no MovieLens data found in {path}; looked for {looked_for()}, "
        "at the top or inside one folder"
    )


def zip_prefixes(names: list[str]) -> list[str]:
    """Folders inside the archive (top first) that hold a ratings file."""
    markers = {layout.ratings_file for layout in LAYOUTS}
    prefixes = set()
    for name in names:
        pure = PurePosixPath(name)
        if pure.name in markers and len(pure.parts) <= 2 and "__MACOSX" not in pure.parts:
            prefixes.add("" if len(pure.parts) == 1 else pure.parts[0] + "/")
    return sorted(prefixes)


@contextlib.contextmanager
def _open_source(path: Path) -> Iterator[tuple[_Source, _Layout]]:
    """A folder, a folder with one data folder inside, or a zip (with or without top folder)."""
    if not path.exists():
        raise MovieLensFormatError(f"{path} does not exist")
    if path.is_dir():
        yield _folder_source(path)
        return
    if not zipfile.is_zipfile(path):
        raise MovieLensFormatError(f"{path} is neither a folder nor a .zip archive")
    with zipfile.ZipFile(path) as archive:
        for prefix in zip_prefixes(archive.namelist()):
            source = _ZipSource(archive, path, prefix)
            layout = _layout_of(source)
            if layout is not None:
                yield source, layout
                return
        raise _no_layout(path)


def _folder_source(path: Path) -> tuple[_Source, _Layout]:
    candidates = [path] + sorted(p for p in path.iterdir() if p.is_dir())
    found = []
    for folder in candidates:
        source = _FolderSource(folder)
        layout = _layout_of(source)
        if layout is not None:
            if folder == path:
                return source, layout
            found.append((source, layout))
    if len(found) > 1:
        names = ", ".join(str(source) for source, _ in found)
        raise MovieLensFormatError(f"{path} holds several MovieLens folders ({names}); pass one")
    if not found:
        raise _no_layout(path)
    return found[0]


# --------------------------------------------------------------------------- parsing


def _count_lines(block: bytes) -> int:
    """Lines in a block, the last one counted even without its newline."""
    return block.count(b"\n") + (0 if block.endswith(b"\n") else 1)


@dataclass
class _Batch:
    user: np.ndarray
    movie: np.ndarray
    rating: np.ndarray
    timestamp: np.ndarray

    def __len__(self) -> int:
        return len(self.user)

    def take(self, rows: np.ndarray) -> _Batch:
        """The rows a mask or an index array selects, in its order."""
        return _Batch(self.user[rows], self.movie[rows], self.rating[rows], self.timestamp[rows])


def _validate(values: np.ndarray, known: np.ndarray, skipped: Counter[str]) -> _Batch:
    """Keep rows with integer ids and timestamp, a half-star rating and a known movie."""
    keep = valid_ratings(values, known, skipped)
    user, movie, rating, stamp = values[keep].T
    return _Batch(user.astype(np.int64), movie.astype(np.int64), rating, stamp.astype(np.int64))


def _first_of_pairs(batch: _Batch) -> _Batch:
    """One row per (user, movie) pair of a block, the first in file order, sorted by pair:
    the primary key's order, so its B-tree is appended to rather than written all over.
    A block of ml-20m/ml-25m is sorted already, which costs one pass to see."""
    user, movie = batch.user, batch.movie
    if len(user) < 2:
        return batch
    if np.all((user[1:] > user[:-1]) | ((user[1:] == user[:-1]) & (movie[1:] > movie[:-1]))):
        return batch
    order = np.lexsort((movie, user))  # stable: a repeated pair keeps its file order
    user, movie = user[order], movie[order]
    first = np.ones(len(order), dtype=bool)
    first[1:] = (user[1:] != user[:-1]) | (movie[1:] != movie[:-1])
    return batch.take(order[first])


class _StoredPairs:
    """The pairs `ratings` held when a bulk load began (at most BULK_EXISTING_MAX of them):
    rows already stored are dropped before they are written, each pair counted once."""

    def __init__(self, users: np.ndarray, movies: np.ndarray, known: np.ndarray) -> None:
        slot = np.minimum(np.searchsorted(known, movies), max(len(known) - 1, 0))
        in_catalog = known[slot] == movies if len(known) else np.zeros(len(movies), dtype=bool)
        self.known = known  # a stored movie outside it cannot match a valid row anyway
        self.users = np.unique(users[in_catalog])
        user_slot = np.searchsorted(self.users, users[in_catalog])
        self.keys = np.sort(user_slot * len(known) + slot[in_catalog])
        self.seen = np.zeros(len(self.keys), dtype=bool)

    @property
    def matched(self) -> int:
        """Stored pairs the file has had so far."""
        return int(self.seen.sum())

    def drop_stored(self, batch: _Batch) -> _Batch:
        if not len(self.keys) or not len(batch):
            return batch
        user_slot = np.minimum(np.searchsorted(self.users, batch.user), len(self.users) - 1)
        key = user_slot * len(self.known) + np.searchsorted(self.known, batch.movie)
        at = np.minimum(np.searchsorted(self.keys, key), len(self.keys) - 1)
        stored = (self.users[user_slot] == batch.user) & (self.keys[at] == key)
        self.seen[at[stored]] = True
        return batch.take(~stored)


class _UserRuns:
    """Tells whether a file lists each user's ratings as one run of lines (every GroupLens
    ratings file but ml-100k's), which lets the PostgreSQL bulk load drop a repeat of an
    earlier block's pair on the client: it keeps the users whose run has ended and the
    movies of the run still open at the end of the last block."""

    def __init__(self) -> None:
        self.ended = np.empty(0, dtype=np.int64)
        self.open_user: int | None = None
        self.open_movies = np.empty(0, dtype=np.int64)

    def new_rows(self, batch: _Batch, last_user: int) -> _Batch | None:
        """The rows of a block (one per pair, sorted) that no earlier block had; None once a
        user comes back after their run ended, which this cannot check."""
        users = np.unique(batch.user)
        if np.isin(users, self.ended).any():
            return None
        if self.open_user is not None:
            again = (batch.user == self.open_user) & np.isin(batch.movie, self.open_movies)
            batch = batch.take(~again)
        ended = users[users != last_user]
        if self.open_user is not None and self.open_user != last_user:
            ended = np.append(ended, self.open_user)
        self.ended = np.union1d(self.ended, ended)
        movies = batch.movie[batch.user == last_user]
        if self.open_user == last_user:
            movies = np.concatenate([self.open_movies, movies])
        self.open_user, self.open_movies = last_user, movies
        return batch


# --------------------------------------------------------------------------- writers


class _RatingWriter(Protocol):
    """Takes validated ratings block by block; `finish` makes sure they are all in
    `ratings` and returns (distinct pairs of the file, rows added). Used as a context
    manager so a failure can abort a half-written COPY."""

    def __enter__(self) -> _RatingWriter: ...
    def __exit__(self, *exc_info: Any) -> None: ...
    def write(self, batch: _Batch) -> None: ...
    def finish(self) -> tuple[int, int]: ...


def _quote(conn: Connection, name: str) -> str:
    return conn.dialect.identifier_preparer.quote(name)


def _sqlite_insert(conn: Connection, head: str, batch: _Batch, tail: str = "") -> int:
    """`head` + multi-row VALUES (+ `tail`): SQLITE_ROWS rows a statement cost about a quarter
    of one statement a row, whose per-row binding dominates. Returns the rows changed."""
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

    def write(self, batch: _Batch) -> None:
        head = "INSERT OR IGNORE INTO temp._ml_stage VALUES "
        self.staged += _sqlite_insert(self.conn, head, _first_of_pairs(batch))

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
    """`ratings` empty or small: rows go straight in (ON CONFLICT DO NOTHING: the first row
    of a pair wins), with its secondary indexes dropped for the load and rebuilt from
    their own SQL at the end, a sort instead of a B-tree insert per row. Readers (WAL) see
    the table as it was, indexes included, until the commit."""

    def __init__(self, conn: Connection, stored: _StoredPairs) -> None:
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

    def write(self, batch: _Batch) -> None:
        batch = self.stored.drop_stored(_first_of_pairs(batch))
        self.added += _sqlite_insert(self.conn, _RATINGS_INSERT, batch, " ON CONFLICT DO NOTHING")

    def finish(self) -> tuple[int, int]:
        for _, sql in self.indexes:
            self.conn.exec_driver_sql(sql)
        return self.stored.matched + self.added, self.added


_PG_SIGNATURE = b"PGCOPY\n\xff\r\n\x00" + b"\x00" * 8
_PG_TRAILER = b"\xff\xff"


def _pg_row(kinds: str) -> np.dtype:
    """COPY's binary tuple of int8 (`i`) and float8 (`f`) fields, as a numpy record."""
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
        self.conn.exec_driver_sql(
            "CREATE TEMP TABLE _ml_stage (user_id bigint, movie_id bigint, rating float8,"
            " ts bigint, seq bigint) ON COMMIT DROP"
        )
        self.copy = _PgCopy(self.conn, "COPY _ml_stage FROM STDIN (FORMAT BINARY)", "iifii")
        return self

    def __exit__(self, *exc_info: Any) -> None:
        if exc_info[0] is not None:
            self.copy.close(*exc_info)

    def write(self, batch: _Batch) -> None:
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


@dataclass
class _PgRebuild:
    """What a bulk load drops from `ratings` and puts back, read from the catalog so the
    very definitions (names, ON DELETE, index method) come back."""

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


class _PostgresBulkWriter:
    """`ratings` empty or small, locked for the load: "Populating a Database" of the
    PostgreSQL manual. Its keys, indexes and foreign keys are dropped; rows are COPYed
    straight into it while the file lists each user's ratings together (repeats dropped
    here, see _UserRuns), else staged and inserted at the end; then the keys are built by
    sorting and the table is ANALYZEd. All in the import's transaction: nobody sees the
    table without its constraints, or half loaded."""

    def __init__(self, conn: Connection, stored: _StoredPairs, rebuild: _PgRebuild) -> None:
        self.conn, self.stored, self.rebuild = conn, stored, rebuild
        self.runs: _UserRuns | None = _UserRuns()
        self.direct = self.seq = 0

    def __enter__(self) -> _PostgresBulkWriter:
        # maintenance_work_mem is left as it is: raised to 512MB or 1GB, the index builds of
        # a 25M-row load took 20-30% longer here (2 cores) than with the default 64MB
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

    def write(self, batch: _Batch) -> None:
        if not len(batch):
            return
        last_user = int(batch.user[-1])
        batch = self.stored.drop_stored(_first_of_pairs(batch))
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
        self.conn.exec_driver_sql(
            "CREATE TEMP TABLE _ml_stage (user_id bigint, movie_id bigint, rating float8,"
            " ts bigint, seq bigint) ON COMMIT DROP"
        )
        self.copy = _PgCopy(self.conn, "COPY _ml_stage FROM STDIN (FORMAT BINARY)", "iifii")

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
    """Rows in `ratings`, counted up to limit + 1 only: cheap on a big table."""
    return int(
        conn.exec_driver_sql(
            f"SELECT count(*) FROM (SELECT 1 FROM ratings LIMIT {int(limit) + 1}) AS head"
        ).scalar()
        or 0
    )


def _stored_pairs(conn: Connection, known: np.ndarray, limit: int) -> _StoredPairs | None:
    """The pairs in `ratings` when there are at most `limit` of them, else None."""
    if _bounded_count(conn, limit) > limit:
        return None
    cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
    try:  # plain tuples: numpy reads them far faster than SQLAlchemy rows
        cursor.execute("SELECT user_id, movie_id FROM ratings")
        pairs = np.array(cursor.fetchall(), dtype=np.int64).reshape(-1, 2)
    finally:
        cursor.close()
    return _StoredPairs(pairs[:, 0], pairs[:, 1], known)


def _pg_lock_for_bulk(conn: Connection) -> Any:
    """ACCESS EXCLUSIVE on `movies` and `ratings`, in a savepoint the caller ends, or None
    when they were not free within PG_LOCK_WAIT seconds. NOWAIT, retried: the import
    already holds weaker locks on both tables (it read them, it inserted movies), and
    waiting for the strong ones while a writer holding one waits for the other would be
    a deadlock; not waiting means whoever holds them first goes on, and never fails."""
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


def _postgres_writer(conn: Connection, known: np.ndarray, limit: int) -> _RatingWriter:
    """The bulk path when `ratings` is small and both tables can be locked (a long reader,
    say a training run, is not queued behind), else the incremental one."""
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
    return _PostgresBulkWriter(conn, stored, rebuild)


def _sqlite_writer(conn: Connection, known: np.ndarray, limit: int) -> _RatingWriter:
    """The bulk path when `ratings` is small, else the incremental one. The write lock is
    taken first (SQLite has one writer), so what is counted is what the import writes to."""
    driver: Any = conn.connection.driver_connection
    if not driver.in_transaction:  # pysqlite begins only before DML, not before DDL
        conn.exec_driver_sql("BEGIN IMMEDIATE")
    stored = _stored_pairs(conn, known, limit)
    if stored is None:
        return _SqliteRatingWriter(conn)
    return _SqliteBulkWriter(conn, stored)


def _ratings_writer(conn: Connection, known: np.ndarray, file_bytes: int) -> _RatingWriter:
    """Bulk when the file brings at least as many ratings as the table holds (and those fit
    in memory as keys): rebuilding its indexes then costs less than updating them row by
    row. Otherwise incremental, which never drops anything."""
    limit = min(BULK_EXISTING_MAX, file_bytes // RATING_LINE_BYTES)
    if conn.dialect.name == "postgresql":
        return _postgres_writer(conn, known, limit)
    return _sqlite_writer(conn, known, limit)


# --------------------------------------------------------------------------- import


def _insert_ignore(conn: Connection, table: Any, rows: list[dict[str, Any]]) -> None:
    """INSERT ... ON CONFLICT DO NOTHING in batches, in the connection's dialect."""
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    for start in range(0, len(rows), MOVIE_BATCH):
        stmt = dialect.insert(table).on_conflict_do_nothing()
        conn.execute(stmt, rows[start : start + MOVIE_BATCH])


def _import_movies(
    conn: Connection, catalog: dict[int, _MovieRow], report: ImportReport
) -> np.ndarray:
    """Add the movies the database lacks (with their genres); return every known id, sorted."""
    existing = set(conn.scalars(select(Movie.id)))
    new = [movie for movie_id, movie in catalog.items() if movie_id not in existing]
    before = conn.scalar(select(func.count()).select_from(Movie)) or 0
    _insert_ignore(
        conn, Movie.__table__, [{"id": m.id, "title": m.title, "year": m.year} for m in new]
    )
    genre_rows = [{"movie_id": m.id, "genre": g} for m in new for g in m.genres]
    _insert_ignore(conn, MovieGenre.__table__, genre_rows)
    after = conn.scalar(select(func.count()).select_from(Movie)) or 0
    report.movies_added = after - before
    report.movies_existing = len(catalog) - report.movies_added
    return np.array(sorted(existing | set(catalog)), dtype=np.int64)


def _import_ratings(
    conn: Connection,
    source: _Source,
    layout: _Layout,
    known: np.ndarray,
    report: ImportReport,
    skipped: Counter[str],
    on_progress: Progress | None,
) -> None:
    """Stream and validate the ratings file block by block into the writer, which leaves
    them all in `ratings` when it finishes."""
    valid = 0
    size = source.size(layout.ratings_file)
    on_read = byte_counter(f"ratings {layout.ratings_file}", size, on_progress)
    writer = _ratings_writer(conn, known, size)
    with source.open(layout.ratings_file) as handle, writer:
        for number, raw_block in enumerate(line_blocks(handle, BLOCK_BYTES, on_read)):
            block = drop_header(raw_block) if number == 0 else raw_block
            if not block:
                continue
            report.ratings_seen += _count_lines(block)
            values = parse_block(block, layout.ratings_sep, skipped, count_blank_lines=True)
            batch = _validate(values, known, skipped)
            valid += len(batch)
            writer.write(batch)
        distinct, added = writer.finish()
    skipped["ratings.duplicate"] += valid - distinct
    report.ratings_added = added
    report.ratings_existing = distinct - added


def byte_counter(
    label: str, total: int | None, on_progress: Progress | None
) -> Callable[[int], None]:
    """Adds up the bytes read and hands the running total to ``on_progress``."""
    done = 0

    def on_read(amount: int) -> None:
        nonlocal done
        done += amount
        if on_progress is not None:
            on_progress(label, done, total)

    return on_read


# Connection flags an SQLite import sets for its own connection, and puts back after.
_SQLITE_IMPORT_PRAGMAS = {"foreign_keys": "0", "ignore_check_constraints": "1"}


@contextlib.contextmanager
def _import_transaction(engine: Engine) -> Iterator[Connection]:
    """`engine.begin()`; on SQLite, with the write lock from the start (BEGIN IMMEDIATE) and
    the per-row checks it makes redundant switched off for this connection only.

    Holding the lock before the catalog is read means no movie can be deleted until the
    commit, and every rating written has passed `valid_ratings` against that catalog (or
    the movies added with it) and has a rating of `k * 0.5` for an integer k in 1..10 (see
    `_sqlite_insert`). So the foreign key and the half-star CHECK hold by construction and
    SQLite need not look them up per row (`foreign_keys` can only change outside a
    transaction). The flags are put back afterwards; a connection that cannot have them
    back is dropped from the pool, never reused without its foreign keys."""
    if engine.dialect.name != "sqlite":
        with engine.begin() as conn:
            yield conn
        return
    with engine.connect() as conn:
        before = {
            name: int(conn.exec_driver_sql(f"PRAGMA {name}").scalar_one())
            for name in _SQLITE_IMPORT_PRAGMAS
        }
        try:
            for name, value in _SQLITE_IMPORT_PRAGMAS.items():
                conn.exec_driver_sql(f"PRAGMA {name} = {value}")
            conn.commit()  # ends SQLAlchemy's autobegun transaction; SQLite had none open
            with conn.begin():
                conn.exec_driver_sql("BEGIN IMMEDIATE")
                yield conn
        finally:
            try:
                for name, old in before.items():
                    conn.exec_driver_sql(f"PRAGMA {name} = {old}")
                conn.commit()
            except BaseException:
                conn.invalidate()
                raise


def import_movielens(
    engine: Engine, path: Path, on_progress: Progress | None = None
) -> ImportReport:
    """Load a MovieLens folder or .zip into movies, movie_genres and ratings, idempotently.

    One transaction for the whole run: either the catalog and its ratings land together,
    or nothing does. ``on_progress`` hears how far the ratings file has been read.
    """
    started = time.perf_counter()
    skipped: Counter[str] = Counter()
    with _open_source(Path(path)) as (source, layout):
        report = ImportReport(layout=layout.name, source=str(source))
        catalog = layout.read_movies(source, skipped)
        report.movies_seen = len(catalog) + skipped["movies.malformed"]
        report.movies_seen += skipped["movies.duplicate_id"]
        with _import_transaction(engine) as conn:
            known = _import_movies(conn, catalog, report)
            _import_ratings(conn, source, layout, known, report, skipped, on_progress)
    report.skipped = {reason: n for reason, n in sorted(skipped.items()) if n}
    report.seconds = time.perf_counter() - started
    return report
