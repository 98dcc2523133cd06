"""Security: the admin token stays secret, weak tokens refuse production, SQL is bound,
CORS is opt-in, and no error answer carries a stack trace or SQL."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError
from sqlalchemy import Engine
from sqlalchemy.exc import DataError, IntegrityError, OperationalError

from app.config import Settings
from app.main import create_app
from app.services import movies as movie_service
from app.services import ratings as rating_service
from tests.conftest import ADMIN_TOKEN
from tests.factories import CATALOG, add_catalog
from tests.reliability_helpers import assert_no_leak, movies_snapshot, ratings_snapshot

ROOT = Path(__file__).resolve().parents[1]
INJECTIONS = [
    "'; DROP TABLE ratings; --",
    "' OR '1'='1",
    '" OR ""="',
    "1; DELETE FROM movies",
    "%",
    "_",
    "\\",
    "%' UNION SELECT id, title FROM movies --",
    "Robert'); DROP TABLE movies;--",
    "$$; TRUNCATE ratings; $$",
    "') OR 1=1 /*",
]


@pytest.fixture
def api(settings: Settings, engine: Engine) -> Iterator[TestClient]:
    add_catalog(engine)
    quiet = settings.model_copy(update={"run_worker_in_api": False, "log_level": "DEBUG"})
    with TestClient(create_app(quiet), raise_server_exceptions=False) as client:
        for movie_id in (1, 2, 50):
            rating = {"user_id": 1, "movie_id": movie_id, "rating": 4.0, "timestamp": 1}
            assert client.post("/ratings", json=rating).status_code == 201
        yield client


def test_admin_token_is_never_logged_or_echoed(
    api: TestClient,
    admin_headers: dict,
    capfd: pytest.CaptureFixture,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    near_miss = ADMIN_TOKEN[:-1] + "X"
    answers = [
        api.get("/admin/models", headers=admin_headers),
        api.get("/admin/jobs/nope", headers=admin_headers),
        api.post("/admin/retrain", json={"epochs": 0}, headers=admin_headers),
        api.post("/admin/retrain", json={"preset": "fast"}, headers=admin_headers),
        api.get("/admin/models", headers={"Authorization": f"Bearer {near_miss}"}),
        api.get("/admin/models", headers={"Authorization": f"Basic {ADMIN_TOKEN}"}),
        api.get("/metrics"),
        api.get("/openapi.json"),
        api.get("/readyz"),
    ]
    assert [a.status_code for a in answers[:6]] == [200, 404, 422, 202, 401, 401]
    for answer in answers:
        assert ADMIN_TOKEN not in answer.text
        assert near_miss not in answer.text
        assert ADMIN_TOKEN not in str(answer.headers)
    settings: Settings = api.app.state.settings
    assert ADMIN_TOKEN not in repr(settings) and ADMIN_TOKEN not in str(settings.model_dump())
    captured = capfd.readouterr()
    logs = captured.out + captured.err + caplog.text
    assert ADMIN_TOKEN not in logs
    assert near_miss not in logs


def test_token_comparison_rejects_every_near_miss(api: TestClient) -> None:
    """secrets.compare_digest in the guard; here: behaviour for prefixes, suffixes, bytes."""
    candidates = [
        "",
        ADMIN_TOKEN[:-1],
        ADMIN_TOKEN + "0",
        "X" + ADMIN_TOKEN[1:],
        ADMIN_TOKEN[:-1] + "X",
        ADMIN_TOKEN.upper(),
        ADMIN_TOKEN * 2,
    ]
    for candidate in candidates:
        response = api.get("/admin/models", headers={"Authorization": f"Bearer {candidate}"})
        assert response.status_code in (401, 403), candidate
    non_ascii = api.get("/admin/models", headers={"Authorization": b"Bearer \xff\xfe\xe9"})
    assert non_ascii.status_code == 401  # not a 500 from encoding
    assert api.get("/admin/models", headers={"Authorization": "Bearer"}).status_code == 401
    good = api.get("/admin/models", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert good.status_code == 200


@pytest.mark.parametrize(
    "token",
    ["changeme", "admin", "secret", "token", "short-but-ok", "CHANGEME-CHANGEME-1", "a" * 40],
)
def test_production_refuses_a_weak_or_placeholder_token(token: str) -> None:
    with pytest.raises(ValidationError) as info:
        Settings(environment="production", admin_token=token, _env_file=None)
    message = str(info.value)
    assert "ADMIN_TOKEN" in message
    assert "input_value" not in message  # the error must not print the secret either
    if len(token) >= 8:
        assert token not in message


def test_production_accepts_a_strong_token_and_development_anything() -> None:
    strong = "kT3v9_Qm2LpX8rZa0wYbN4"
    assert Settings(environment="production", admin_token=strong, _env_file=None).admin_token
    assert Settings(environment="production", _env_file=None).admin_token is None  # admin off
    weak = Settings(environment="development", admin_token="admin", _env_file=None)
    assert weak.admin_token_value() == "admin"


def test_cli_refuses_to_start_with_a_placeholder_token(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "ENVIRONMENT": "production",
        "ADMIN_TOKEN": "changeme",
        "DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}",
        "MODEL_DIR": str(tmp_path),
    }
    result = subprocess.run(
        [sys.executable, "-m", "app.cli", "migrate"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "ADMIN_TOKEN" in result.stderr
    assert "changeme" not in result.stderr + result.stdout
    assert not (tmp_path / "x.db").exists()  # refused before touching the database


def test_injection_strings_in_every_text_field_and_parameter(
    api: TestClient, engine: Engine, admin_headers: dict
) -> None:
    ratings_before = ratings_snapshot(engine)
    catalog_ids = {movie[0] for movie in CATALOG}
    for n, attack in enumerate(INJECTIONS):
        movie_id = 10_000 + n
        created = api.post(
            "/movies",
            json={"movie_id": movie_id, "title": f"T {attack}", "genres": [attack]},
            headers=admin_headers,
        )
        assert created.status_code == 201, created.text
        assert created.json()["title"] == f"T {attack}".strip()
        assert created.json()["genres"] == [attack]
        found = api.get("/movies", params={"q": attack, "limit": 100})
        assert found.status_code == 200
        titles = [item["title"] for item in found.json()["items"]]
        assert titles and all(attack.lower() in t.lower() for t in titles), (attack, titles)
        by_genre = api.get("/movies", params={"genre": attack})
        assert [m["movie_id"] for m in by_genre.json()["items"]] == [movie_id]
        for method, url, params in [
            ("get", "/users/1/recommendations", {"genre": attack}),
            ("get", "/admin/jobs/" + attack.replace("/", ""), None),
            ("post", "/admin/models/" + attack.replace("/", "") + "/activate", None),
            ("post", "/admin/retrain", None),
        ]:
            kwargs = {"json": {"preset": attack}} if url == "/admin/retrain" else {}
            answer = api.request(method, url, params=params, headers=admin_headers, **kwargs)
            assert answer.status_code < 500, (url, attack, answer.text)
            assert_no_leak(answer.text, echoed=attack)
        for path in (f"/movies/{attack}", f"/users/{attack}/ratings"):
            assert api.get(path).status_code in (404, 422)
    movies = movies_snapshot(engine)
    assert catalog_ids <= set(movies) and len(movies) == len(catalog_ids) + len(INJECTIONS)
    assert ratings_snapshot(engine) == ratings_before
    # the wildcard characters are literal: "%" finds only titles that contain "%"
    percent = api.get("/movies", params={"q": "%", "limit": 100}).json()
    assert percent["total"] == sum("%" in a for a in INJECTIONS)


def test_cors_is_off_unless_configured(settings: Settings) -> None:
    origin = {"Origin": "https://evil.example"}
    preflight = {
        "Origin": "https://app.example",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type",
    }
    quiet = settings.model_copy(update={"run_worker_in_api": False})
    with TestClient(create_app(quiet)) as client:
        assert "access-control-allow-origin" not in client.get("/healthz", headers=origin).headers
        answer = client.options("/ratings", headers=preflight)
        assert "access-control-allow-origin" not in answer.headers
        assert answer.status_code == 405
    configured = quiet.model_copy(update={"cors_origins": ["https://app.example"]})
    with TestClient(create_app(configured)) as client:
        allowed = client.get("/healthz", headers={"Origin": "https://app.example"})
        assert allowed.headers["access-control-allow-origin"] == "https://app.example"
        refused = client.get("/healthz", headers=origin)
        assert "access-control-allow-origin" not in refused.headers
        answer = client.options("/ratings", headers=preflight)
        assert answer.status_code == 200
        assert answer.headers["access-control-allow-origin"] == "https://app.example"


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (RuntimeError("boom at SELECT secret FROM users WHERE x = 'y'"), 500),
        (OperationalError("SELECT 1 FROM ratings", {"p": 1}, Exception("conn refused")), 503),
        (IntegrityError("INSERT INTO ratings VALUES (1)", {}, Exception("duplicate key")), 409),
        (DataError("INSERT INTO movies (title) VALUES (%(t)s)", {}, Exception("NUL")), 422),
    ],
)
def test_errors_carry_no_stack_trace_or_sql(
    api: TestClient,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture,
    error: Exception,
    status: int,
) -> None:
    def explode(*_args: object, **_kwargs: object) -> None:
        raise error

    monkeypatch.setattr(movie_service, "search_movies", explode)
    monkeypatch.setattr(rating_service, "upsert_rating", explode)
    for response in (
        api.get("/movies"),
        api.post("/ratings", json={"user_id": 1, "movie_id": 1, "rating": 3.0}),
    ):
        assert response.status_code == status, response.text
        assert response.headers["content-type"].startswith("application/json")
        assert isinstance(response.json()["detail"], str | list)
        assert_no_leak(response.text)
        assert "secret" not in response.text and "conn refused" not in response.text
    if status == 500:  # the operator still gets the traceback, in the log only
        captured = capfd.readouterr()
        assert "Traceback" in captured.out + captured.err


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("OPTIONS", "/movies", "GET, POST"),
        ("PUT", "/movies", "GET, POST"),
        ("PATCH", "/ratings", "POST"),
        ("GET", "/users/1/ratings/2", "DELETE"),
        ("DELETE", "/admin/retrain", "POST"),
    ],
)
def test_method_not_allowed_names_every_allowed_method(
    api: TestClient, method: str, path: str, allowed: str
) -> None:
    """RFC 9110: a 405 carries Allow, listing all the path's methods, not the first route's."""
    response = api.request(method, path)
    assert response.status_code == 405
    assert response.headers["allow"] == allowed
    assert response.json()["detail"]
