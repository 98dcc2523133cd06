"""Bulk import of the GroupLens MovieLens data sets (their download: downloads.py).

The import streams the ratings file in blocks (never the whole file in memory), validates
each block with numpy, and hands the good rows to the fastest bulk path of the backend:
binary `COPY` into a temp table on PostgreSQL, large `executemany` batches on SQLite.
Everything lands in one transaction, so a crash never leaves half a catalog behind.

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


def _validate(values: np.ndarray, known: np.ndarray, skipped: Counter[str]) -> _Batch:
    """Keep rows with integer ids and timestamp, a half-star rating and a known movie."""
    keep = valid_ratings(values, known, skipped)
    user, movie, rating, stamp = values[keep].T
    return _Batch(user.astype(np.int64), movie.astype(np.int64), rating, stamp.astype(np.int64))


# --------------------------------------------------------------------------- writers


class _RatingWriter(Protocol):
    """Stages validated ratings; `finish` moves them into `ratings` and returns
    (distinct pairs staged, rows added). Used as a context manager so a failure can
    abort a half-written COPY."""

    def __enter__(self) -> _RatingWriter: ...
    def __exit__(self, *exc_info: Any) -> None: ...
    def write(self, batch: _Batch) -> None: ...
    def finish(self) -> tuple[int, int]: ...


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
        rows = list(
            zip(
                batch.user.tolist(),
                batch.movie.tolist(),
                batch.rating.tolist(),
                batch.timestamp.tolist(),
                strict=True,
            )
        )
        if rows:
            result = self.conn.exec_driver_sql(
                "INSERT OR IGNORE INTO temp._ml_stage VALUES (?, ?, ?, ?)", rows
            )
            self.staged += max(result.rowcount, 0)

    def finish(self) -> tuple[int, int]:
        result = self.conn.exec_driver_sql(
            'INSERT INTO ratings (user_id, movie_id, rating, "timestamp")'
            " SELECT user_id, movie_id, rating, ts FROM temp._ml_stage WHERE true"
            " ON CONFLICT DO NOTHING"
        )
        added = result.rowcount
        self.conn.exec_driver_sql("DROP TABLE temp._ml_stage")
        return self.staged, added


_PG_SIGNATURE = b"PGCOPY\n\xff\r\n\x00" + b"\x00" * 8
_PG_TRAILER = b"\xff\xff"
_PG_ROW = np.dtype(
    [("fields", ">i2")]
    + [
        item
        for name, kind in (("u", ">i8"), ("m", ">i8"), ("r", ">f8"), ("t", ">i8"), ("s", ">i8"))
        for item in ((f"{name}_len", ">i4"), (name, kind))
    ]
)


class _PostgresRatingWriter:
    """One binary COPY into an unkeyed temp table; dedupe and insert in one statement.

    The rows are laid out by numpy in COPY's binary format: no per-row Python work.
    """

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.stack = contextlib.ExitStack()
        self.seq = 0

    def __enter__(self) -> _PostgresRatingWriter:
        self.conn.exec_driver_sql("SET LOCAL work_mem = '256MB'")
        self.conn.exec_driver_sql(
            "CREATE TEMP TABLE _ml_stage (user_id bigint, movie_id bigint, rating float8,"
            " ts bigint, seq bigint) ON COMMIT DROP"
        )
        driver: Any = self.conn.connection.driver_connection
        cursor = self.stack.enter_context(driver.cursor())
        self.copy = self.stack.enter_context(
            cursor.copy("COPY _ml_stage FROM STDIN (FORMAT BINARY)")
        )
        self.copy.write(_PG_SIGNATURE)
        return self

    def __exit__(self, *exc_info: Any) -> None:
        """On an error psycopg gets it too, so it aborts the COPY instead of committing it."""
        self.stack.__exit__(*exc_info)

    def write(self, batch: _Batch) -> None:
        if not len(batch.user):
            return
        rows = np.empty(len(batch.user), dtype=_PG_ROW)
        rows["fields"] = 5
        for name in ("u", "m", "r", "t", "s"):
            rows[f"{name}_len"] = 8
        rows["u"], rows["m"], rows["r"] = batch.user, batch.movie, batch.rating
        rows["t"] = batch.timestamp
        rows["s"] = np.arange(self.seq, self.seq + len(rows))
        self.seq += len(rows)
        self.copy.write(rows.tobytes())

    def finish(self) -> tuple[int, int]:
        self.copy.write(_PG_TRAILER)
        self.stack.close()
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


def _ratings_writer(conn: Connection) -> _RatingWriter:
    if conn.dialect.name == "postgresql":
        return _PostgresRatingWriter(conn)
    return _SqliteRatingWriter(conn)


def _import_ratings(
    conn: Connection,
    source: _Source,
    layout: _Layout,
    known: np.ndarray,
    report: ImportReport,
    skipped: Counter[str],
    on_progress: Progress | None,
) -> None:
    """Stream, validate and stage the ratings file block by block, then insert in one go."""
    valid = 0
    on_read = byte_counter(
        f"ratings {layout.ratings_file}", source.size(layout.ratings_file), on_progress
    )
    with source.open(layout.ratings_file) as handle, _ratings_writer(conn) as writer:
        for number, raw_block in enumerate(line_blocks(handle, BLOCK_BYTES, on_read)):
            block = drop_header(raw_block) if number == 0 else raw_block
            if not block:
                continue
            report.ratings_seen += _count_lines(block)
            values = parse_block(block, layout.ratings_sep, skipped, count_blank_lines=True)
            batch = _validate(values, known, skipped)
            valid += len(batch.user)
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
        with engine.begin() as conn:
            known = _import_movies(conn, catalog, report)
            _import_ratings(conn, source, layout, known, report, skipped, on_progress)
    report.skipped = {reason: n for reason, n in sorted(skipped.items()) if n}
    report.seconds = time.perf_counter() - started
    return report
