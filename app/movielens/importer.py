"""Import of the GroupLens MovieLens data sets, in one transaction (docs/design.md).

The ratings file streams in blocks validated with numpy, to the bulk or the incremental
writer (`ratings_writer`). Stored rows are left as they are (a second run adds nothing), a
pair repeated in the file keeps its first occurrence, and every row that cannot be used is
counted per reason in `ImportReport.skipped`. Movie ids are taken as they are: ml-100k and
the other sets number movies differently, so do not import both into one database.
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import Connection, Engine, func, select
from sqlalchemy.dialects import postgresql, sqlite

from app.models import Movie, MovieGenre
from app.movielens.files import Layout, MovieRow, Progress, Source, byte_counter, open_source
from app.movielens.ratings import drop_header, line_blocks, parse_block
from app.movielens.rows import count_lines, validate_block
from app.movielens.writers import ratings_writer

BLOCK_BYTES = 2 * 1024 * 1024  # about 100k rating lines: bounded memory, few round trips
MOVIE_BATCH = 5_000


@dataclass
class ImportReport:
    """What one import did; `skipped` maps a reason such as `ratings.bad_rating` to a count."""

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


def _insert_ignore(conn: Connection, table: Any, rows: list[dict[str, Any]]) -> None:
    """INSERT ... ON CONFLICT DO NOTHING in batches, in the connection's dialect."""
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    for start in range(0, len(rows), MOVIE_BATCH):
        stmt = dialect.insert(table).on_conflict_do_nothing()
        conn.execute(stmt, rows[start : start + MOVIE_BATCH])


def _import_movies(
    conn: Connection, catalog: dict[int, MovieRow], report: ImportReport
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
    source: Source,
    layout: Layout,
    known: np.ndarray,
    report: ImportReport,
    skipped: Counter[str],
    on_progress: Progress | None,
) -> None:
    valid = 0
    size = source.size(layout.ratings_file)
    on_read = byte_counter(f"ratings {layout.ratings_file}", size, on_progress)
    writer = ratings_writer(conn, known, size)
    with source.open(layout.ratings_file) as handle, writer:
        for number, raw_block in enumerate(line_blocks(handle, BLOCK_BYTES, on_read)):
            block = drop_header(raw_block) if number == 0 else raw_block
            if not block:
                continue
            report.ratings_seen += count_lines(block)
            values = parse_block(block, layout.ratings_sep, skipped, count_blank_lines=True)
            batch = validate_block(values, known, skipped)
            valid += len(batch)
            writer.write(batch)
        distinct, added = writer.finish()
    skipped["ratings.duplicate"] += valid - distinct
    report.ratings_added = added
    report.ratings_existing = distinct - added


# Connection flags an SQLite import sets for its own connection, and puts back after.
_SQLITE_IMPORT_PRAGMAS = {"foreign_keys": "0", "ignore_check_constraints": "1"}


@contextlib.contextmanager
def _import_transaction(engine: Engine) -> Iterator[Connection]:
    """`engine.begin()`; on SQLite with the write lock from the start, so no movie can go
    before the commit: every rating written passed `valid_ratings` against that catalog as
    a half star, and the foreign key and CHECK, which hold by construction, are switched off
    for this connection. A connection that cannot have them back is dropped from the pool."""
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
    """Load a MovieLens folder or .zip into movies, movie_genres and ratings, idempotently;
    ``on_progress`` hears how far the ratings file has been read."""
    started = time.perf_counter()
    skipped: Counter[str] = Counter()
    with open_source(Path(path)) as (source, layout):
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
