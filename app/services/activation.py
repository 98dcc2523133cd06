"""Activation (and rollback): the registry switch, then this process's preload."""

from __future__ import annotations

from sqlalchemy.orm import Session, sessionmaker

from app.db import transaction
from app.models import ModelVersion
from app.services import registry
from app.services.recommender import Recommender


def activate_and_preload(
    sessions: sessionmaker[Session], recommender: Recommender, version: str
) -> ModelVersion:
    """Make `version` the active one, committed, then load it here before answering.

    The commit comes first: every process's next request reads the new active version
    with its ratings (read your writes), so the preload is only for speed; the other
    processes load on demand or at their next poll.
    """
    with transaction(sessions) as session:
        row = registry.activate(session, version)
    recommender.refresh_model()
    return row
