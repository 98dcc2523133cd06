"""Experiments (API.md "Online"): a candidate version answers a stable share of the users
beside the active one; the report compares both arms' hit rates; stopping or promoting
ends it, a promotion with the read your writes of an activation.

The simulated population: the synthetic users' hidden taste (odd users like odd movies,
tests/factories.py) decides how they rate the top movie each answer shows them; a trained
model and one that learned nothing are the two arms."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from app.config import Settings
from app.jobs.training import train_and_register
from app.main import create_app
from app.ml.config import config_from
from app.models import Impression, TrainingJob
from app.serving.reader import RunningExperiment
from tests.factories import LENIENT_GATE, TINY_TRAINING, WEAK_TRAINING, seed_synthetic
from tests.test_recommendations_api import train_tiny

USERS = 60  # seed_synthetic's, every one with ratings


@pytest.fixture
def two_versions(settings: Settings, engine: Engine) -> tuple[Settings, str, str]:
    """(settings, a model that learned nothing, a trained one); the weak one is active."""
    seed_synthetic(engine)
    weak = train_tiny(settings, engine, **WEAK_TRAINING).version
    good = train_tiny(settings, engine, seed=3).version
    served = settings.model_copy(
        update={"run_worker_in_api": False, "experiment_min_impressions": 100}
    )
    return served, weak, good


def activate(client: TestClient, headers: dict[str, str], version: str) -> None:
    response = client.post(f"/admin/models/{version}/activate", headers=headers)
    assert response.status_code == 200, response.text


def start(client: TestClient, headers: dict[str, str], candidate: str, share: float) -> Any:
    response = client.post(
        "/admin/experiments", json={"candidate": candidate, "share": share}, headers=headers
    )
    assert response.status_code == 201, response.text
    return response.json()


def versions_of(client: TestClient, users: range) -> dict[int, str]:
    answers = {u: client.get(f"/users/{u}/recommendations", params={"n": 3}) for u in users}
    assert all(a.status_code == 200 for a in answers.values())
    return {u: a.json()["model_version"] for u, a in answers.items()}


def likes(user: int, movie: int) -> bool:
    return (movie % 2 == 1) == (user % 2 == 1)  # the taste seed_synthetic gave them


def test_a_simulated_population_ranks_the_better_version_and_promotion_serves_it(
    two_versions: tuple[Settings, str, str], admin_headers: dict[str, str]
) -> None:
    settings, weak, good = two_versions
    with TestClient(create_app(settings)) as client:
        activate(client, admin_headers, weak)
        experiment = start(client, admin_headers, good, 0.5)
        url = f"/admin/experiments/{experiment['experiment_id']}"
        assert client.get(url, headers=admin_headers).json()["verdict"] == "not enough data"
        for _round in range(10):
            for user in range(1, USERS + 1):
                body = client.get(f"/users/{user}/recommendations", params={"n": 5}).json()
                top = body["items"][0]["movie_id"]
                stars = 4.5 if likes(user, top) else 1.5
                rating = {"user_id": user, "movie_id": top, "rating": stars}
                assert client.post("/ratings", json=rating).status_code == 201
            assert client.app.state.recommender.impressions.flush()  # type: ignore[attr-defined]
        report = client.get(url, headers=admin_headers).json()
        promoted = client.post(f"{url}/stop", json={"promote": True}, headers=admin_headers)
        after = versions_of(client, range(1, USERS + 1))
        again = client.post(f"{url}/stop", json={"promote": False}, headers=admin_headers)
        models = client.get("/admin/models", headers=admin_headers).json()
    arms = {arm["arm"]: arm for arm in report["arms"]}
    assert (arms["control"]["version"], arms["candidate"]["version"]) == (weak, good)
    assert arms["control"]["impressions"] + arms["candidate"]["impressions"] == 10 * USERS
    assert arms["candidate"]["hit_rate"] > arms["control"]["hit_rate"]
    assert report["difference"]["ci95"][0] > 0, report
    assert report["verdict"] == "candidate better"
    assert promoted.status_code == 200 and promoted.json()["status"] == "promoted"
    assert set(after.values()) == {good}, "every later answer comes from the promoted version"
    assert again.status_code == 409
    assert [m["version"] for m in models if m["active"]] == [good]


def test_the_api_of_experiments(
    two_versions: tuple[Settings, str, str], admin_headers: dict[str, str], engine: Engine
) -> None:
    settings, weak, good = two_versions
    with TestClient(create_app(settings)) as client:
        activate(client, admin_headers, weak)
        post = client.post
        assert post("/admin/experiments", json={"candidate": good, "share": 0.5}).status_code == 401
        for bad in ({"candidate": good, "share": 0}, {"candidate": good, "share": 1.0},
                    {"candidate": good, "share": "0.5"}, {"candidate": good, "share": 0.5, "x": 1},
                    {"share": 0.5}):  # fmt: skip
            assert post("/admin/experiments", json=bad, headers=admin_headers).status_code == 422
        unknown = post("/admin/experiments", json={"candidate": "nope", "share": 0.5},
                       headers=admin_headers)  # fmt: skip
        assert unknown.status_code == 404
        itself = post("/admin/experiments", json={"candidate": weak, "share": 0.5},
                      headers=admin_headers)  # fmt: skip
        assert itself.status_code == 409
        first = start(client, admin_headers, good, 0.3)
        assert first["status"] == "running" and first["share"] == 0.3
        assert (first["control"], first["candidate"]) == (weak, good)
        twice = post("/admin/experiments", json={"candidate": good, "share": 0.5},
                     headers=admin_headers)  # fmt: skip
        assert twice.status_code == 409
        assert twice.json()["detail"]["experiment_id"] == first["experiment_id"]

        arm = RunningExperiment(first["experiment_id"], good, 0.3).arm_of
        served = versions_of(client, range(1, USERS + 1))
        assert served == {u: good if arm(u) == "candidate" else weak for u in served}
        assert 0 < sum(v == good for v in served.values()) < USERS
        sticky = next(u for u in served if arm(u) == "candidate")
        assert set(versions_of(client, range(sticky, sticky + 1)).values()) == {good}
        for _ in range(99):
            body = client.get(f"/users/{sticky}/recommendations").json()
            assert body["model_version"] == good
        newcomer = client.get("/users/5000/recommendations").json()  # no ratings
        assert newcomer["strategy"] == "popular"
        assert newcomer["model_version"] == (good if arm(5000) == "candidate" else weak)
        session = client.post("/recommendations", json={"ratings": [{"movie_id": 1, "rating": 5}]})
        assert session.json()["model_version"] == weak, "sessions are the control's"
        similar = client.get("/movies/3/similar").json()
        assert similar["model_version"] == weak
        assert client.app.state.recommender.impressions.flush()  # type: ignore[attr-defined]

        url = f"/admin/experiments/{first['experiment_id']}"
        report = client.get(url, headers=admin_headers).json()
        stopped = post(f"{url}/stop", json={"promote": False}, headers=admin_headers)
        after = versions_of(client, range(1, USERS + 1))
        second = start(client, admin_headers, good, 0.5)
        listing = client.get("/admin/experiments", headers=admin_headers).json()
        missing = client.get("/admin/experiments/nope", headers=admin_headers)
        stop_missing = post("/admin/experiments/nope/stop", json={"promote": True},
                            headers=admin_headers)  # fmt: skip
        assert client.get("/admin/experiments").status_code == 401
    assert report["verdict"] == "not enough data"
    assert {a["arm"] for a in report["arms"]} == {"control", "candidate"}
    assert sum(a["impressions"] for a in report["arms"]) == USERS + 100 + 1
    assert stopped.status_code == 200 and stopped.json()["status"] == "stopped"
    assert set(after.values()) == {weak}, "a stopped experiment's users are the control's"
    assert [e["experiment_id"] for e in listing["items"]] == [
        second["experiment_id"],
        first["experiment_id"],
    ]
    assert missing.status_code == 404 and stop_missing.status_code == 404
    with Session(engine) as db:
        rows = db.execute(select(Impression.user_id, Impression.arm, Impression.experiment_id))
        sessions = [(arm, exp) for user, arm, exp in rows if user is None]
    assert sessions and set(sessions) == {(None, None)}, "sessions are in neither arm"


def test_arms_split_close_to_the_share_and_agree_across_processes() -> None:
    for share in (0.1, 0.5, 0.8):
        experiment = RunningExperiment("3f1c7a52-0d7e-4a4b-9a53-1f0c2b6d9e11", "v", share)
        candidates = sum(experiment.arm_of(u) == "candidate" for u in range(1, 10_001))
        assert abs(candidates / 10_000 - share) <= 0.03, (share, candidates)
        assert experiment.arm_of(None) == "control"
    code = (
        "from app.serving.reader import RunningExperiment as E;"
        "e = E('x', 'v', 0.5); print(''.join(e.arm_of(u)[1] for u in range(1, 301)))"
    )
    here = "".join(RunningExperiment("x", "v", 0.5).arm_of(u)[1] for u in range(1, 301))
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
        assert out.stdout.strip() == here, out.stderr


def test_a_retrain_with_an_experiment_share_starts_an_experiment_instead(
    settings: Settings, engine: Engine, admin_headers: dict[str, str]
) -> None:
    seed_synthetic(engine)
    lenient = settings.model_copy(update={"run_worker_in_api": False, **LENIENT_GATE})
    active = train_tiny(lenient, engine).version
    config = config_from("fast", **TINY_TRAINING, seed=5)
    tried = train_and_register(lenient, engine, config, experiment_share=0.25)
    assert tried is not None and not tried.activated and tried.experiment_id is not None
    again = train_and_register(lenient, engine, config, experiment_share=0.25)
    assert again is not None and not again.activated and again.experiment_id is None  # one runs
    with TestClient(create_app(lenient)) as client:
        listing = client.get("/admin/experiments", headers=admin_headers).json()["items"]
        models = client.get("/admin/models", headers=admin_headers).json()
        bad = client.post("/admin/retrain", json={"experiment_share": 1.5}, headers=admin_headers)
        queued = client.post(
            "/admin/retrain",
            json={"preset": "fast", "experiment_share": 0.5},
            headers=admin_headers,
        )
    assert [(e["experiment_id"], e["control"], e["candidate"], e["share"]) for e in listing] == [
        (tried.experiment_id, active, tried.version, 0.25)
    ]
    assert [m["version"] for m in models if m["active"]] == [active]
    assert bad.status_code == 422
    assert queued.status_code == 202, queued.text
    with Session(engine) as db:
        job = db.get(TrainingJob, queued.json()["job_id"])
        assert job is not None and job.overrides["experiment_share"] == 0.5


@pytest.mark.parametrize(
    ("control_hits", "candidate_hits", "verdict"),
    [(150, 50, "control better"), (100, 104, "no difference"), (20, 90, "candidate better")],
)
def test_the_verdict_follows_the_interval_of_the_difference(
    engine: Engine, control_hits: int, candidate_hits: int, verdict: str
) -> None:
    """200 impressions per arm, one movie each, rated 5 (a hit) or 2 a second later."""
    from datetime import UTC, datetime

    from sqlalchemy import insert

    from app.models import Experiment, Impression, Rating
    from app.services import experiments
    from tests.factories import add_movies, synthetic_catalog

    add_movies(engine, synthetic_catalog(1))
    now = time.time()
    impressions, ratings = [], []
    for arm, hits in (("control", control_hits), ("candidate", candidate_hits)):
        for i in range(200):
            user = (1 if arm == "control" else 1000) + i
            rid = f"{arm[:3]}{i:029d}"
            impressions.append(
                {"id": rid, "user_id": user, "model_version": arm, "strategy": "autoencoder",
                 "experiment_id": "e", "arm": arm, "shown_at": datetime.fromtimestamp(now, UTC),
                 "shown_ms": int(now * 1000), "movie_ids": "1"}
            )  # fmt: skip
            stars = 5.0 if i < hits else 2.0
            ratings.append(
                {"user_id": user, "movie_id": 1, "rating": stars, "timestamp": int(now) + 1}
            )
    with engine.begin() as conn:
        conn.execute(insert(Impression), impressions)
        conn.execute(insert(Rating), ratings)
    with Session(engine) as db:
        row = Experiment(id="e", control="control", candidate="candidate", share=0.5)
        found = experiments.report(db, row, 3600, min_impressions=200)
        too_few = experiments.report(db, row, 3600, min_impressions=201)
    arms = {arm["arm"]: arm for arm in found.arms}
    assert arms["control"]["hits"] == control_hits and arms["candidate"]["hits"] == candidate_hits
    assert found.difference["hit_rate"] == pytest.approx((candidate_hits - control_hits) / 200)
    assert found.verdict == verdict
    assert too_few.verdict == "not enough data"


def test_an_idle_process_preloads_the_running_experiments_candidate(
    two_versions: tuple[Settings, str, str], engine: Engine, admin_headers: dict[str, str]
) -> None:
    """The poll loads the candidate before a user of its arm asks (an older version is not
    the "upcoming" one the poll preloads anyway)."""
    from app.models import Experiment

    settings, weak, good = two_versions
    with TestClient(create_app(settings.model_copy(update={"model_poll_seconds": 300}))) as client:
        recommender = client.app.state.recommender  # type: ignore[attr-defined]
        activate(client, admin_headers, good)
        assert recommender.version == good
        with Session(engine) as db, db.begin():
            db.add(Experiment(id="e", control=good, candidate=weak, share=0.5))
        recommender.models._recent.pop(weak, None)  # as a process that never loaded it
        recommender.refresh_model()
        assert weak in recommender.models.loaded_versions
        assert recommender.version == good, "preloaded, not served"
