"""MovieLens files: where they are (a folder, one inside it, a .zip), which layout they
follow (`LAYOUTS`), and the movie catalog each layout writes. The importer and offline
evaluation both read through here, so they see the same movies.
"""

from __future__ import annotations

import contextlib
import csv
import io
import re
import zipfile
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Protocol

ID_LIMIT = 2**53  # ids arrive as float64; above this they would lose precision
# (what is being read, bytes so far, bytes in all if known), drawn by the caller
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
_YEAR_RE = re.compile(r"\((\d{4})(?:\s*[-\u2013]\s*(?:\d{4})?\s*)?\)$")


def byte_counter(
    label: str, total: int | None, on_progress: Progress | None
) -> Callable[[int], None]:
    done = 0

    def on_read(amount: int) -> None:
        nonlocal done
        done += amount
        if on_progress is not None:
            on_progress(label, done, total)

    return on_read


class MovieLensFormatError(ValueError):
    """The path holds no MovieLens layout we know, or the layout is incomplete."""


@dataclass(frozen=True)
class MovieRow:
    id: int
    title: str
    year: int | None
    genres: tuple[str, ...]


class Source(Protocol):
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


@dataclass(frozen=True)
class Layout:
    name: str
    covers: str
    ratings_file: str
    movies_file: str
    ratings_sep: bytes
    read_movies: Callable[[Source, Counter[str]], dict[int, MovieRow]]


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
    catalog: dict[int, MovieRow],
    skipped: Counter[str],
    raw_id: str,
    raw_title: str,
    genres: tuple[str, ...],
    fallback_year: int | None = None,
) -> None:
    """Validate one catalog entry; the first entry of an id wins, as for ratings."""
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
    catalog[movie_id] = MovieRow(movie_id, title, year or fallback_year, genres)


def _text_lines(source: Source, name: str) -> Iterator[str]:
    with source.open(name) as handle:
        for raw in handle:
            line = _decode(raw).rstrip("\r\n")
            if line.strip():
                yield line


def _genres_100k(source: Source) -> tuple[str, ...]:
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


def _movies_100k(source: Source, skipped: Counter[str]) -> dict[int, MovieRow]:
    genre_names = _genres_100k(source)
    catalog: dict[int, MovieRow] = {}
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


def _movies_dat(source: Source, skipped: Counter[str]) -> dict[int, MovieRow]:
    catalog: dict[int, MovieRow] = {}
    for line in _text_lines(source, "movies.dat"):
        fields = line.split("::")
        if len(fields) < 3:
            skipped["movies.malformed"] += 1
            continue
        genres = _clean_genres(fields[-1].split("|"), skipped)
        _add_movie(catalog, skipped, fields[0], "::".join(fields[1:-1]), genres)
    return catalog


def _movies_csv(source: Source, skipped: Counter[str]) -> dict[int, MovieRow]:
    with source.open("movies.csv") as handle:
        text = _decode(handle.read()).lstrip("\ufeff")
    catalog: dict[int, MovieRow] = {}
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
    Layout("ml-100k", "ml-100k", "u.data", "u.item", b"\t", _movies_100k),
    Layout("ml-1m", "ml-1m, ml-10m", "ratings.dat", "movies.dat", b"::", _movies_dat),
    Layout(
        "ml-latest",
        "ml-latest, ml-latest-small, ml-20m, ml-25m",
        "ratings.csv",
        "movies.csv",
        b",",
        _movies_csv,
    ),
)


def looked_for() -> str:
    return "; ".join(f"{lay.ratings_file} + {lay.movies_file} ({lay.covers})" for lay in LAYOUTS)


def _layout_of(source: Source) -> Layout | None:
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
    markers = {layout.ratings_file for layout in LAYOUTS}
    prefixes = set()
    for name in names:
        pure = PurePosixPath(name)
        if pure.name in markers and len(pure.parts) <= 2 and "__MACOSX" not in pure.parts:
            prefixes.add("" if len(pure.parts) == 1 else pure.parts[0] + "/")
    return sorted(prefixes)


@contextlib.contextmanager
def open_source(path: Path) -> Iterator[tuple[Source, Layout]]:
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


def _folder_source(path: Path) -> tuple[Source, Layout]:
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
