"""Batches of recommendation requests for the inference executor."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any, Generic, TypeVar

Request = TypeVar("Request")
AnswerMany = Callable[[list[Request]], list[dict[str, Any] | Exception]]


MAX_BATCH = 32
"""requests that share one read and forward pass at most"""
MAX_DELAY = 0.0
"""seconds a batch that is not full may wait for more (benchmarks measured no gain)"""


class Batcher(Generic[Request]):
    """One event loop's requests in batches: a batch starts when an executor thread is free
    and takes every request waiting by then, so under load the requests queued behind a
    running batch share the next forward pass, and a lone request is a batch of one."""

    def __init__(
        self,
        executor: Executor,
        answer_many: AnswerMany[Request],
        slots: int,
        max_batch: int = MAX_BATCH,
        max_delay: float = MAX_DELAY,
    ) -> None:
        self._executor = executor
        self._answer_many = answer_many
        self._loop = asyncio.get_running_loop()
        self._max_batch = max_batch
        self._max_delay = max_delay
        self._slots = slots  # batches in flight: one per executor thread
        self._waiting: list[tuple[Request, asyncio.Future]] = []
        self._timer: asyncio.TimerHandle | None = None  # the first waiting one's delay

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    async def recommend(self, request: Request) -> dict[str, Any]:
        future = self._loop.create_future()
        self._waiting.append((request, future))
        if self._max_delay > 0 and len(self._waiting) == 1:
            self._timer = self._loop.call_later(self._max_delay, self._delay_over)
        self._launch()
        return await future

    def _delay_over(self) -> None:
        self._timer = None
        self._launch()

    def _launch(self) -> None:
        if self._timer is not None and len(self._waiting) < self._max_batch:
            return  # still gathering
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self._waiting and self._slots > 0:
            batch = self._waiting[: self._max_batch]
            del self._waiting[: self._max_batch]
            self._slots -= 1
            done = self._loop.run_in_executor(
                self._executor, self._answer_many, [request for request, _ in batch]
            )
            done.add_done_callback(functools.partial(self._finish, batch))

    def _finish(self, batch: list[tuple[Request, asyncio.Future]], done: asyncio.Future) -> None:
        self._slots += 1
        try:
            answers = done.result()
        except Exception as exc:
            answers = [exc] * len(batch)
        for (_, future), answer in zip(batch, answers, strict=True):
            if future.done():  # the client went away
                continue
            if isinstance(answer, BaseException):
                future.set_exception(answer)
            else:
                future.set_result(answer)
        self._launch()
