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
    """Load `version` here, then make it the active one, committed, and serve it.

    The load comes first, while this process still answers with the old version: once the
    commit lands its requests (which read the active version with their ratings: read your
    writes) find the new one loaded, so a large model swaps in without a stall. The other
    processes load it on demand or at their next poll.
    """
    with sessions() as session:
        registry.get_version(session, version)  # 404 before any load
    recommender.models.preload(version)
    with transaction(sessions) as session:
        row = registry.activate(session, version)
    recommender.refresh_model()
    return row
