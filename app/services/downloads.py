"""Download of the GroupLens MovieLens archives: apart from the import, the only part that
needs the network (the import works offline on a zip or folder already there).
"""

from __future__ import annotations

import os
import tempfile
import zipfile
from pathlib import Path
from typing import IO
from urllib.parse import urlsplit

import httpx

from app.movielens.files import Progress, byte_counter, looked_for, zip_prefixes

GROUPLENS_URL = "https://files.grouplens.org/datasets/movielens"
DATASETS = ("ml-100k", "ml-1m", "ml-10m", "ml-20m", "ml-25m", "ml-latest", "ml-latest-small")


class DownloadError(RuntimeError):
    """The archive could not be fetched; the message says how to get it by hand."""


def _zip_data_folder(archive: Path, dest_dir: Path) -> Path:
    """Unzip next to the archive and return the folder that holds the data files."""
    with zipfile.ZipFile(archive) as zipped:
        prefixes = zip_prefixes(zipped.namelist())
        if not prefixes:
            raise DownloadError(f"{archive} holds no MovieLens data ({looked_for()})")
        zipped.extractall(dest_dir)
    return dest_dir / prefixes[0].rstrip("/") if prefixes[0] else dest_dir


_BY_HAND = "download {url} by hand and run `saerec import-movielens PATH` on it"


def _fetch(url: str, target: IO[bytes], timeout: float, on_progress: Progress | None) -> None:
    """Stream the body to target; any failure becomes a DownloadError with the way out."""
    hint = _BY_HAND.format(url=url)
    try:
        with httpx.stream("GET", url, timeout=timeout, follow_redirects=True) as response:
            if response.status_code != 200:
                raise DownloadError(f"{url} answered HTTP {response.status_code}; {hint}")
            total = int(response.headers.get("content-length", 0)) or None
            on_read = byte_counter(url.rsplit("/", 1)[-1], total, on_progress)
            for chunk in response.iter_bytes(1 << 20):
                target.write(chunk)
                on_read(len(chunk))
    except httpx.HTTPError as exc:
        host = urlsplit(url).netloc
        raise DownloadError(f"cannot reach {host}: {exc!r}; {hint}") from exc


def download_movielens(
    name: str,
    dest_dir: Path,
    base_url: str = GROUPLENS_URL,
    timeout: float = 30.0,
    on_progress: Progress | None = None,
) -> Path:
    """Fetch `{base_url}/{name}.zip` (streamed to a temp file renamed when complete), unzip
    it into dest_dir and return the data folder."""
    if name not in DATASETS:
        raise ValueError(
            f"unknown MovieLens data set {name!r}; choose one of {', '.join(DATASETS)}"
        )
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    url = f"{base_url.rstrip('/')}/{name}.zip"
    archive = dest_dir / f"{name}.zip"
    handle, name_part = tempfile.mkstemp(dir=dest_dir, prefix=f".{name}.", suffix=".part")
    part = Path(name_part)
    try:
        with os.fdopen(handle, "wb") as target:
            _fetch(url, target, timeout, on_progress)
        part.replace(archive)
    finally:
        part.unlink(missing_ok=True)
    try:
        return _zip_data_folder(archive, dest_dir)
    except zipfile.BadZipFile as exc:
        raise DownloadError(f"{url} did not return a valid zip archive: {exc}") from exc
