"""Impressions (API.md "Online"): every recommendation answer carries a new
recommendation_id and is recorded off the request path; a database that lags costs
impressions (counted), never answers; a clean shutdown writes what is queued; old ones are
pruned."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY
from sqlalchemy import Engine, insert, select, text
from sqlalchemy.orm import Session

from app.config import Settings
from app.main import create_app
from app.models import Impression
from app.serving.impressions import prune
from tests.factories import seed_synthetic


@pytest.fixture
def seeded(settings: Settings, engine: Engine) -> Settings:
    seed_synthetic(engine)
    return settings.model_copy(update={"run_worker_in_api": False})


def flush(client: TestClient) -> None:
    assert client.app.state.recommender.impressions.flush()  # type: ignore[attr-defined]


def stored(engine: Engine) -> dict[str, tuple[Impression, list[int]]]:
    with Session(engine) as session:
        rows = session.scalars(select(Impression))
        return {row.id: (row, [int(m) for m in row.movie_ids.split(",") if m]) for row in rows}


def dropped(reason: str) -> float:
    return REGISTRY.get_sample_value("saerec_impressions_dropped_total", {"reason": reason}) or 0


def test_every_answer_is_a_new_impression_with_its_movies_in_order(
    seeded: Settings, engine: Engine
) -> None:
    with TestClient(create_app(seeded)) as client:
        answers: list[tuple[int | None, dict[str, Any]]] = []
        for _ in range(2):  # the second is the answer cache's: a new impression all the same
            answers.append((4, client.get("/users/4/recommendations", params={"n": 5}).json()))
        answers.append((999, client.get("/users/999/recommendations").json()))  # no ratings
        session = {"ratings": [{"movie_id": 1, "rating": 5.0}], "n": 3}
        answers.append((None, client.post("/recommendations", json=session).json()))
        answers.append((None, client.get("/movies/3/similar", params={"n": 4}).json()))
        flush(client)
    ids = [body["recommendation_id"] for _, body in answers]
    assert len(set(ids)) == len(ids)
    rows = stored(engine)
    assert set(rows) == set(ids)
    for user, body in answers:
        row, movies = rows[body["recommendation_id"]]
        assert (row.user_id, row.model_version, row.strategy) == (
            user,
            body["model_version"],
            body["strategy"],
        )
        assert (row.experiment_id, row.arm) == (None, None)
        assert movies == [item["movie_id"] for item in body["items"]]
        assert movies, "every answer listed something"


def test_recording_off_still_gives_ids_and_writes_nothing(seeded: Settings, engine: Engine) -> None:
    with TestClient(create_app(seeded.model_copy(update={"record_impressions": False}))) as client:
        body = client.get("/users/4/recommendations").json()
    assert len(body["recommendation_id"]) == 32
    assert stored(engine) == {}


def test_a_clean_shutdown_writes_what_is_queued(seeded: Settings, engine: Engine) -> None:
    with TestClient(create_app(seeded)) as client:
        ids = [
            client.get(f"/users/{u}/recommendations").json()["recommendation_id"] for u in (1, 2)
        ]
    assert set(stored(engine)) == set(ids)  # no flush: the lifespan's end wrote them


def _lock_impressions(engine: Engine, locked: threading.Event, release: threading.Event) -> None:
    """Hold the impressions' write lock until `release`: a writer that cannot write."""
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        else:
            conn.execute(text("BEGIN"))
            conn.execute(text("LOCK TABLE impressions IN ACCESS EXCLUSIVE MODE"))
        locked.set()
        release.wait(60)
        conn.rollback()


def test_a_database_that_lags_drops_impressions_never_answers(
    seeded: Settings, engine: Engine
) -> None:
    small = seeded.model_copy(update={"impression_queue_size": 5})
    before = dropped("queue_full")
    locked, release = threading.Event(), threading.Event()
    holder = threading.Thread(target=_lock_impressions, args=(engine, locked, release))
    with TestClient(create_app(small)) as client:
        holder.start()
        assert locked.wait(10)
        try:
            statuses = [
                client.get(f"/users/{1 + i % 60}/recommendations").status_code for i in range(40)
            ]
            body = client.post("/recommendations", json={"ratings": [{"movie_id": 2, "rating": 4}]})
            statuses.append(body.status_code)
            metrics = client.get("/metrics").text
        finally:
            release.set()
            holder.join(30)
        flush(client)
        later = client.get("/users/7/recommendations").json()["recommendation_id"]
        flush(client)
    assert statuses == [200] * 41
    assert dropped("queue_full") - before >= 30  # at most the queue and one batch got by
    assert 'saerec_impressions_dropped_total{reason="queue_full"}' in metrics
    assert later in stored(engine), "the writer recovers once the database does"


def test_old_impressions_are_pruned(seeded: Settings, engine: Engine) -> None:
    now = datetime.now(UTC)
    with engine.begin() as conn:
        for rid, age in (("a" * 32, 100), ("b" * 32, 1)):
            shown = now - timedelta(days=age)
            conn.execute(
                insert(Impression),
                [{"id": rid, "strategy": "popular", "shown_at": shown,
                  "shown_ms": int(shown.timestamp() * 1000), "movie_ids": "1,2"}],
            )  # fmt: skip
    assert prune(engine, now - timedelta(days=90)) == 1
    with Session(engine) as session:
        assert list(session.scalars(select(Impression.id))) == ["b" * 32]
