"""Shared helpers for the reliability, security and fuzz tests (no fixtures from conftest).

Snapshots of every table, a PostgreSQL-only database fixture body, a TCP proxy that
can cut the database connection, and a small trained model for the fault tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from app.models import ModelVersion, Movie, MovieGenre, Rating, TrainingJob

LEAK_MARKERS = (
    "Traceback",
    'File "',
    "sqlalchemy",
    "psycopg",
    "sqlite3",
    "SELECT ",
    "INSERT INTO",
    "UPDATE ",
    "DELETE FROM",
    "[SQL:",
    "/work/",
    "site-packages",
)


def assert_no_leak(text: str, echoed: str = "") -> None:
    """Error bodies say what was wrong, never how the server is built inside.

    `echoed` is the client's own input, which a 404 may quote back ("job '...' does not
    exist"): it is removed first, in its JSON-escaped form.
    """
    if echoed:
        text = text.replace(json.dumps(echoed)[1:-1], "")
    for marker in LEAK_MARKERS:
        assert marker not in text, f"response leaks {marker!r}: {text[:300]}"


def ratings_snapshot(engine: Engine) -> dict[tuple[int, int], tuple[float, int]]:
    with Session(engine) as session:
        rows = session.execute(
            select(Rating.user_id, Rating.movie_id, Rating.rating, Rating.timestamp)
        )
        return {(u, m): (float(r), int(t)) for u, m, r, t in rows}


def duplicate_rating_pairs(engine: Engine) -> int:
    """(user, movie) pairs stored more than once: must always be 0 (the primary key)."""
    with Session(engine) as session:
        grouped = (
            select(Rating.user_id, Rating.movie_id)
            .group_by(Rating.user_id, Rating.movie_id)
            .having(func.count() > 1)
            .subquery()
        )
        return session.scalar(select(func.count()).select_from(grouped)) or 0


def movies_snapshot(engine: Engine) -> dict[int, tuple[str, int | None, tuple[str, ...]]]:
    with Session(engine) as session:
        genres: dict[int, list[str]] = {}
        for movie_id, genre in session.execute(select(MovieGenre.movie_id, MovieGenre.genre)):
            genres.setdefault(movie_id, []).append(genre)
        return {
            m.id: (m.title, m.year, tuple(sorted(genres.get(m.id, []))))
            for m in session.scalars(select(Movie))
        }


def registry_snapshot(engine: Engine) -> dict[str, Any]:
    with Session(engine) as session:
        versions = {
            v.version: (v.is_active, v.artifact_path) for v in session.scalars(select(ModelVersion))
        }
        jobs = {j.id: j.status for j in session.scalars(select(TrainingJob))}
    return {"versions": versions, "jobs": jobs}


def free_port() -> int:
    with contextlib.closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class CuttableProxy:
    """A localhost TCP proxy to the database that a test can cut and restore.

    `cut()` closes every open connection and refuses new ones (as a stopped server
    would); `restore()` accepts again. Runs its own asyncio loop in a daemon thread.
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.base_events.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self.restore()

    def _run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            server_r, server_w = await asyncio.open_connection(*self.target)
        except OSError:
            client_w.close()
            return
        self._writers.update((client_w, server_w))
        await asyncio.gather(self._pipe(client_r, server_w), self._pipe(server_r, client_w))
        self._writers.difference_update((client_w, server_w))

    async def _start(self) -> None:
        if self._server is None:
            self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    async def _stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    def cut(self) -> None:
        self._run(self._stop())

    def restore(self) -> None:
        self._run(self._start())

    def close(self) -> None:
        self.cut()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


@contextlib.contextmanager
def cuttable_proxy(target_host: str, target_port: int) -> Iterator[CuttableProxy]:
    proxy = CuttableProxy(target_host, target_port)
    try:
        yield proxy
    finally:
        proxy.close()


def wait_for(predicate: Callable[[], object], timeout: float = 90.0) -> object:
    """Poll until `predicate` returns something truthy; fail the test after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def run_together(workers: list[Callable[[], None]], join_timeout: float = 120) -> None:
    """Start every worker at the same instant; re-raise the first failure."""
    barrier = threading.Barrier(len(workers))
    errors: list[BaseException] = []

    def wrap(work: Callable[[], None]) -> None:
        try:
            barrier.wait(60)
            work()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=wrap, args=(w,)) for w in workers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(join_timeout)
    if errors:
        raise errors[0]
