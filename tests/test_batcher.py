"""How the recommendation batcher groups requests: a batch of one when a thread is free,
the requests that queued behind a running batch together, never more than the max size,
and, with a max delay, a batch that waits that long for company but no longer."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from app.serving.batcher import Batcher
from app.serving.ranking import RecommendRequest

FOREVER = 3600.0  # a wait no test may meet: reaching it fails by timeout


class Inference:
    """An `answer_many` on a real executor thread that records each batch's users; a batch
    of `blocked_first` users runs only once `release` is set."""

    def __init__(self, blocked_first: int = 0) -> None:
        self.batches: list[list[int]] = []
        self.release = threading.Event()
        self._blocked_first = blocked_first

    def __call__(self, requests: list[RecommendRequest]) -> list[dict[str, Any] | Exception]:
        users = [request.user_id for request in requests]
        if not self.batches and self._blocked_first:
            assert self.release.wait(30)
        self.batches.append(users)
        return [{"user_id": user} for user in users]


def ask(batcher: Batcher, user: int) -> asyncio.Task[dict[str, Any]]:
    return asyncio.ensure_future(batcher.recommend(RecommendRequest(user, 10, (), (), False)))


async def settle() -> None:
    """Let the loop run the callbacks that are ready (queued requests, finished batches)."""
    for _ in range(20):
        await asyncio.sleep(0)


async def queued_behind_one(users: int, max_batch: int) -> list[list[int]]:
    """The first request runs alone while ``users`` more queue behind it."""
    inference = Inference(blocked_first=1)
    with ThreadPoolExecutor(1) as executor:
        batcher = Batcher(executor, inference, slots=1, max_batch=max_batch)
        first = ask(batcher, 0)
        queued = [ask(batcher, user) for user in range(1, users + 1)]
        await settle()
        inference.release.set()
        answers = await asyncio.wait_for(asyncio.gather(first, *queued), 30)
        assert [answer["user_id"] for answer in answers] == list(range(users + 1))
    return inference.batches


def test_requests_that_queued_behind_a_batch_share_the_next_one() -> None:
    assert asyncio.run(queued_behind_one(3, max_batch=32)) == [[0], [1, 2, 3]]


def test_a_batch_never_exceeds_the_max_size() -> None:
    assert asyncio.run(queued_behind_one(5, max_batch=2)) == [[0], [1, 2], [3, 4], [5]]


def test_without_a_delay_a_lone_client_is_a_batch_of_one() -> None:
    async def one_after_another() -> list[list[int]]:
        inference = Inference()
        with ThreadPoolExecutor(1) as executor:
            batcher = Batcher(executor, inference, slots=1)  # max_delay 0 by default
            for user in range(5):
                await asyncio.wait_for(ask(batcher, user), 30)
        return inference.batches

    assert asyncio.run(one_after_another()) == [[0], [1], [2], [3], [4]]


def test_a_delay_gathers_the_requests_that_come_within_it() -> None:
    async def three_at_once(max_delay: float) -> list[list[int]]:
        inference = Inference()
        with ThreadPoolExecutor(1) as executor:
            batcher = Batcher(executor, inference, slots=1, max_delay=max_delay)
            first = ask(batcher, 0)
            await settle()  # without a delay, this one is already running alone
            rest = [ask(batcher, 1), ask(batcher, 2)]
            await asyncio.wait_for(asyncio.gather(first, *rest), 30)
        return inference.batches

    assert asyncio.run(three_at_once(0.2))[0] == [0, 1, 2]
    assert asyncio.run(three_at_once(0.0))[0] == [0]


def test_a_full_batch_does_not_wait_out_the_delay() -> None:
    async def full() -> list[list[int]]:
        inference = Inference()
        with ThreadPoolExecutor(1) as executor:
            batcher = Batcher(executor, inference, slots=1, max_batch=3, max_delay=FOREVER)
            answers = [ask(batcher, user) for user in range(3)]
            await asyncio.wait_for(asyncio.gather(*answers), 30)
        return inference.batches

    assert asyncio.run(full()) == [[0, 1, 2]]
