"""Recommendations and predictions: fold-in, invariants, popular fallback, and model
activation (each request is answered by the version active when it read the database)."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY
from sqlalchemy import Engine, select, update
from sqlalchemy.orm import Session

from app.config import Settings
from app.db import create_db_engine, create_session_factory
from app.jobs.training import TrainingOutcome, train_and_register
from app.main import create_app
from app.ml.artifacts import load_artifact
from app.ml.config import config_from
from app.models import ModelVersion, Movie
from app.serving import catalog as catalog_module
from app.serving import lifecycle, popular, ranking
from app.serving.popular import Popularity, build_popular_list
from app.serving.ranking import RecommendRequest, SessionRatings
from app.serving.recommender import Recommender
from tests.factories import LENIENT_GATE, TINY_TRAINING, damage_stored_artifact, seed_synthetic
from tests.reliability_helpers import run_together


def train_tiny(settings: Settings, engine: Engine, **overrides: object) -> TrainingOutcome:
    config = config_from("fast", **{**TINY_TRAINING, **overrides})
    outcome = train_and_register(settings, engine, config)
    assert outcome is not None  # None only under torchrun
    return outcome


@pytest.fixture
def seeded(settings: Settings, engine: Engine) -> Settings:
    seed_synthetic(engine)
    return settings.model_copy(update={"run_worker_in_api": False, "model_poll_seconds": 0.2})


@pytest.fixture
def trained(seeded: Settings, engine: Engine) -> TrainingOutcome:
    outcome = train_tiny(seeded, engine)
    assert outcome.activated
    return outcome


def assert_invariants(body: dict, rated: set[int], n: int) -> None:
    ids = [item["movie_id"] for item in body["items"]]
    scores = [item["score"] for item in body["items"]]
    assert len(ids) <= n
    assert len(ids) == len(set(ids)), "no movie twice"
    assert not set(ids) & rated, "never a movie the user rated"
    assert scores == sorted(scores, reverse=True), "ordered by score"


def rated_by(client: TestClient, user_id: int) -> set[int]:
    page = client.get(f"/users/{user_id}/ratings", params={"limit": 1000}).json()
    return {item["movie_id"] for item in page["items"]}


def test_popular_without_a_model(seeded: Settings) -> None:
    with TestClient(create_app(seeded)) as client:
        body = client.get("/users/1/recommendations", params={"n": 5}).json()
        assert body["strategy"] == "popular" and body["model_version"] is None
        assert len(body["items"]) == 5
        assert_invariants(body, rated_by(client, 1), 5)
        fresh = client.get("/users/999/recommendations").json()
        assert fresh["strategy"] == "popular" and len(fresh["items"]) == 10


def test_predictions_need_a_model(seeded: Settings) -> None:
    with TestClient(create_app(seeded)) as client:
        response = client.get("/users/1/predictions", params={"movie_id": [1, 2]})
        assert response.status_code == 503
        assert "no model" in response.json()["detail"]


def test_autoencoder_recommendations_keep_every_invariant(
    seeded: Settings, trained: TrainingOutcome
) -> None:
    with TestClient(create_app(seeded)) as client:
        for user_id in (1, 2, 17, 60):
            for n in (1, 5, 40):
                body = client.get(f"/users/{user_id}/recommendations", params={"n": n}).json()
                assert body["strategy"] == "autoencoder"
                assert body["model_version"] == trained.version
                assert_invariants(body, rated_by(client, user_id), n)
                assert all(item["title"] for item in body["items"])


def test_fold_in_a_new_rating_changes_the_next_answer(
    seeded: Settings, trained: TrainingOutcome
) -> None:
    with TestClient(create_app(seeded)) as client:
        top = client.get("/users/3/recommendations", params={"n": 3}).json()["items"][0]
        posted = client.post(
            "/ratings", json={"user_id": 3, "movie_id": top["movie_id"], "rating": 5}
        )
        assert posted.status_code == 201
        after = client.get("/users/3/recommendations", params={"n": 40}).json()
        assert top["movie_id"] not in {item["movie_id"] for item in after["items"]}


def test_new_user_gets_autoencoder_recommendations_from_their_ratings(
    seeded: Settings, engine: Engine
) -> None:
    # long enough to learn the two taste groups of the synthetic data
    assert train_tiny(seeded, engine, hidden=[32], epochs=30, patience=30).activated
    with TestClient(create_app(seeded)) as client:
        client.post(
            "/ratings/batch",
            json={"ratings": [{"user_id": 5000, "movie_id": m, "rating": 5} for m in (1, 3, 5, 7)]},
        )
        body = client.get("/users/5000/recommendations", params={"n": 5}).json()
        assert body["strategy"] == "autoencoder"
        assert_invariants(body, {1, 3, 5, 7}, 5)
        # taste groups: odd movies are liked together, so most picks should be odd
        odd = sum(item["movie_id"] % 2 for item in body["items"])
        assert odd >= 3, body["items"]


def test_genre_filter_is_honoured(seeded: Settings, trained: TrainingOutcome) -> None:
    with TestClient(create_app(seeded)) as client:
        body = client.get("/users/2/recommendations", params={"n": 10, "genre": "sci-fi"}).json()
        assert body["items"]
        assert all("Sci-Fi" in item["genres"] for item in body["items"])
        none = client.get("/users/2/recommendations", params={"genre": "Western"}).json()
        assert none["items"] == []


@pytest.mark.parametrize(
    "query",
    [
        "n=0",
        "n=101",
        "n=abc",
        "n=1.5",
        "genre=",
        "genre=" + "x" * 65,
        "&".join(["genre=Drama"] * 21),
        "exclude=0",
        "exclude=x",
        "explain=maybe",
        "page=2",
    ],
)
def test_bad_recommendation_queries_are_422(seeded: Settings, query: str) -> None:
    with TestClient(create_app(seeded)) as client:
        response = client.get(f"/users/1/recommendations?{query}")
        assert response.status_code == 422
        (error,) = response.json()["detail"]
        assert error["loc"][0] == "query"
        assert client.get("/users/0/recommendations").status_code == 422


def test_the_recommendations_query_is_published_as_it_is_checked(seeded: Settings) -> None:
    """The OpenAPI parameters are FastAPI's own, from the route's query model."""
    with TestClient(create_app(seeded)) as client:
        spec = client.get("/openapi.json").json()
        ok = client.get("/users/1/recommendations?n=3&genre=Drama&genre=Comedy&explain=true")
        unknown = client.get("/users/1/recommendations?page=2").json()["detail"][0]
    operation = spec["paths"]["/users/{user_id}/recommendations"]["get"]
    query = {p["name"]: p for p in operation["parameters"] if p["in"] == "query"}
    assert set(query) == {"n", "genre", "exclude", "explain"}
    assert query["n"]["schema"]["minimum"] == 1 and query["n"]["schema"]["maximum"] == 100
    assert ok.status_code == 200 and len(ok.json()["items"]) <= 3
    assert unknown["type"] == "extra_forbidden" and unknown["loc"] == ["query", "page"]


def test_predictions_are_clamped_and_cover_rated_and_unrated(
    seeded: Settings, trained: TrainingOutcome, engine: Engine
) -> None:
    with TestClient(create_app(seeded)) as client:
        body = client.get("/users/1/predictions", params={"movie_id": [1, 2, 3]}).json()
        assert body["model_version"] == trained.version
        assert [i["movie_id"] for i in body["items"]] == [1, 2, 3]
        assert all(1.0 <= i["predicted_rating"] <= 5.0 for i in body["items"])
        missing = client.get("/users/1/predictions", params={"movie_id": [1, 4242]})
        assert missing.status_code == 404
        assert missing.json()["detail"]["movie_ids"] == [4242]
        too_many = client.get("/users/1/predictions", params={"movie_id": list(range(1, 102))})
        assert too_many.status_code == 422


def test_movie_added_after_training_is_never_recommended(
    seeded: Settings, trained: TrainingOutcome, admin_headers: dict
) -> None:
    with TestClient(create_app(seeded)) as client:
        client.post("/movies", json={"movie_id": 900, "title": "Late"}, headers=admin_headers)
        client.post("/ratings", json={"user_id": 1, "movie_id": 900, "rating": 5})
        body = client.get("/users/1/recommendations", params={"n": 40}).json()
        assert body["strategy"] == "autoencoder"
        assert 900 not in {i["movie_id"] for i in body["items"]}
        pred = client.get("/users/1/predictions", params={"movie_id": [900]}).json()
        assert pred["items"][0]["known_to_model"] is False


def _artifact_file(settings: Settings, version: str) -> Path:
    return next(Path(settings.model_dir).rglob(f"{version}*.pt"))


def test_lost_artifact_file_is_restored_from_the_database(
    seeded: Settings, trained: TrainingOutcome
) -> None:
    _artifact_file(seeded, trained.version).write_bytes(b"truncated")
    with TestClient(create_app(seeded)) as client:
        body = client.get("/users/1/recommendations").json()
        assert body["strategy"] == "autoencoder"
        assert body["model_version"] == trained.version


def test_replica_with_its_own_model_dir_serves_the_same_version(
    seeded: Settings, trained: TrainingOutcome, tmp_path: Path
) -> None:
    elsewhere = seeded.model_copy(update={"model_dir": tmp_path / "replica-models"})
    _artifact_file(seeded, trained.version).unlink()  # as if on another host
    with TestClient(create_app(elsewhere)) as client:
        assert client.get("/readyz").json()["model_version"] == trained.version
    assert list((tmp_path / "replica-models").rglob(f"{trained.version}*.pt"))


def test_unrecoverable_artifact_falls_back_to_popular_and_readyz_says_why(
    seeded: Settings, trained: TrainingOutcome, engine: Engine
) -> None:
    _artifact_file(seeded, trained.version).write_bytes(b"corrupted")
    damage_stored_artifact(engine, trained.version, b"also corrupted")
    with TestClient(create_app(seeded)) as client:
        body = client.get("/users/1/recommendations").json()
        assert body["strategy"] == "popular"
        ready = client.get("/readyz").json()
        assert trained.version in ready["detail"]


def _activate_elsewhere(engine: Engine, version: str) -> None:
    """Commit an activation as another process (a job, another replica) would."""
    with Session(engine) as session, session.begin():
        session.execute(update(ModelVersion).values(is_active=False))
        session.execute(
            update(ModelVersion).where(ModelVersion.version == version).values(is_active=True)
        )


@pytest.fixture
def no_polling(seeded: Settings) -> Settings:
    """The registry poll never runs within a test: requests must follow it on their own."""
    return seeded.model_copy(update={"model_poll_seconds": 300.0})


@pytest.fixture
def two_versions(no_polling: Settings, engine: Engine) -> tuple[str, str]:
    lenient = no_polling.model_copy(update={**LENIENT_GATE})
    old, new = train_tiny(lenient, engine), train_tiny(lenient, engine, seed=7)
    assert old.activated and new.activated
    return old.version, new.version


@pytest.fixture
def loads(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Every artifact the recommender loads, in order (each load a little slow)."""
    seen: list[Path] = []

    def counting(path: Path, *args: Any, **kwargs: Any) -> object:
        seen.append(Path(path))
        time.sleep(0.05)  # so concurrent requests really meet the load in progress
        return load_artifact(path, *args, **kwargs)

    monkeypatch.setattr(lifecycle, "load_artifact", counting)
    return seen


