"""Health, readiness, metrics and error shapes."""

from __future__ import annotations

from fastapi.testclient import TestClient

from app.config import Settings
from app.main import create_app


def test_healthz(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}


def test_readyz_ok_when_database_answers(client: TestClient) -> None:
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json()["database"] == "ok"


def test_readyz_503_when_database_unreachable(tmp_path) -> None:
    settings = Settings(
        database_url="postgresql+psycopg://nobody@127.0.0.1:1/none",
        model_dir=tmp_path,
        _env_file=None,
    )
    with TestClient(create_app(settings)) as api:
        response = api.get("/readyz")
        assert response.status_code == 503
        assert response.json()["database"] == "unreachable"
        movies = api.get("/movies")
        assert movies.status_code == 503
        assert "database" in movies.json()["detail"]


def test_metrics_count_requests_by_route_template(client: TestClient) -> None:
    client.get("/movies/123456")
    text = client.get("/metrics").text
    assert 'route="/movies/{movie_id}"' in text
    assert 'status="404"' in text
    assert "saerec_ratings_total" in text
    assert 'saerec_training_jobs{status="running"} 0.0' in text
    assert "/movies/123456" not in text


def test_unknown_route_is_json_404(client: TestClient) -> None:
    response = client.get("/nope")
    assert response.status_code == 404
    assert response.json() == {"detail": "Not Found"}


def test_bad_database_url_fails_fast() -> None:
    import pytest
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="not supported"):
        Settings(database_url="mysql://root@localhost/x", _env_file=None)
    assert Settings(database_url="postgresql://u@h/db", _env_file=None).database_url.startswith(
        "postgresql+psycopg://"
    )


def test_job_launcher_survives_a_database_outage_at_start(tmp_path) -> None:
    from app.db import create_db_engine
    from app.jobs.launcher import JobLauncher

    settings = Settings(
        database_url="postgresql+psycopg://nobody@127.0.0.1:1/none",
        model_dir=tmp_path,
        _env_file=None,
    )
    launcher = JobLauncher(
        settings,
        create_db_engine(settings),
        child_env=settings.as_env(),
        poll_seconds=0.05,
    )
    launcher.start()
    import time

    time.sleep(0.5)
    assert launcher._thread is not None and launcher._thread.is_alive()
    launcher.stop()
    assert not launcher._thread.is_alive()


def test_routers_reach_app_state_and_path_types_only_through_deps() -> None:
    """Routes take typed dependencies (`RecommenderDep`, `UserId`, ...) declared once in
    app/api/deps.py; none reads `request.app.state` or redeclares a path type."""
    from pathlib import Path

    api = Path(__file__).resolve().parents[1] / "app" / "api"
    for path in sorted(api.glob("*.py")):
        if path.name == "deps.py":
            continue
        source = path.read_text()
        assert "app.state" not in source, f"{path.name} reads app.state"
        assert "Annotated[int, Path(" not in source, f"{path.name} redeclares a path type"
