"""impressions (what was shown) and experiments

Every recommendation answer is recorded as an impression with its movies in order
(impression_items, indexed by user, movie and time so that a rating finds the latest
impression that showed it); experiments serve a candidate version to a share of the users,
one running at a time (a partial unique index, like the one open training job).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07 15:20:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0010'
down_revision: str | None = '0009'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

RUNNING = "status = 'running'"


def upgrade() -> None:
    op.create_table(
        'impressions',
        sa.Column('id', sa.String(length=32), nullable=False),
        sa.Column('user_id', sa.BigInteger(), nullable=True),
        sa.Column('model_version', sa.String(length=64), nullable=True),
        sa.Column('strategy', sa.String(length=16), nullable=False),
        sa.Column('experiment_id', sa.String(length=36), nullable=True),
        sa.Column('arm', sa.String(length=16), nullable=True),
        sa.Column('shown_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_impressions')),
    )
    op.create_index(
        'ix_impressions_version_shown', 'impressions', ['model_version', 'shown_at']
    )
    op.create_index('ix_impressions_experiment', 'impressions', ['experiment_id', 'arm'])
    op.create_index('ix_impressions_shown_at', 'impressions', ['shown_at'])
    op.create_table(
        'impression_items',
        sa.Column('impression_id', sa.String(length=32), nullable=False),
        sa.Column('position', sa.Integer(), autoincrement=False, nullable=False),
        sa.Column('user_id', sa.BigInteger(), nullable=True),
        sa.Column('movie_id', sa.BigInteger(), nullable=False),
        sa.Column('shown_at', sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ['impression_id'],
            ['impressions.id'],
            name=op.f('fk_impression_items_impression_id_impressions'),
            ondelete='CASCADE',
        ),
        sa.PrimaryKeyConstraint('impression_id', 'position', name=op.f('pk_impression_items')),
    )
    op.create_index(
        'ix_impression_items_user_movie_shown',
        'impression_items',
        ['user_id', 'movie_id', 'shown_at'],
    )
    op.create_table(
        'experiments',
        sa.Column('id', sa.String(length=36), nullable=False),
        sa.Column('control', sa.String(length=64), nullable=False),
        sa.Column('candidate', sa.String(length=64), nullable=False),
        sa.Column('share', sa.Float(), nullable=False),
        sa.Column('status', sa.String(length=16), nullable=False),
        sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('stopped_at', sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "status IN ('running', 'stopped', 'promoted')",
            name=op.f('ck_experiments_known_status'),
        ),
        sa.CheckConstraint(
            'share > 0 AND share < 1', name=op.f('ck_experiments_share_between_0_and_1')
        ),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_experiments')),
    )
    op.create_index(
        'uq_experiments_single_running',
        'experiments',
        ['status'],
        unique=True,
        sqlite_where=sa.text(RUNNING),
        postgresql_where=sa.text(RUNNING),
    )
    op.create_index('ix_experiments_started_at', 'experiments', ['started_at'])


def downgrade() -> None:
    op.drop_index('ix_experiments_started_at', table_name='experiments')
    op.drop_index(
        'uq_experiments_single_running',
        table_name='experiments',
        sqlite_where=sa.text(RUNNING),
        postgresql_where=sa.text(RUNNING),
    )
    op.drop_table('experiments')
    op.drop_index('ix_impression_items_user_movie_shown', table_name='impression_items')
    op.drop_table('impression_items')
    op.drop_index('ix_impressions_shown_at', table_name='impressions')
    op.drop_index('ix_impressions_experiment', table_name='impressions')
    op.drop_index('ix_impressions_version_shown', table_name='impressions')
    op.drop_table('impressions')