def test_the_first_model_answers_the_very_next_request(
    no_polling: Settings, engine: Engine
) -> None:
    with TestClient(create_app(no_polling)) as client:
        assert client.get("/users/1/recommendations").json()["model_version"] is None
        version = train_tiny(no_polling, engine).version
        body = client.get("/users/1/recommendations").json()
        assert (body["strategy"], body["model_version"]) == ("autoencoder", version)
        predicted = client.get("/users/1/predictions", params={"movie_id": [1]}).json()
        assert predicted["model_version"] == version


def test_activation_elsewhere_answers_the_very_next_request(
    no_polling: Settings, engine: Engine, two_versions: tuple[str, str]
) -> None:
    old, new = two_versions
    with TestClient(create_app(no_polling)) as client:
        assert client.get("/readyz").json()["model_version"] == new
        _activate_elsewhere(engine, old)  # e.g. a rollback by another replica
        assert client.get("/users/1/recommendations").json()["model_version"] == old
        predicted = client.get("/users/2/predictions", params={"movie_id": [1]}).json()
        assert predicted["model_version"] == old
        assert client.get("/readyz").json()["model_version"] == old
        _activate_elsewhere(engine, new)
        assert (
            client.get("/users/1/predictions", params={"movie_id": [1]}).json()["model_version"]
            == new
        )


