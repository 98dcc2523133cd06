"""model artifacts stored in the database

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27 04:01:55.935026
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0003'
down_revision: str | None = '0002'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('model_versions', schema=None) as batch_op:
        batch_op.add_column(sa.Column('artifact', sa.LargeBinary(), nullable=True))
        batch_op.add_column(sa.Column('artifact_sha256', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('artifact_bytes', sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('model_versions', schema=None) as batch_op:
        batch_op.drop_column('artifact_bytes')
        batch_op.drop_column('artifact_sha256')
        batch_op.drop_column('artifact')
