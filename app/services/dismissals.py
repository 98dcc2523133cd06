"""Dismissal use cases: one user's "not interested" list. Not ratings: the model never sees
them; the recommender only leaves these movies out for that user."""

from __future__ import annotations

from sqlalchemy import delete, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session
from sqlalchemy.sql.dml import ReturningInsert

from app.db import updated
from app.models import Dismissal, Movie, utcnow
from app.schemas import DismissalItem, DismissalOut, UserDismissalsOut
from app.services.errors import NotFoundError


def _insert_if_absent(session: Session, user_id: int, movie_id: int) -> ReturningInsert:
    """INSERT ... ON CONFLICT DO NOTHING RETURNING: of two concurrent identical requests one
    inserts, the other waits for it on the primary key and returns nothing (no
    IntegrityError, so no 409 or 500)."""
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    return (
        dialect.insert(Dismissal)
        .values(user_id=user_id, movie_id=movie_id, dismissed_at=utcnow())
        .on_conflict_do_nothing(index_elements=[Dismissal.user_id, Dismissal.movie_id])
        .returning(Dismissal.dismissed_at)
    )


def dismiss(session: Session, user_id: int, movie_id: int) -> tuple[DismissalOut, bool]:
    """Returns the dismissal and whether it is new (201); a repeat keeps the first time."""
    title = session.scalar(select(Movie.title).where(Movie.id == movie_id))
    if title is None:
        raise NotFoundError(f"movie {movie_id} does not exist")
    dismissed_at = session.scalar(_insert_if_absent(session, user_id, movie_id))
    created = dismissed_at is not None
    if dismissed_at is None:
        dismissed_at = session.execute(
            select(Dismissal.dismissed_at).where(
                Dismissal.user_id == user_id, Dismissal.movie_id == movie_id
            )
        ).scalar_one()
    stored = DismissalOut(
        user_id=user_id, movie_id=movie_id, title=title, dismissed_at=dismissed_at
    )
    return stored, created


def list_dismissals(session: Session, user_id: int) -> UserDismissalsOut:
    rows = session.execute(
        select(Dismissal.movie_id, Movie.title, Dismissal.dismissed_at)
        .join(Movie, Movie.id == Dismissal.movie_id)
        .where(Dismissal.user_id == user_id)
        .order_by(Dismissal.dismissed_at.desc(), Dismissal.movie_id)
    )
    items = [DismissalItem(movie_id=m, title=t, dismissed_at=at) for m, t, at in rows]
    return UserDismissalsOut(user_id=user_id, items=items)


def undismiss(session: Session, user_id: int, movie_id: int) -> None:
    removed = updated(
        session,
        delete(Dismissal).where(Dismissal.user_id == user_id, Dismissal.movie_id == movie_id),
    )
    if removed == 0:
        raise NotFoundError(f"user {user_id} has not dismissed movie {movie_id}")
