"""Model registry: which versions exist, which one serves, and rollback."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from app.ml.artifacts import ArtifactMeta, ArtifactStore, SavedArtifact
from app.models import ModelVersion, utcnow
from app.services.errors import NotFoundError


def register_version(
    session: Session, meta: ArtifactMeta, config: dict[str, Any], saved: SavedArtifact
) -> ModelVersion:
    """An inactive row holding the artifact's bytes as they were written (no re-read)."""
    row = ModelVersion(
        version=meta.version,
        config=config,
        metrics=meta.metrics,
        data_size=meta.data_size,
        data_fingerprint=meta.data_fingerprint,
        artifact_path=str(saved.path),
        artifact=saved.payload,
        artifact_sha256=hashlib.sha256(saved.payload).hexdigest(),
        artifact_bytes=len(saved.payload),
        is_active=False,
    )
    session.add(row)
    session.flush()
    return row


def active_version(session: Session) -> ModelVersion | None:
    return session.scalar(select(ModelVersion).where(ModelVersion.is_active.is_(True)))


def active_version_id(session: Session) -> str | None:
    return session.scalar(select(ModelVersion.version).where(ModelVersion.is_active.is_(True)))


def upcoming_version_id(session: Session) -> str | None:
    """The newest version registered after the active one (any, with none active): what an
    activation will most likely switch to next, so serving processes preload it."""
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


def _sha256_of(path: Path) -> str | None:
    try:
        with path.open("rb") as handle:
            return hashlib.file_digest(handle, "sha256").hexdigest()
    except OSError:
        return None


def local_artifact(session: Session, row: ModelVersion, model_dir: Path) -> Path:
    """A verified local copy of the version's artifact, fetched from the database if needed.

    The registered path serves when it exists and matches the stored checksum (one host,
    or a shared volume); otherwise the bytes come from the database into MODEL_DIR, so a
    replica on another host, or a local file that was damaged, heals itself.
    """
    registered = Path(row.artifact_path)
    if row.artifact_sha256 is None:
        return registered  # registered before artifacts were stored: trust the file
    store = ArtifactStore(model_dir)
    cached = store.path(row.version)
    for candidate in (registered, cached):
        if _sha256_of(candidate) == row.artifact_sha256:
            return candidate
    payload = session.scalar(
        select(ModelVersion.artifact).where(ModelVersion.version == row.version)
    )
    if payload is None or hashlib.sha256(payload).hexdigest() != row.artifact_sha256:
        return registered  # nothing trustworthy to fetch: loading will say what is wrong
    return store.write(row.version, payload)


def list_versions(session: Session) -> list[ModelVersion]:
    return list(
        session.scalars(
            select(ModelVersion).order_by(ModelVersion.created_at.desc(), ModelVersion.version)
        )
    )


def prune_versions(session: Session, store: ArtifactStore, keep: int) -> list[str]:
    """Drop the oldest inactive versions beyond `keep` (rows and their artifact folders)."""
    rows = list_versions(session)
    inactive = [r for r in rows if not r.is_active]
    doomed = inactive[max(0, keep - 1) :] if any(r.is_active for r in rows) else inactive[keep:]
    for row in doomed:
        store.prune(row.version)
        session.delete(row)
    return [r.version for r in doomed]
