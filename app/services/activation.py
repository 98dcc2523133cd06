"""Activation (and rollback): the registry switch, then this process's preload."""

from __future__ import annotations

from sqlalchemy.orm import Session, sessionmaker

from app.db import transaction
from app.models import ModelVersion
from app.services import registry
from app.serving.recommender import Recommender


def activate_and_preload(
    sessions: sessionmaker[Session], recommender: Recommender, version: str
) -> ModelVersion:
    """Load `version` here while the old one still answers, then commit the activation:
    this process's next requests find it loaded (others load on demand or at their poll)."""
    with sessions() as session:
        registry.get_version(session, version)  # 404 before any load
    recommender.models.preload(version)
    with transaction(sessions) as session:
        row = registry.activate(session, version)
    recommender.refresh_model()
    return row
