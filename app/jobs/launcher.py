"""Launching job processes: the poll that claims queued jobs and queues scheduled ones."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Mapping

from sqlalchemy import Engine

from app.config import Settings
from app.db import create_session_factory
from app.jobs.queue import claim_next, fail_job, host, recover_stale_jobs
from app.jobs.schedule import RetrainSchedule
from app.observability import get_logger

log = get_logger("saerec.jobs")


class JobLauncher:
    """Polls for queued jobs (and the retrain schedule) and runs each in a child process,
    from an API process or `saerec worker`; `child_env` is the configuration
    (`Settings.as_env()`) the job process reads."""

    def __init__(
        self,
        training: Settings,
        engine: Engine,
        *,
        child_env: Mapping[str, str],
        poll_seconds: float = 1.0,
    ) -> None:
        self._child_env = dict(child_env)
        self._factory = create_session_factory(engine)
        self.schedule = RetrainSchedule(training)
        self._poll = poll_seconds
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.child: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run_forever, name="job-launcher", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def run_forever(self) -> None:
        """Until stopped; a database outage (even at start-up) only delays the next poll."""
        while not self._stop.is_set():
            try:
                recover_stale_jobs(self._factory)
                break
            except Exception as exc:
                log.warning("launcher_recovery_failed", error=str(exc))
                self._stop.wait(self._poll * 5)
        while not self._stop.is_set():
            try:
                if not self.run_once():
                    self._stop.wait(self._poll)
            except Exception as exc:  # the database may be down: keep polling
                log.warning("launcher_poll_failed", error=str(exc))
                self._stop.wait(self._poll * 5)

    def run_once(self) -> bool:
        """Queue a retrain if due, then claim and run one job; False when the queue was empty."""
        self._check_schedule()
        job_id = claim_next(self._factory, f"{host()}:{os.getpid()}")
        if job_id is None:
            recover_stale_jobs(self._factory)
            return False
        log.info("job_started", job_id=job_id)
        self.child = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "run-job", job_id],
            env={**os.environ, **self._child_env},
        )
        code = self._wait(self.child)
        self.child = None
        if code != 0:
            fail_job(self._factory, job_id, _exit_reason(code))
        log.info("job_finished", job_id=job_id, exit_code=code)
        return True

    def _check_schedule(self) -> None:
        """A failed check (the database is down) must not keep queued jobs from running."""
        try:
            self.schedule.poll(self._factory)
        except Exception as exc:
            log.warning("schedule_check_failed", error=f"{type(exc).__name__}: {exc}")

    def _wait(self, child: subprocess.Popen[bytes]) -> int:
        while True:
            try:
                return child.wait(timeout=self._poll)
            except subprocess.TimeoutExpired:
                if self._stop.is_set():
                    child.terminate()
                    return child.wait()


def _exit_reason(code: int) -> str:
    if code < 0:
        name = signal.Signals(-code).name if -code in signal.valid_signals() else str(-code)
        return f"the training process was killed by {name}"
    return f"the training process exited with code {code}"
