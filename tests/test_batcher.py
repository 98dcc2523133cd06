"""How the recommendation batcher groups requests: at once when nobody is expected, and
together with the clients the last batch answered when they come straight back."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from app.services.recommender import Batcher, RecommendRequest

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


async def run_cohorts(hold: float, back: int) -> list[list[int]]:
    """Four clients: the first one's request runs alone while three queue behind it;
    then `back` of the answered clients ask again."""
    inference = Inference(blocked_first=1)
    with ThreadPoolExecutor(1) as executor:
        batcher = Batcher(executor, inference, slots=1, hold=hold)
        first = ask(batcher, 1)
        queued = [ask(batcher, user) for user in (2, 3, 4)]
        await settle()
        inference.release.set()
        assert (await first) == {"user_id": 1}
        again = [ask(batcher, 10 + user) for user in range(back)]
        answers = await asyncio.wait_for(asyncio.gather(*queued, *again), 30)
        expected = [2, 3, 4, *(10 + u for u in range(back))]
        assert [answer["user_id"] for answer in answers] == expected
    return inference.batches


def test_the_clients_a_batch_answered_join_the_next_batch() -> None:
    # one request was answered and three waited: the next batch waits for a fourth
    assert asyncio.run(run_cohorts(hold=FOREVER, back=1)) == [[1], [2, 3, 4, 10]]


def test_the_next_batch_waits_no_longer_than_the_hold() -> None:
    # nobody comes back: the three waiting go as soon as the hold is over
    assert asyncio.run(run_cohorts(hold=0.05, back=0)) == [[1], [2, 3, 4]]


def test_without_a_hold_the_waiting_requests_go_at_once() -> None:
    batches = asyncio.run(run_cohorts(hold=0.0, back=1))
    assert batches[:2] == [[1], [2, 3, 4]]


def test_a_lone_client_never_waits() -> None:
    """One in flight, one waiting: no batch is held (a hold would time this out)."""

    async def one_after_another() -> list[list[int]]:
        inference = Inference()
        with ThreadPoolExecutor(1) as executor:
            batcher = Batcher(executor, inference, slots=1, hold=FOREVER)
            for user in range(5):
                await asyncio.wait_for(ask(batcher, user), 30)
        return inference.batches

    assert asyncio.run(one_after_another()) == [[0], [1], [2], [3], [4]]
