"""Artifacts at scale: stored once, in checksummed chunks in the database; MODEL_DIR only a
cache of them; every worker of a host mapping the one cached file (shared page cache)."""

from __future__ import annotations

import hashlib
import shutil
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, inspect, select
from sqlalchemy.orm import Session

from app.config import Settings
from app.main import create_app
from app.ml.artifacts import ArtifactStore, sha256_of
from app.models import ModelArtifactChunk, ModelVersion, utcnow
from app.services import registry
from tests.conftest import ADMIN_TOKEN
from tests.factories import seed_synthetic
from tests.test_multiprocess import pinned, running_server
from tests.test_recommendations_api import train_tiny

CHUNK_BYTES = 1024


def _chunks(engine: Engine, version: str) -> list[tuple[int, int, bytes]]:
    with Session(engine) as session:
        rows = session.execute(
            select(ModelArtifactChunk.chunk_index, ModelArtifactChunk.size, ModelArtifactChunk.data)
            .where(ModelArtifactChunk.version == version)
            .order_by(ModelArtifactChunk.chunk_index)
        )
        return [(index, size, bytes(data)) for index, size, data in rows]


@pytest.fixture
def chunked(settings: Settings, engine: Engine) -> tuple[Settings, str]:
    """A served version whose artifact is stored in many small chunks."""
    seed_synthetic(engine)
    small = settings.model_copy(
        update={"run_worker_in_api": False, "artifact_chunk_bytes": CHUNK_BYTES}
    )
    outcome = train_tiny(small, engine)
    assert outcome.activated
    return small, outcome.version


