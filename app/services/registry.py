"""Model registry: which versions exist, which one serves, and rollback."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.models import ModelVersion, utcnow
from app.services.errors import NotFoundError


def register_version(
    session: Session,
    *,
    version: str,
    config: dict[str, Any],
    metrics: dict[str, Any],
    data_size: dict[str, Any],
    data_fingerprint: str,
    artifact_path: Path,
) -> ModelVersion:
    payload = Path(artifact_path).read_bytes()
    row = ModelVersion(
        version=version,
        config=config,
        metrics=metrics,
        data_size=data_size,
        data_fingerprint=data_fingerprint,
        artifact_path=str(artifact_path),
        artifact=payload,
        artifact_sha256=hashlib.sha256(payload).hexdigest(),
        artifact_bytes=len(payload),
        is_active=False,
    )
    session.add(row)
    session.flush()
    return row


def active_version(session: Session) -> ModelVersion | None:
    return session.scalar(select(ModelVersion).where(ModelVersion.is_active.is_(True)))


def active_version_id(session: Session) -> str | None:
    return session.scalar(select(ModelVersion.version).where(ModelVersion.is_active.is_(True)))


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
    cached = Path(model_dir) / row.version / registered.name
    for candidate in (registered, cached):
        if _sha256_of(candidate) == row.artifact_sha256:
            return candidate
    payload = session.scalar(
        select(ModelVersion.artifact).where(ModelVersion.version == row.version)
    )
    if payload is None or hashlib.sha256(payload).hexdigest() != row.artifact_sha256:
        return registered  # nothing trustworthy to fetch: loading will say what is wrong
    cached.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=cached.parent, prefix=f".{row.version}.", suffix=".tmp")
    with os.fdopen(fd, "wb") as handle:
        handle.write(payload)
    os.replace(tmp, cached)
    return cached


def list_versions(session: Session) -> list[ModelVersion]:
    return list(
        session.scalars(
            select(ModelVersion).order_by(ModelVersion.created_at.desc(), ModelVersion.version)
        )
    )


def prune_versions(session: Session, keep: int) -> list[str]:
    """Drop the oldest inactive versions beyond `keep` (rows and artifact folders)."""
    rows = list_versions(session)
    inactive = [r for r in rows if not r.is_active]
    doomed = inactive[max(0, keep - 1) :] if any(r.is_active for r in rows) else inactive[keep:]
    for row in doomed:
        artifact = Path(row.artifact_path)
        folder = artifact.parent if artifact.parent.name == row.version else None
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
        else:
            artifact.unlink(missing_ok=True)
        session.delete(row)
    return [r.version for r in doomed]


def describe(row: ModelVersion) -> dict[str, Any]:
    def iso(value: datetime | None) -> str | None:
        return value.isoformat() if value else None

    return {
        "version": row.version,
        "created_at": iso(row.created_at),
        "activated_at": iso(row.activated_at),
        "active": row.is_active,
        "metrics": row.metrics,
        "config": row.config,
        "data_size": row.data_size,
        "data_fingerprint": row.data_fingerprint,
        "artifact_path": row.artifact_path,
    }