def test_concurrent_requests_share_one_load_and_a_rollback_loads_nothing(
    no_polling: Settings, engine: Engine, two_versions: tuple[str, str], loads: list[Path]
) -> None:
    old, new = two_versions
    with TestClient(create_app(no_polling)) as client:
        recommender = client.app.state.recommender  # type: ignore[attr-defined]
        assert [p.parent.name for p in loads] == [new]  # at start-up
        _activate_elsewhere(engine, old)
        answers: list[dict] = []

        def ask(user_id: int) -> Callable[[], None]:
            return lambda: answers.append(recommender.recommend(RecommendRequest(user_id, 5)))

        run_together([ask(user_id) for user_id in range(1, 9)])
        assert {a["model_version"] for a in answers} == {old} and len(answers) == 8
        assert [p.parent.name for p in loads] == [new, old], "one load, however many ask"
        _activate_elsewhere(engine, new)  # back to a version loaded a moment ago
        assert client.get("/users/1/recommendations").json()["model_version"] == new
        assert len(loads) == 2, "a recently served version is kept loaded"


def _failed_loads() -> float:
    """This process's failed model loads so far (the registry outlives each test's app)."""
    return REGISTRY.get_sample_value("saerec_model_loads_total", {"result": "failed"}) or 0.0


def _corrupt(settings: Settings, engine: Engine, version: str) -> None:
    _artifact_file(settings, version).write_bytes(b"corrupted")
    damage_stored_artifact(engine, version, b"also corrupted")