def test_an_artifact_of_many_chunks_is_stored_once_and_served_without_its_cache(
    chunked: tuple[Settings, str], engine: Engine
) -> None:
    settings, version = chunked
    cached = ArtifactStore(settings.model_dir).path(version)
    chunks = _chunks(engine, version)
    assert len(chunks) >= 10, "the artifact is many chunks long"
    assert [c[0] for c in chunks] == list(range(len(chunks)))
    assert all(size == CHUNK_BYTES == len(data) for _, size, data in chunks[:-1])
    joined = b"".join(data for *_, data in chunks)
    with Session(engine) as session:
        row = session.get(ModelVersion, version)
        assert row is not None
        assert row.artifact_bytes == len(joined) == cached.stat().st_size
        assert row.artifact_sha256 == hashlib.sha256(joined).hexdigest() == sha256_of(cached)
    # one stored copy: the chunks are the only bytes the database holds for a version
    assert "artifact" not in {c["name"] for c in inspect(engine).get_columns("model_versions")}

    # MODEL_DIR deleted while serving: the loaded model reads its mapping, not the path
    with TestClient(create_app(settings)) as client:
        before = _answer(client, 1)
        assert (before["strategy"], before["model_version"]) == ("autoencoder", version)
        shutil.rmtree(settings.model_dir)
        assert _answer(client, 1) == before
        body = client.get("/users/2/recommendations").json()
        assert (body["strategy"], body["model_version"]) == ("autoencoder", version)
        assert client.get("/readyz").json()["detail"] is None
    # the next load (another process, a restart) fetches the file again from the chunks
    with TestClient(create_app(settings)) as client:
        assert _answer(client, 1) == before
        listed = client.get("/admin/models", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
        assert [m["artifact_bytes"] for m in listed.json()] == [len(joined)]
    assert sha256_of(cached) == hashlib.sha256(joined).hexdigest()


def test_a_damaged_chunk_is_refused_by_its_checksum(
    chunked: tuple[Settings, str], engine: Engine
) -> None:
    settings, version = chunked
    middle = len(_chunks(engine, version)) // 2
    with Session(engine) as session, session.begin():
        chunk = session.get(ModelArtifactChunk, (version, middle))
        assert chunk is not None
        chunk.data = b"\0" * len(chunk.data)  # same size, other bytes
    shutil.rmtree(settings.model_dir)
    with TestClient(create_app(settings)) as client:
        body = client.get("/users/1/recommendations").json()
        assert body["strategy"] == "popular"
        detail = client.get("/readyz").json()["detail"]
        assert f"chunk {middle} of model version {version!r} fails its checksum" in detail
    assert not ArtifactStore(settings.model_dir).path(version).exists(), "nothing written"


def mapped_memory(pid: int, path: Path) -> tuple[int, int]:
    """(Rss, Pss) in kB of the process's mappings of ``path``, from /proc/PID/smaps."""
    rss = pss = 0
    inside = False
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        fields = line.split()
        if fields and "-" in fields[0] and len(fields) >= 5:  # a mapping's header line
            inside = len(fields) >= 6 and fields[5] == str(path)
        elif inside and fields[0] == "Rss:":
            rss += int(fields[1])
        elif inside and fields[0] == "Pss:":
            pss += int(fields[1])
    return rss, pss


@pytest.mark.slow
def test_two_workers_share_one_mapped_copy_of_the_weights(
    settings: Settings, engine: Engine, tmp_path: Path
) -> None:
    """`serve --workers 2`: each worker maps the version's cached file, and the pages it
    reads are the other's too (Pss at most 0.6 of Rss: two sharers give 0.5)."""
    seed_synthetic(engine, n_movies=800, per_user=20)
    local = settings.model_copy(update={"run_worker_in_api": False})
    version = train_tiny(local, engine, hidden=[96], epochs=1).version
    cached = ArtifactStore(settings.model_dir).path(version)
    assert cached.stat().st_size > 1_000_000
    with running_server(settings.database_url, tmp_path, 2) as base, pinned(base, 2) as clients:
        for client in clients.values():
            for user_id in (1, 2):
                body = client.get(f"/users/{user_id}/recommendations").json()
                assert (body["strategy"], body["model_version"]) == ("autoencoder", version)
        mapped = {pid: mapped_memory(pid, cached) for pid in clients}
    for pid, (rss, pss) in mapped.items():
        assert rss > 1000, f"worker {pid} maps {cached}: {mapped}"
        assert pss <= 0.6 * rss, f"worker {pid}'s pages are its own: {mapped}"


def test_retention_keeps_the_active_version_and_the_rollback_target(
    settings: Settings, engine: Engine
) -> None:
    """KEEP_MODEL_VERSIONS=1 still keeps two: the active one and the one that served
    before it; the others go with their chunks and cached folders."""
    now = utcnow()
    store = ArtifactStore(settings.model_dir)
    served = {"v1": now - timedelta(hours=3), "v3": now - timedelta(hours=1)}
    with Session(engine) as session, session.begin():
        for age, name in enumerate(["v4", "v3", "v2", "v1"]):  # v4 newest, never activated
            session.add(
                ModelVersion(
                    version=name,
                    created_at=now - timedelta(hours=age),
                    config={},
                    metrics={},
                    data_size={},
                    data_fingerprint="test",
                    artifact_path="unused",
                    artifact_bytes=4,
                    is_active=name == "v3",
                    activated_at=served.get(name),
                )
            )
        session.flush()
        for name in ("v4", "v3", "v2", "v1"):
            session.add(
                ModelArtifactChunk(version=name, chunk_index=0, data=b"abcd", sha256="x", size=4)
            )
            store.write(name, [b"abcd"], hashlib.sha256(b"abcd").hexdigest())
    with Session(engine) as session, session.begin():
        assert sorted(registry.prune_versions(session, store, keep=1)) == ["v2", "v4"]
    with Session(engine) as session:
        assert sorted(session.scalars(select(ModelVersion.version))) == ["v1", "v3"]
        assert sorted(session.scalars(select(ModelArtifactChunk.version))) == ["v1", "v3"]
    assert sorted(p.name for p in store.root.iterdir()) == ["v1", "v3"]


def _answer(client: TestClient, user_id: int) -> dict[str, Any]:
    """A user's recommendations without their recommendation_id (new with every answer)."""
    body = client.get(f"/users/{user_id}/recommendations").json()
    del body["recommendation_id"]
    return body
