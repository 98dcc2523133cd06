"""Every recommendation answer recorded as an impression, off the request path.

A request puts a tuple on a bounded queue; one writer thread per process wakes every
FLUSH_SECONDS and inserts what queued (a writer blocked on the queue was woken by every put,
which cost a third of the throughput). A full queue drops and counts, never delays an
answer; a clean shutdown flushes; the writer also prunes past the retention.
"""

from __future__ import annotations

import queue
import random
import threading
import time
from collections import Counter as Tally
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from prometheus_client import Counter
from sqlalchemy import Engine, delete, select

from app.models import Impression
from app.observability import get_logger

log = get_logger("saerec.impressions")

BATCH = 500
"""impressions per insert transaction, at most."""
FLUSH_SECONDS = 0.5
"""how long the writer sleeps between writes of what has queued."""
PRUNE_SECONDS = 3600.0
"""how often a writer deletes impressions past the retention."""
PRUNE_CHUNK = 5000
"""impressions deleted per statement, so a prune never holds long locks."""
SHUTDOWN_SECONDS = 5.0
"""how long a clean shutdown waits for the last batches to be written."""

COLUMNS = (
    "id", "user_id", "model_version", "strategy", "experiment_id", "arm", "shown_at",
    "shown_ms", "movie_ids",
)  # fmt: skip

RECORDED = Counter(
    "saerec_impressions_recorded_total",
    "Recommendation answers recorded as impressions, by model version, strategy and arm",
    ["version", "strategy", "arm"],
)
DROPPED = Counter(
    "saerec_impressions_dropped_total",
    "Impressions not recorded: the queue was full (the database lagged), the write failed, "
    "or shutdown came first",
    ["reason"],
)


@dataclass(frozen=True, slots=True)
class Shown:
    id: str
    user_id: int | None
    version: str | None
    strategy: str
    experiment_id: str | None
    arm: str | None
    movie_ids: tuple[int, ...]
    at: float  # unix time


def new_recommendation_id() -> str:
    """The time in nanoseconds, then 64 random bits: time-ordered, so inserts append to the
    key's B-tree (a random uuid4 doubled SQLite's cost of a batch)."""
    return f"{time.time_ns():016x}{random.getrandbits(64):016x}"


class ImpressionRecorder:
    def __init__(
        self,
        engine: Engine,
        queue_size: int,
        enabled: bool = True,
        retention_days: float | None = None,
    ) -> None:
        self._engine = engine
        self._queue: queue.Queue[Shown] = queue.Queue(maxsize=queue_size)
        self.enabled = enabled
        self._retention = timedelta(days=retention_days) if retention_days else None
        self._stop = threading.Event()
        self._wake = threading.Event()  # set by close() and flush(): write now
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._failing = False  # log a failure streak once, not once per batch
        self._pruned_at = 0.0
        mark = "?" if engine.dialect.name == "sqlite" else "%s"
        self._sql = (
            f"INSERT INTO {Impression.__tablename__} ({', '.join(COLUMNS)})"
            f" VALUES ({', '.join(mark for _ in COLUMNS)})"
        )
        # SQLite keeps times as SQLAlchemy writes them (text); PostgreSQL takes datetimes
        self._stamp = _sqlite_time if engine.dialect.name == "sqlite" else _utc_time

    def record(
        self,
        user_id: int | None,
        version: str | None,
        strategy: str,
        movie_ids: Sequence[int],
        experiment_id: str | None = None,
        arm: str | None = None,
    ) -> str:
        rid = new_recommendation_id()
        if not self.enabled:
            return rid
        if self._thread is None:
            self._start()
        shown = Shown(
            rid, user_id, version, strategy, experiment_id, arm, tuple(movie_ids), time.time()
        )
        try:
            self._queue.put_nowait(shown)
        except queue.Full:
            DROPPED.labels("queue_full").inc()
        return rid

    def close(self, timeout: float = SHUTDOWN_SECONDS) -> None:
        thread = self._thread
        if thread is None:
            return
        self._stop.set()
        self._wake.set()
        thread.join(timeout)
        left = self._queue.qsize()
        if thread.is_alive() or left:
            DROPPED.labels("shutdown").inc(left)
            log.warning("impressions_lost_at_shutdown", queued=left)

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything queued so far is written (tests, benchmarks); True if so."""
        deadline = time.monotonic() + timeout
        self._wake.set()
        while time.monotonic() < deadline:
            if self._queue.unfinished_tasks == 0:
                return True
            time.sleep(0.01)
        return False

    def _start(self) -> None:
        with self._start_lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="impressions", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            self._wake.wait(FLUSH_SECONDS)
            self._wake.clear()
            stopping = self._stop.is_set()
            while batch := self._next_batch():
                self._write(batch)
                for _ in batch:
                    self._queue.task_done()
            if stopping:
                return
            self._prune_if_due()

    def _next_batch(self) -> list[Shown]:
        batch: list[Shown] = []
        while len(batch) < BATCH:
            try:
                batch.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return batch

    def _write(self, batch: list[Shown]) -> None:
        """One transaction; a failure drops the batch (counted), never retries: the bounded
        queue is the only buffer."""
        stamp = self._stamp
        rows = [
            (
                s.id,
                s.user_id,
                s.version,
                s.strategy,
                s.experiment_id,
                s.arm,
                stamp(s.at),
                int(s.at * 1000),
                ",".join(map(str, s.movie_ids)),
            )  # fmt: skip
            for s in batch
        ]
        try:
            with self._engine.begin() as conn:
                # the driver's executemany: SQLAlchemy's per-row parameters took most of its CPU
                conn.exec_driver_sql(self._sql, rows)
        except Exception as exc:  # the database away or locked: drop, count, go on
            DROPPED.labels("write_failed").inc(len(batch))
            if not self._failing:
                reason = str(getattr(exc, "orig", exc)).splitlines()[0][:200]
                log.warning("impressions_write_failed", error=f"{type(exc).__name__}: {reason}")
            self._failing = True
            return
        if self._failing:
            log.info("impressions_write_recovered")
        self._failing = False
        tally = Tally((s.version or "", s.strategy, s.arm or "") for s in batch)
        for labels, count in tally.items():
            RECORDED.labels(*labels).inc(count)

    def _prune_if_due(self) -> None:
        if self._retention is None or time.monotonic() - self._pruned_at < PRUNE_SECONDS:
            return
        self._pruned_at = time.monotonic()
        try:
            prune(self._engine, datetime.now(UTC) - self._retention)
        except Exception as exc:
            log.warning("impressions_prune_failed", error=f"{type(exc).__name__}: {exc}")


def _utc_time(at: float) -> datetime:
    return datetime.fromtimestamp(at, UTC)


def _sqlite_time(at: float) -> str:
    """As SQLAlchemy's SQLite DateTime stores a time (compared as text by every query)."""
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


def prune(engine: Engine, before: datetime) -> int:
    """Delete the impressions shown before `before`, a chunk per transaction; how many."""
    total = 0
    while True:
        with engine.begin() as conn:
            ids = list(
                conn.scalars(
                    select(Impression.id)
                    .where(Impression.shown_at < before)
                    .order_by(Impression.shown_at)
                    .limit(PRUNE_CHUNK)
                )
            )
            if not ids:
                return total
            conn.execute(delete(Impression).where(Impression.id.in_(ids)))
        total += len(ids)
