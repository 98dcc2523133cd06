"""training jobs store the resolved model config

The API resolves a retrain request's preset and overrides once, when it queues the job;
the job process trains exactly that, whatever its own TRAIN_PRESET. Jobs queued before
this revision have no config and are resolved as before.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29 14:05:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0004'
down_revision: str | None = '0003'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('training_jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('config', sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('training_jobs', schema=None) as batch_op:
        batch_op.drop_column('config')
