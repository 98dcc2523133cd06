"""Model registry: which versions exist, which one serves, and rollback.

The database holds the one stored copy of each artifact, in checksummed chunks
(`ModelArtifactChunk`); MODEL_DIR is each host's cache of them (`local_artifact`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import delete, insert, or_, select, update
from sqlalchemy.orm import Session

from app.ml.artifacts import ArtifactError, ArtifactMeta, ArtifactStore, SavedArtifact, sha256_of
from app.models import Experiment, ModelArtifactChunk, ModelVersion, utcnow
from app.services.errors import NotFoundError


def register_version(
    session: Session,
    meta: ArtifactMeta,
    config: dict[str, Any],
    saved: SavedArtifact,
    chunk_bytes: int,
) -> ModelVersion:
    """An inactive row and the artifact's file streamed into chunks of ``chunk_bytes``;
    refused if the file no longer hashes as written."""
    row = ModelVersion(
        version=meta.version,
        config=config,
        metrics=meta.metrics,
        data_size=meta.data_size,
        data_fingerprint=meta.data_fingerprint,
        artifact_path=str(saved.path),
        artifact_sha256=saved.sha256,
        artifact_bytes=saved.size,
        is_active=False,
    )
    session.add(row)
    session.flush()
    digest, size = hashlib.sha256(), 0
    with saved.path.open("rb") as handle:
        for index, chunk in enumerate(iter(lambda: handle.read(chunk_bytes), b"")):
            digest.update(chunk)
            size += len(chunk)
            session.execute(
                insert(ModelArtifactChunk).values(
                    version=meta.version,
                    chunk_index=index,
                    data=chunk,
                    sha256=hashlib.sha256(chunk).hexdigest(),
                    size=len(chunk),
                )
            )
    if digest.hexdigest() != saved.sha256 or size != saved.size:
        raise ArtifactError(f"{saved.path} changed between its writing and its registration")
    return row


def artifact_chunks(session: Session, version: str) -> Iterator[bytes]:
    """The version's artifact, a verified chunk per query (a server-side cursor would hold a
    transaction open); ArtifactError names a missing or damaged chunk."""
    listing = session.execute(
        select(ModelArtifactChunk.chunk_index, ModelArtifactChunk.sha256)
        .where(ModelArtifactChunk.version == version)
        .order_by(ModelArtifactChunk.chunk_index)
    ).all()
    if not listing:
        raise ArtifactError(f"the registry holds no artifact for model version {version!r}")
    for expected_index, (index, sha256) in enumerate(listing):
        if index != expected_index:
            raise ArtifactError(f"chunk {expected_index} of model version {version!r} is missing")
        data = session.scalar(
            select(ModelArtifactChunk.data).where(
                ModelArtifactChunk.version == version, ModelArtifactChunk.chunk_index == index
            )
        )
        if data is None or hashlib.sha256(data).hexdigest() != sha256:
            raise ArtifactError(
                f"chunk {index} of model version {version!r} fails its checksum: refused"
            )
        yield bytes(data)


def active_version(session: Session) -> ModelVersion | None:
    return session.scalar(select(ModelVersion).where(ModelVersion.is_active.is_(True)))


def active_version_id(session: Session) -> str | None:
    return session.scalar(select(ModelVersion.version).where(ModelVersion.is_active.is_(True)))


def upcoming_version_id(session: Session) -> str | None:
    """The newest version registered after the active one (any, with none active): the
    likely next activation, which serving preloads."""
    active_since = (
        select(ModelVersion.created_at).where(ModelVersion.is_active.is_(True)).scalar_subquery()
    )
    newer = or_(active_since.is_(None), ModelVersion.created_at > active_since)
    return session.scalar(
        select(ModelVersion.version)
        .where(ModelVersion.is_active.is_(False), newer)
        .order_by(ModelVersion.created_at.desc(), ModelVersion.version.desc())
        .limit(1)
    )


def experiment_candidate_id(session: Session) -> str | None:
    return session.scalar(select(Experiment.candidate).where(Experiment.status == "running"))


def get_version(session: Session, version: str) -> ModelVersion:
    row = session.get(ModelVersion, version)
    if row is None:
        raise NotFoundError(f"model version {version!r} does not exist")
    return row


def activate(session: Session, version: str) -> ModelVersion:
    """Deactivate the current row first: the partial unique index forbids two active rows."""
    row = get_version(session, version)
    if row.artifact_sha256 is None and not Path(row.artifact_path).is_file():
        raise NotFoundError(f"the artifact of model version {version!r} is gone")
    session.execute(
        update(ModelVersion).where(ModelVersion.is_active.is_(True)).values(is_active=False)
    )
    session.execute(
        update(ModelVersion)
        .where(ModelVersion.version == version)
        .values(is_active=True, activated_at=utcnow())
    )
    session.refresh(row)
    return row


def local_artifact(session: Session, row: ModelVersion, model_dir: Path) -> Path:
    """This host's cached copy of the artifact when its checksum holds, else fetched again
    from the database (`ArtifactStore.write`: nothing written from a damaged copy)."""
    if row.artifact_sha256 is None:
        return Path(row.artifact_path)  # registered before artifacts were stored: trust it
    store = ArtifactStore(model_dir)
    cached = store.path(row.version)
    if sha256_of(cached) == row.artifact_sha256:
        return cached
    return store.write(row.version, artifact_chunks(session, row.version), row.artifact_sha256)


def list_versions(session: Session) -> list[ModelVersion]:
    return list(
        session.scalars(
            select(ModelVersion).order_by(ModelVersion.created_at.desc(), ModelVersion.version)
        )
    )


def rollback_target(rows: list[ModelVersion]) -> ModelVersion | None:
    """The inactive version activated last: the one that served before."""
    served = [r for r in rows if not r.is_active and r.activated_at is not None]
    return max(served, key=lambda r: r.activated_at or utcnow(), default=None)


def prune_versions(session: Session, store: ArtifactStore, keep: int) -> list[str]:
    """Drop the oldest versions beyond `keep` (rows, chunks and cached folders); the active
    version and the rollback target are kept whatever the count."""
    rows = list_versions(session)
    target = rollback_target(rows)
    protected = {r.version for r in rows if r.is_active} | ({target.version} if target else set())
    trying = session.execute(  # a running experiment's arms
        select(Experiment.control, Experiment.candidate).where(Experiment.status == "running")
    ).first()
    protected |= set(trying or ())
    room = max(0, keep - len(protected))
    others = [r for r in rows if r.version not in protected]  # newest first
    doomed = others[room:]
    for row in doomed:
        store.prune(row.version)
        session.execute(delete(ModelArtifactChunk).where(ModelArtifactChunk.version == row.version))
        session.delete(row)
    return [r.version for r in doomed]