def test_a_version_that_cannot_load_leaves_the_previous_model_answering(
    no_polling: Settings, engine: Engine, loads: list[Path]
) -> None:
    lenient = no_polling.model_copy(update={**LENIENT_GATE})
    old = train_tiny(lenient, engine).version
    failed_before = _failed_loads()
    with TestClient(create_app(no_polling)) as client:
        broken = train_tiny(lenient, engine, seed=7).version
        _corrupt(no_polling, engine, broken)
        for user_id in (1, 2, 3):
            body = client.get(f"/users/{user_id}/recommendations").json()
            assert (body["strategy"], body["model_version"]) == ("autoencoder", old)
        # refused by the stored copy's checksum before any file is written or loaded
        assert [p.parent.name for p in loads] == [old]
        ready = client.get("/readyz").json()
        assert ready["model_version"] == old and broken in ready["detail"]
        assert 'saerec_model_loads_total{result="failed"}' in client.get("/metrics").text
        assert _failed_loads() == failed_before + 1, "tried once, not per request"
        _activate_elsewhere(engine, old)  # rolled back: nothing is wrong any more
        client.get("/users/1/recommendations")
        assert client.get("/readyz").json()["detail"] is None


def test_the_popular_list_is_built_at_start_up_not_by_a_request(
    seeded: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    builds: list[float] = []

    def counting(*args: Any, **kwargs: Any) -> object:
        builds.append(time.monotonic())
        return build_popular_list(*args, **kwargs)

    monkeypatch.setattr(popular, "build_popular_list", counting)
    with TestClient(create_app(seeded)) as client:
        assert len(builds) == 1
        assert client.get("/users/999/recommendations").json()["strategy"] == "popular"
        assert len(builds) == 1


def test_popular_rebuilds_are_spaced_by_their_cost(
    seeded: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rebuild as slow as 25M ratings' must not come back every REFRESH_SECONDS:
    at most 1 % of the time goes to it; a fast one keeps the configured pace."""
    now = [1000.0]
    build_seconds = [2.0]

    def timed_build(*args: Any) -> object:
        now[0] += build_seconds[0]
        return build_popular_list(*args)

    monkeypatch.setattr(popular, "build_popular_list", timed_build)
    engine = create_db_engine(seeded)
    try:
        sessions = create_session_factory(engine)
        popularity = Popularity(sessions, 20.0, refresh_seconds=30.0, clock=lambda: now[0])
        assert popularity.refresh_if_due(), "nothing built yet"
        assert popularity.interval == pytest.approx(200.0)
        now[0] += 60
        assert not popularity.refresh_if_due()
        now[0] += 141
        build_seconds[0] = 0.05
        assert popularity.refresh_if_due()
        assert popularity.interval == pytest.approx(30.0)
        now[0] += 29
        assert not popularity.refresh_if_due()
        now[0] += 2
        assert popularity.refresh_if_due()
        assert popularity.current().catalog.movie_ids.size > 0
    finally:
        engine.dispose()


def test_a_catalog_of_many_movies_reads_whole_tables_with_the_same_result(
    seeded: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past `CATALOG_CHUNK` ids the catalog is one pass over each table instead of
    IN-lists: the same titles, genres and masks, in the asked order, unknown ids blank."""
    engine = create_db_engine(seeded)
    try:
        with create_session_factory(engine)() as session:
            ids = np.array(session.scalars(select(Movie.id)).all()[::-1] + [10**9])
            by_key = catalog_module.load_catalog(session, ids)
            monkeypatch.setattr(catalog_module, "CATALOG_CHUNK", 3)
            whole = catalog_module.load_catalog(session, ids)
    finally:
        engine.dispose()
    assert ids.size > 3 and whole.titles == by_key.titles and whole.genres == by_key.genres
    assert whole.titles[-1] == "" and whole.genres[-1] == [] and all(whole.titles[:-1])
    assert sorted(whole.genre_masks) == sorted(by_key.genre_masks)
    for genre, mask in whole.genre_masks.items():
        assert np.array_equal(mask, by_key.genre_masks[genre])


def test_predictions_run_on_the_inference_executor(
    seeded: Settings, trained: TrainingOutcome, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads: list[str] = []
    predict = Recommender.predict

    def recording(self: Recommender, *args: object) -> object:
        threads.append(threading.current_thread().name)
        return predict(self, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(Recommender, "predict", recording)
    with TestClient(create_app(seeded)) as client:
        assert client.get("/users/1/predictions", params={"movie_id": [1]}).status_code == 200
    assert len(threads) == 1 and threads[0].startswith("recommend")


def test_answer_cache_gives_the_uncached_answer_and_follows_new_ratings(
    seeded: Settings, trained: TrainingOutcome
) -> None:
    def answer(client: TestClient) -> dict[str, Any]:
        body = client.get("/users/4/recommendations", params={"n": 7}).json()
        del body["recommendation_id"]  # new with every answer, a cached one too
        return body

    uncached = seeded.model_copy(update={"answer_cache_size": 0})
    with TestClient(create_app(uncached)) as client:
        expected = answer(client)
    with TestClient(create_app(seeded)) as client:
        first = answer(client)
        again = answer(client)
        assert first == again == expected
        top = first["items"][0]["movie_id"]
        client.post("/ratings", json={"user_id": 4, "movie_id": top, "rating": 1})
        after = answer(client)
        assert top not in {item["movie_id"] for item in after["items"]}
        client.delete(f"/users/4/ratings/{top}")
        assert answer(client) == expected


def test_the_hot_path_read_returns_every_half_star_exactly(
    seeded: Settings, engine: Engine
) -> None:
    """The hot-path read sends ratings as integer half stars: every value must survive it."""
    stars = [step / 2 for step in range(1, 11)]
    movies = list(range(1, len(stars) + 1))
    with TestClient(create_app(seeded)) as client:
        batch = [
            {"user_id": 7000, "movie_id": m, "rating": r}
            for m, r in zip(movies, stars, strict=True)
        ]
        assert client.post("/ratings/batch", json={"ratings": batch}).status_code < 300
        ids, values = client.app.state.recommender.user_ratings(7000)
    got = dict(zip(ids.tolist(), values.tolist(), strict=True))
    assert got == dict(zip(movies, stars, strict=True))
    assert client.app.state.recommender.user_ratings(7001)[0].size == 0


def test_uncached_answers_report_time_by_stage(seeded: Settings, trained: TrainingOutcome) -> None:
    """The benchmark's per-stage breakdown: every stage counts each model answer once."""

    def counts() -> dict[str, float]:
        return {
            stage: REGISTRY.get_sample_value(
                "saerec_recommend_stage_answers_total", {"stage": stage}
            )
            or 0.0
            for stage in ranking.STAGES
        }

    uncached = seeded.model_copy(update={"answer_cache_size": 0})
    with TestClient(create_app(uncached)) as client:
        before = counts()
        for user in (1, 2, 3):
            assert client.get(f"/users/{user}/recommendations").json()["strategy"] == "autoencoder"
        after = counts()
    assert {stage: after[stage] - before[stage] for stage in after} == dict.fromkeys(
        ranking.STAGES, 3.0
    )


def test_a_batch_answers_as_each_request_alone(seeded: Settings, trained: TrainingOutcome) -> None:
    """Requests that share a batch (concurrent traffic) get the answers they get alone:
    model, popular fallback, genre filter and anonymous sessions mixed, in order."""
    uncached = seeded.model_copy(update={"answer_cache_size": 0})
    session = SessionRatings.of([(3, 5.0), (1, 4.5), (8, 1.0)])
    requests = [
        RecommendRequest(1, 5),
        RecommendRequest(None, 6, session=session),
        RecommendRequest(999, 3),
        RecommendRequest(2, 4, ("Comedy",)),
        RecommendRequest(3, 7, exclude=(5,)),
        RecommendRequest(None, 2, ("Drama",), explain=True, session=session),
        RecommendRequest(1, 2, explain=True),
    ]
    with TestClient(create_app(uncached)) as client:
        recommender: Recommender = client.app.state.recommender
        alone = [recommender.recommend(request) for request in requests]
        together = recommender.recommend_many(requests)
    assert [a["strategy"] for a in alone] == [t["strategy"] for t in together]
    assert alone[2]["strategy"] == "popular" and alone[0]["strategy"] == "autoencoder"
    assert alone[1]["strategy"] == "autoencoder" and alone[1]["user_id"] is None
    for one, many in zip(alone, together, strict=True):
        assert [i["movie_id"] for i in one["items"]] == [i["movie_id"] for i in many["items"]]
        for a, b in zip(one["items"], many["items"], strict=True):
            assert a["score"] == pytest.approx(b["score"], abs=1e-4)
            assert a.keys() == b.keys()
            if "predicted_rating" in a:
                assert a["predicted_rating"] == pytest.approx(b["predicted_rating"], abs=1e-3)


def test_the_poll_checks_the_active_version_first_and_loads_only_a_change(
    no_polling: Settings, engine: Engine, two_versions: tuple[str, str], loads: list[Path]
) -> None:
    old, new = two_versions
    with TestClient(create_app(no_polling)) as client:
        recommender: Recommender = client.app.state.recommender  # type: ignore[attr-defined]
        assert [p.parent.name for p in loads] == [new]
        assert recommender.refresh_model() is False, "unchanged registry: nothing to do"
        assert len(loads) == 1
        _activate_elsewhere(engine, old)
        assert recommender.refresh_model() is True
        assert recommender.version == old and [p.parent.name for p in loads] == [new, old]


def test_a_serving_model_is_an_immutable_snapshot(
    seeded: Settings, trained: TrainingOutcome
) -> None:
    """Answers are cached beside the model, not in it: a loaded version never changes."""
    with TestClient(create_app(seeded)) as client:
        for _ in range(2):  # a miss, then a cached answer
            assert client.get("/users/1/recommendations").json()["strategy"] == "autoencoder"
        recommender: Recommender = client.app.state.recommender  # type: ignore[attr-defined]
        models = recommender.models
        model = models.model_for(recommender.version, models.generation)
    assert model is not None and model.version == trained.version
    with pytest.raises(dataclasses.FrozenInstanceError):
        model.version = "other"  # type: ignore[misc]
    assert set(vars(model)) == {f.name for f in dataclasses.fields(model)}, "no lazy state"
    assert not any(isinstance(v, dict | list | set) for v in vars(model).values())


def test_the_poll_preloads_a_version_registered_after_the_active_one(
    no_polling: Settings, engine: Engine, loads: list[Path]
) -> None:
    """A retrain registered a moment ago is loaded by the poll before it is activated, so
    the first answer after the activation waits for no load."""
    lenient = no_polling.model_copy(update={**LENIENT_GATE})
    old = train_tiny(lenient, engine)
    with TestClient(create_app(no_polling)) as client:
        recommender: Recommender = client.app.state.recommender  # type: ignore[attr-defined]
        new = train_tiny(lenient, engine, seed=7)
        _activate_elsewhere(engine, old.version)  # registered, newer, not active yet
        assert recommender.refresh_model() is False  # nothing to swap ...
        assert [p.parent.name for p in loads] == [old.version, new.version]  # ... preloaded
        assert recommender.version == old.version
        _activate_elsewhere(engine, new.version)
        answer = client.get("/users/1/recommendations").json()
        assert answer["model_version"] == new.version
        assert len(loads) == 2, "the first answer after the activation loaded nothing"


def test_a_replacement_stays_registered_and_inactive_while_the_servers_preload_it(
    no_polling: Settings, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    from app.jobs import training
    from app.services import registry

    lenient = no_polling.model_copy(update={**LENIENT_GATE})
    old = train_tiny(lenient, engine)
    during: list[tuple[str | None, str | None]] = []

    def waiting(seconds: float) -> None:
        assert seconds == 0.5
        with Session(engine) as session:
            during.append(
                (registry.active_version_id(session), registry.upcoming_version_id(session))
            )

    monkeypatch.setattr(training.time, "sleep", waiting)
    config = config_from("fast", **{**TINY_TRAINING, "seed": 7})
    new = train_and_register(lenient, engine, config, preload_wait=0.5)
    assert new is not None and new.activated
    assert during == [(old.version, new.version)]
    with Session(engine) as session:
        assert registry.active_version_id(session) == new.version
    assert training.preload_seconds(lenient) == training.PRELOAD_MAX_SECONDS  # poll: 300 s
    fast_poll = lenient.model_copy(update={"model_poll_seconds": 0.5})
    assert training.preload_seconds(fast_poll) == 2.0
