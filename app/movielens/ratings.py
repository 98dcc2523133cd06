"""Rating lines parsed and validated in blocks with numpy, and a whole data set read
without a database (offline evaluation), by the importer's rules; what is dropped is
counted in ``skipped``.
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import numpy as np

from app.movielens.files import ID_LIMIT, Layout, Source, open_source

BLOCK_BYTES = 16 * 1024 * 1024
_ONE_BYTE_SEP = b"\x1f"  # stand-in for the two-byte "::" of the .dat files


@dataclass
class Ratings:
    users: np.ndarray
    movies: np.ndarray
    ratings: np.ndarray
    timestamps: np.ndarray
    catalog: np.ndarray
    name: str = ""
    layout: str = ""
    skipped: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.users.size)

    def subset(self, keep: np.ndarray, name: str | None = None) -> Ratings:
        return Ratings(
            self.users[keep],
            self.movies[keep],
            self.ratings[keep],
            self.timestamps[keep],
            self.catalog,
            name if name is not None else self.name,
            self.layout,
        )


def line_blocks(
    handle: IO[bytes], block_bytes: int = BLOCK_BYTES, on_read: Callable[[int], None] | None = None
) -> Iterator[bytes]:
    """Blocks of whole lines, bounded memory; ``on_read`` hears each chunk's size."""
    rest = b""
    while chunk := handle.read(block_bytes):
        if on_read is not None:
            on_read(len(chunk))
        data = rest + chunk
        cut = data.rfind(b"\n") + 1
        rest, data = data[cut:], data[:cut]
        if data:
            yield data
    if rest:
        yield rest


def drop_header(block: bytes) -> bytes:
    """ratings.csv starts with `userId,...` (maybe after a BOM): drop that line."""
    block = block.removeprefix(b"\xef\xbb\xbf")
    if block[:6].lower() == b"userid":
        newline = block.find(b"\n")
        return b"" if newline < 0 else block[newline + 1 :]
    return block


def parse_block(
    block: bytes, sep: bytes, skipped: Counter[str], count_blank_lines: bool
) -> np.ndarray:
    """(n, 4) float64 rows of (user, movie, rating, timestamp): parsed whole by numpy, line
    by line (bad lines counted) only when a block has a bad or (counted) blank line."""
    block = block.replace(b"\r", b"")
    fast = _parse_fast(block, sep, blank_lines_ok=not count_blank_lines)
    return fast if fast is not None else _parse_slow(block, sep, skipped, count_blank_lines)


def _parse_fast(block: bytes, sep: bytes, blank_lines_ok: bool) -> np.ndarray | None:
    if len(sep) > 1:
        if _ONE_BYTE_SEP in block:
            return None
        block, sep = block.replace(sep, _ONE_BYTE_SEP), _ONE_BYTE_SEP
    buffer = np.frombuffer(block, dtype=np.uint8)
    ends = np.flatnonzero(buffer == ord("\n"))
    if not block.endswith(b"\n"):
        ends = np.append(ends, len(block))
    starts = np.concatenate(([0], ends[:-1] + 1))
    filled = ends > starts
    if not blank_lines_ok and not filled.all():
        return None
    seps = np.flatnonzero(buffer == sep[0])
    per_line = np.searchsorted(seps, ends) - np.searchsorted(seps, starts)
    if not np.all(per_line[filled] == 3):
        return None
    digits = _parse_digits(buffer, starts[filled], ends[filled], seps.reshape(-1, 3))
    if digits is not None:
        return digits
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:
            values = np.fromstring(block.replace(sep, b" "), dtype=np.float64, sep=" ")
        except (ValueError, DeprecationWarning):
            return None
    if values.size != 4 * int(filled.sum()):
        return None
    return values.reshape(-1, 4)


def _field_digits(buffer: np.ndarray, begin: np.ndarray, end: np.ndarray) -> np.ndarray | None:
    """The unsigned integers in buffer[begin:end] per row (int64), or None if a field is
    empty, holds anything but ASCII digits, or has more than 18 of them."""
    length = end - begin
    if not len(length):
        return np.zeros(0, dtype=np.int64)
    width = int(length.max())
    if int(length.min()) < 1 or width > 18:
        return None
    # right-aligned windows of `width` bytes; places before the field count as '0'
    offsets = np.arange(-width, 0)
    window = buffer[np.maximum(end[:, None] + offsets, 0)].astype(np.int64) - ord("0")
    window[offsets[None, :] < -length[:, None]] = 0
    if ((window < 0) | (window > 9)).any():
        return None
    return window @ (10 ** np.arange(width - 1, -1, -1, dtype=np.int64))


