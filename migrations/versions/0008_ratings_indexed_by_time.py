"""ratings indexed by time, for trending movies

GET /movies/trending aggregates the ratings of the last days: an index on the rating time
(with the movie and the stars, so the scan needs no table rows) keeps that read the size
of the window, not of the table.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07 12:20:00.000000
"""

from collections.abc import Sequence

from alembic import op

revision: str = '0008'
down_revision: str | None = '0007'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        'ix_ratings_timestamp', 'ratings', ['timestamp', 'movie_id', 'rating'], unique=False
    )


def downgrade() -> None:
    op.drop_index('ix_ratings_timestamp', table_name='ratings')
