"""hidden movies, dismissals and the job trigger

A hidden movie keeps its ratings but is never recommended (a partial index: the read is
the size of the hidden set); a dismissal is one user's "not interested", keyed like a
rating; a job records whether an admin or the retraining schedule asked for it.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29 15:10:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0005'
down_revision: str | None = '0004'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('movies', schema=None) as batch_op:
        batch_op.add_column(
            sa.Column('hidden', sa.Boolean(), server_default=sa.text('false'), nullable=False)
        )
    op.create_index(
        'ix_movies_hidden',
        'movies',
        ['id'],
        unique=False,
        sqlite_where=sa.text('hidden = 1'),
        postgresql_where=sa.text('hidden'),
    )
    op.create_table(
        'dismissals',
        sa.Column('user_id', sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column('movie_id', sa.BigInteger(), nullable=False),
        sa.Column('dismissed_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ['movie_id'],
            ['movies.id'],
            name=op.f('fk_dismissals_movie_id_movies'),
            ondelete='CASCADE',
        ),
        sa.PrimaryKeyConstraint('user_id', 'movie_id', name=op.f('pk_dismissals')),
    )
    with op.batch_alter_table('training_jobs', schema=None) as batch_op:
        batch_op.add_column(
            sa.Column('trigger', sa.String(length=16), server_default="admin", nullable=False)
        )
        batch_op.create_check_constraint(
            op.f('ck_training_jobs_known_trigger'), "\"trigger\" IN ('admin', 'schedule')"
        )


def downgrade() -> None:
    with op.batch_alter_table('training_jobs', schema=None) as batch_op:
        batch_op.drop_constraint(op.f('ck_training_jobs_known_trigger'), type_='check')
        batch_op.drop_column('trigger')
    op.drop_table('dismissals')
    op.drop_index(
        'ix_movies_hidden',
        table_name='movies',
        sqlite_where=sa.text('hidden = 1'),
        postgresql_where=sa.text('hidden'),
    )
    with op.batch_alter_table('movies', schema=None) as batch_op:
        batch_op.drop_column('hidden')