def _parse_digits(
    buffer: np.ndarray, starts: np.ndarray, ends: np.ndarray, seps: np.ndarray
) -> np.ndarray | None:
    """The common case without float parsing: three unsigned integers and a rating such as
    `4` or `4.50`; exactly what `np.fromstring` gives (one correctly rounded division), None
    for other text."""
    user = _field_digits(buffer, starts, seps[:, 0])
    movie = _field_digits(buffer, seps[:, 0] + 1, seps[:, 1])
    stamp = _field_digits(buffer, seps[:, 2] + 1, ends)
    if user is None or movie is None or stamp is None:
        return None
    begin, end = seps[:, 1] + 1, seps[:, 2]
    if len(begin) and int((end - begin).max()) > 6:
        return None
    dot = end.copy()  # the '.' of each rating, or its end when it has none
    for place in range(1, 6):
        at = np.minimum(begin + place, len(buffer) - 1)
        dot = np.where((begin + place < end) & (buffer[at] == ord(".")) & (dot == end), at, dot)
    decimals = np.where(dot < end, end - dot - 1, 0)
    has = dot < end
    if len(decimals) and (int(decimals.max()) > 3 or (has & (decimals == 0)).any()):
        return None
    whole = _field_digits(buffer, begin, dot)
    fraction = np.zeros(len(begin), dtype=np.int64)
    if has.any():
        digits = _field_digits(buffer, dot[has] + 1, end[has])
        if digits is None:
            return None
        fraction[has] = digits
    if whole is None:
        return None
    scale = 10**decimals
    rating = (whole * scale + fraction) / scale
    return np.stack([user, movie, rating, stamp], axis=1).astype(np.float64)


def _parse_slow(
    block: bytes, sep: bytes, skipped: Counter[str], count_blank_lines: bool
) -> np.ndarray:
    lines = block.split(b"\n")
    if block.endswith(b"\n"):
        lines.pop()
    rows: list[tuple[float, float, float, float]] = []
    for line in lines:
        if not line.strip():
            if count_blank_lines:
                skipped["ratings.empty_line"] += 1
            continue
        fields = line.split(sep)
        try:
            if len(fields) != 4:
                raise ValueError(line)
            rows.append((float(fields[0]), float(fields[1]), float(fields[2]), float(fields[3])))
        except ValueError:
            skipped["ratings.malformed"] += 1
    return np.array(rows, dtype=np.float64).reshape(-1, 4)


def valid_ratings(values: np.ndarray, catalog: np.ndarray, skipped: Counter[str]) -> np.ndarray:
    """Rows to keep: integer ids and timestamp, a half star in [0.5, 5], a movie of the
    sorted ``catalog``; what is dropped is counted by reason."""
    user, movie, rating, stamp = values.T
    with np.errstate(invalid="ignore"):
        ids = np.isfinite(values).all(axis=1)
        for column, low in ((user, 1), (movie, 1), (stamp, 0)):
            ids &= (column == np.floor(column)) & (column >= low) & (column < ID_LIMIT)
        halves = rating * 2
        good = (halves == np.round(halves)) & (halves >= 1) & (halves <= 10)
    skipped["ratings.malformed"] += int((~ids).sum())
    skipped["ratings.bad_rating"] += int((ids & ~good).sum())
    keep = ids & good
    movie_ids = np.where(keep, movie, 0).astype(np.int64)
    slot = np.minimum(np.searchsorted(catalog, movie_ids), max(len(catalog) - 1, 0))
    in_catalog = catalog[slot] == movie_ids if len(catalog) else np.zeros_like(keep)
    skipped["ratings.unknown_movie"] += int((keep & ~in_catalog).sum())
    return keep & in_catalog


def _read_rows(source: Source, layout: Layout, skipped: Counter[str]) -> np.ndarray:
    parts = []
    with source.open(layout.ratings_file) as handle:
        for number, block in enumerate(line_blocks(handle)):
            if number == 0 and layout.name == "ml-latest":
                block = drop_header(block)
            parts.append(parse_block(block, layout.ratings_sep, skipped, count_blank_lines=False))
    return np.concatenate(parts) if parts else np.zeros((0, 4))


def _first_of_pairs(users: np.ndarray, movies: np.ndarray) -> np.ndarray:
    """Indices (in file order) of the first row of each (user, movie) pair."""
    order = np.lexsort((np.arange(users.size), movies, users))
    first = np.ones(order.size, dtype=bool)
    first[1:] = (users[order][1:] != users[order][:-1]) | (movies[order][1:] != movies[order][:-1])
    return np.sort(order[first])


def read_movielens(path: str | Path) -> Ratings:
    """All usable ratings and the catalog of a MovieLens folder or .zip (any layout)."""
    path = Path(path)
    with open_source(path) as (source, layout):
        return _read(source, layout, name=path.stem if path.is_file() else path.name)


def _read(source: Source, layout: Layout, name: str) -> Ratings:
    skipped: Counter[str] = Counter()
    catalog = np.array(sorted(layout.read_movies(source, skipped)), dtype=np.int64)
    values = _read_rows(source, layout, skipped)
    values = values[valid_ratings(values, catalog, skipped)]
    users, movies = values[:, 0].astype(np.int64), values[:, 1].astype(np.int64)
    first = _first_of_pairs(users, movies)
    skipped["ratings.duplicate"] += int(users.size - first.size)
    return Ratings(
        users[first],
        movies[first],
        values[first, 2].astype(np.float32),
        values[first, 3].astype(np.int64),
        catalog,
        name=name,
        layout=layout.name,
        skipped={reason: n for reason, n in sorted(skipped.items()) if n},
    )
