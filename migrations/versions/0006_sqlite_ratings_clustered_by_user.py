"""SQLite: ratings stored in key order (WITHOUT ROWID)

Every request reads one user's ratings by the key's user prefix. With a rowid table the
key was a separate index, and each rating's value a lookup in the table: ~100 random
B-tree searches per user, 60 % of the read. Clustered by (user_id, movie_id), a user's
ratings are one contiguous range, and the table is one B-tree instead of two (half the
file). PostgreSQL is left as it is: its heap has no such option, and the read stays one
index scan on the key.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30 13:50:00.000000
"""

from collections.abc import Sequence

from alembic import op

revision: str = '0006'
down_revision: str | None = '0005'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _recreate_ratings(with_rowid: bool) -> None:
    """Copy `ratings` into a table of the same columns and constraints (batch mode keeps
    the names), with or without a rowid; its index comes back with it."""
    if op.get_bind().dialect.name != 'sqlite':
        return
    with op.batch_alter_table(
        'ratings', recreate='always', table_kwargs={'sqlite_with_rowid': with_rowid}
    ):
        pass


def upgrade() -> None:
    _recreate_ratings(with_rowid=False)


def downgrade() -> None:
    _recreate_ratings(with_rowid=True)
