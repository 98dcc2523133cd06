"""Property-based fuzzing of the whole HTTP API from its own OpenAPI schema (schemathesis).

Every operation, admin ones included (with the token), gets schema-valid and
schema-invalid requests through the ASGI app (no network). Checks: no 5xx, status codes,
content types and bodies conform to what the schema declares, invalid input is refused.
Afterwards the database must hold exactly the seeded data plus the writes the fuzzer's
accepted requests asked for: nothing else may change. Bounded (a fixed number of
examples per operation, derandomized) so it stays fast and reproducible in CI. Anything
it ever finds is kept as a regular test in test_reliability_limits.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import hypothesis
import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, Phase, given
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
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
        elif method == "DELETE" and status == 204:
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
        if timestamp is not None:
            assert actual[key][1] == timestamp, key
    assert movies_snapshot(engine) == {**movies_before, **writes.movies}
    registry_after = registry_snapshot(engine)
    assert set(registry_after["versions"]) == set(registry_before["versions"])
    if not writes.activated:
        assert registry_after["versions"] == registry_before["versions"]
    assert set(registry_after["jobs"]) == set(registry_before["jobs"]) | writes.jobs
