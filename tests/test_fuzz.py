"""Property-based fuzzing of the whole HTTP API from its own OpenAPI schema (schemathesis).

Two runs, both through the ASGI app (no network), admin operations included (with the
token), bounded and seeded so they stay fast and reproducible in CI:

- schemathesis's own engine with every check (`st run --checks all`) and its examples,
  coverage and fuzzing phases: the published schema must be exactly what the server
  accepts (schema-valid data is accepted, invalid data refused, undeclared methods get a
  405 with Allow, responses match their declared schemas);
- a per-operation run that logs every accepted write: afterwards the database must hold
  exactly the seeded data plus those writes, nothing else.

Anything they ever find is kept as a regular test (test_reliability_limits.py, and the
schema mismatches below).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import hypothesis
import jsonschema_rs
import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, Phase, given
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.config import SchemathesisConfig
from schemathesis.engine import events
from schemathesis.engine import from_schema as schemathesis_engine
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)
from sqlalchemy import Engine

from app.config import Settings
from app.main import create_app
from tests.conftest import ADMIN_TOKEN
from tests.factories import seed_synthetic
from tests.reliability_helpers import (
    assert_no_leak,
    movies_snapshot,
    ratings_snapshot,
    registry_snapshot,
)
from tests.test_recommendations_api import train_tiny

EXAMPLES = {GenerationMode.POSITIVE: 20, GenerationMode.NEGATIVE: 8}
CHECKS = {
    GenerationMode.POSITIVE: [
        not_a_server_error,
        status_code_conformance,
        content_type_conformance,
        response_schema_conformance,
    ],
    GenerationMode.NEGATIVE: [
        not_a_server_error,
        status_code_conformance,
        content_type_conformance,
        response_schema_conformance,
        negative_data_rejection,
    ],
}
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def fuzz_settings(mode: GenerationMode) -> hypothesis.settings:
    return hypothesis.settings(
        max_examples=EXAMPLES[mode],
        deadline=None,
        derandomize=True,  # the same cases every run: a CI failure reproduces locally
        database=None,
        phases=[Phase.explicit, Phase.generate, Phase.shrink],
        suppress_health_check=list(HealthCheck),
    )


@dataclass
class WriteLog:
    """What the accepted requests asked to change, in order, to replay on the snapshot."""

    ratings: list[tuple[str, tuple[int, int], float | None, int | None]] = field(
        default_factory=list
    )
    movies: dict[int, Any] = field(default_factory=dict)
    jobs: set[str] = field(default_factory=set)
    activated: list[str] = field(default_factory=list)

    def record(self, method: str, template: str, case: Any, response: Any) -> None:
        status = response.status_code
        body = case.body if isinstance(case.body, dict | list) else None
        if method == "POST" and template == "/ratings" and status in (200, 201):
            stored = response.json()
            key = (stored["user_id"], stored["movie_id"])
            self.ratings.append(("set", key, stored["rating"], stored["timestamp"]))
        elif method == "POST" and template == "/ratings/batch" and status == 200:
            assert body is not None
            for item in body["ratings"]:
                key = (int(item["user_id"]), int(item["movie_id"]))
                self.ratings.append(("set", key, float(item["rating"]), item.get("timestamp")))
        elif method == "DELETE" and "/ratings/" in template and status == 204:
            params = case.path_parameters
            key = (int(params["user_id"]), int(params["movie_id"]))
            self.ratings.append(("delete", key, None, None))
        elif method == "POST" and template == "/movies" and status == 201:
            created = response.json()
            for movie in created if isinstance(created, list) else [created]:
                self.movies[movie["movie_id"]] = (
                    movie["title"],
                    movie["year"],
                    tuple(sorted(movie["genres"])),
                )
        elif template == "/admin/retrain" and status == 202:
            self.jobs.add(response.json()["job_id"])
        elif template.endswith("/activate") and status == 200:
            self.activated.append(response.json()["version"])


def _send(client: TestClient, case: Any) -> Any:
    kwargs = case.as_transport_kwargs(base_url="http://testserver", headers=AUTH)
    content = kwargs.get("data")
    return client.request(
        kwargs["method"],
        kwargs["url"],
        headers=kwargs.get("headers"),
        params=kwargs.get("params"),
        json=kwargs.get("json"),
        content=content.encode() if isinstance(content, str) else content,
    )


def fuzz_operation(
    client: TestClient, operation: Any, mode: GenerationMode, writes: WriteLog
) -> None:
    """Hypothesis drives one operation: send, log accepted writes, run the checks."""

    @fuzz_settings(mode)
    @given(case=operation.as_strategy(generation_mode=mode))
    def fuzz(case: Any) -> None:
        response = _send(client, case)
        writes.record(case.method.upper(), case.path, case, response)
        if response.status_code >= 400:
            assert_no_leak(response.text)
        case.validate_response(response, checks=CHECKS[mode])

    fuzz()


@pytest.fixture
def fuzz_target(settings: Settings, engine: Engine) -> Iterator[tuple[TestClient, Engine]]:
    """Seeded catalog and ratings, one trained model, no worker (retrain only queues)."""
    seed_synthetic(engine)
    quiet = settings.model_copy(update={"run_worker_in_api": False})
    train_tiny(quiet, engine)
    with TestClient(create_app(quiet), raise_server_exceptions=False) as client:
        yield client, engine


def test_fuzz_every_operation_and_nothing_else_changes(
    fuzz_target: tuple[TestClient, Engine],
) -> None:
    client, engine = fuzz_target
    ratings_before = ratings_snapshot(engine)
    movies_before = movies_snapshot(engine)
    registry_before = registry_snapshot(engine)
    schema = schemathesis.openapi.from_dict(client.app.openapi())
    writes = WriteLog()
    failures: list[str] = []
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 12, [op.label for op in operations]

    for operation in operations:
        raw = operation.definition.raw
        takes_input = bool(raw.get("parameters") or raw.get("requestBody"))
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            if mode is GenerationMode.NEGATIVE and not takes_input:
                continue  # nothing to make invalid (GET /healthz)
            try:
                fuzz_operation(client, operation, mode, writes)
            except (Exception, BaseExceptionGroup) as exc:  # report every operation's failure
                failures.append(f"{operation.label} [{mode.value}]: {exc}")
    assert not failures, "\n\n".join(failures)

    expected = dict(ratings_before)
    for action, key, rating, timestamp in writes.ratings:
        if action == "delete":
            expected.pop(key, None)
        else:
            expected[key] = (rating, timestamp)  # timestamp None: the server's clock
    actual = ratings_snapshot(engine)
    assert set(actual) == set(expected), "ratings appeared or vanished unasked"
    for key, (rating, timestamp) in expected.items():
        assert actual[key][0] == rating, key
        # 0 is skipped: services/ratings.py stores `timestamp or now`, so a 0 becomes the
        # server's clock (reported; the schema allows 0).
        if timestamp:
            assert actual[key][1] == timestamp, key
    assert movies_snapshot(engine) == {**movies_before, **writes.movies}
    registry_after = registry_snapshot(engine)
    assert set(registry_after["versions"]) == set(registry_before["versions"])
    if not writes.activated:
        assert registry_after["versions"] == registry_before["versions"]
    assert set(registry_after["jobs"]) == set(registry_before["jobs"]) | writes.jobs


# Examples per operation and mode in the fuzzing phase; the examples and coverage phases
# add their own boundary cases (about 1,000 requests in all, a few seconds).
ENGINE_EXAMPLES = 5


def engine_config() -> SchemathesisConfig:
    """`st run --checks all --max-examples 5 --seed 7 -H 'Authorization: Bearer ...'`."""
    return SchemathesisConfig.from_dict(
        {
            "seed": 7,
            "headers": AUTH,
            "checks": {"enabled": True},
            "generation": {"max-examples": ENGINE_EXAMPLES, "database": "none"},
            "phases": {"stateful": {"enabled": False}},
            "cache": {"enabled": False},
        }
    )


def engine_failures(schema: Any) -> tuple[list[str], int, set[str]]:
    """Run every phase; return the failed checks, the requests sent and the checks run."""
    failures: list[str] = []
    requests = 0
    ran: set[str] = set()
    for event in schemathesis_engine(schema).execute():
        if isinstance(event, events.ScenarioFinished):
            requests += len(event.recorder.interactions)
            for checks in event.recorder.checks.values():
                for check in checks:
                    ran.add(check.name)
                    if check.failure_info is not None:
                        failure = check.failure_info.failure
                        sample = check.failure_info.code_sample
                        failures.append(f"{check.name}: {failure.title}\n{sample}")
        elif isinstance(event, events.NonFatalError):
            failures.append(f"{event.label}: the app raised {event.value!r}")
        elif isinstance(event, events.FatalError):
            failures.append(f"schemathesis stopped: {event.exception!r}")
    return failures, requests, ran


def test_schemathesis_all_checks_find_no_mismatch(fuzz_target: tuple[TestClient, Engine]) -> None:
    client, _engine = fuzz_target
    schema = schemathesis.openapi.from_asgi("/openapi.json", client.app, config=engine_config())
    failures, requests, ran = engine_failures(schema)
    assert not failures, "\n\n".join(sorted(set(failures)))
    assert requests >= 200, requests  # it really ran
    for check in ("positive_data_acceptance", "negative_data_rejection", "unsupported_method"):
        assert check in ran


def request_schema_accepts(api: TestClient, method: str, path: str, body: Any) -> bool:
    """Whether the published OpenAPI request schema of this operation admits the body."""
    spec = api.get("/openapi.json").json()
    content = spec["paths"][path][method]["requestBody"]["content"]["application/json"]
    schema = {**content["schema"], "components": spec["components"]}
    return bool(jsonschema_rs.Draft202012Validator(schema).is_valid(body))


@pytest.fixture
def api(client: TestClient, engine: Engine) -> TestClient:
    seed_synthetic(engine)
    return client


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("post", "/ratings", {"user_id": 1, "movie_id": 1, "rating": 3, "timestamp": False}),
        ("post", "/ratings/batch", {"ratings": [{}, {}]}),
        ("post", "/movies", {"movie_id": 2**63, "title": "x"}),
        ("post", "/admin/retrain", {"epochs": None}),
        ("post", "/admin/retrain", {"hidden": []}),
        ("post", "/admin/retrain", {"rating_scale": [0, 0]}),
        ("post", "/admin/retrain", {"preset": ""}),
        ("post", "/admin/retrain", {"ranking_head": 1}),
    ],
)
def test_what_the_fuzzer_found_is_invalid_in_the_schema_and_refused(
    api: TestClient, method: str, path: str, body: Any
) -> None:
    """The mismatches of issue 12: each body is now both schema-invalid and a 422."""
    assert not request_schema_accepts(api, method, path, body)
    response = api.request(method, path, json=body, headers=AUTH)
    assert response.status_code == 422, response.text


def test_retrain_schema_accepts_what_the_server_accepts(api: TestClient) -> None:
    """Nulls where ModelConfig takes None ("chosen on validation"), star-scale pairs."""
    body = {"preset": "fast", "item_weight": None, "rating_scale": [1, 5], "hidden": [8, 4]}
    assert request_schema_accepts(api, "post", "/admin/retrain", body)
    retrain = api.get("/openapi.json").json()["components"]["schemas"]["RetrainIn"]
    assert "null" not in str(retrain["properties"]["epochs"])
    assert retrain["properties"]["preset"]["enum"] == ["default", "seed", "fast"]
    answer = api.post("/admin/retrain", json=body, headers=AUTH)
    assert answer.status_code == 202, answer.text
