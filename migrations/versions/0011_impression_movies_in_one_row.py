"""an impression's movies in its own row

An answer becomes one row (its movies as a comma-separated list, its time also in unix
milliseconds) instead of a row per movie in impression_items: writing ten rows per answer
into a (user, movie) index took most of the impression writer's time. Attribution finds a
user's impressions by (user_id, shown_ms). The recorded impressions are carried over both
ways.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-08 00:30:00.000000
"""

from collections import defaultdict
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision: str = '0011'
down_revision: str | None = '0010'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CHUNK = 5000

impressions = sa.table(
    'impressions',
    sa.column('id', sa.String),
    sa.column('user_id', sa.BigInteger),
    sa.column('shown_at', sa.DateTime(timezone=True)),
    sa.column('shown_ms', sa.BigInteger),
    sa.column('movie_ids', sa.Text),
)
items = sa.table(
    'impression_items',
    sa.column('impression_id', sa.String),
    sa.column('position', sa.Integer),
    sa.column('user_id', sa.BigInteger),
    sa.column('movie_id', sa.BigInteger),
    sa.column('shown_at', sa.BigInteger),
)


def _chunks(conn: sa.Connection, *columns: sa.ColumnElement) -> Iterator[Sequence[sa.Row]]:
    """The impressions in id order, CHUNK rows at a time (keyset pages: no open cursor
    while the caller writes)."""
    last = ''
    while True:
        rows = conn.execute(
            sa.select(impressions.c.id, *columns)
            .where(impressions.c.id > last)
            .order_by(impressions.c.id)
            .limit(CHUNK)
        ).all()
        if not rows:
            return
        yield rows
        last = rows[-1].id


def _unix_ms(moment: datetime) -> int:
    if moment.tzinfo is None:  # SQLite gives back the stored UTC time without its zone
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def _make_items_table() -> None:
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


def upgrade() -> None:
    op.add_column('impressions', sa.Column('shown_ms', sa.BigInteger(), nullable=True))
    op.add_column('impressions', sa.Column('movie_ids', sa.Text(), nullable=True))
    conn = op.get_bind()
    update = (
        impressions.update()
        .where(impressions.c.id == sa.bindparam('rid'))
        .values(shown_ms=sa.bindparam('ms'), movie_ids=sa.bindparam('movies'))
    )
    for rows in _chunks(conn, impressions.c.shown_at):
        shown: defaultdict[str, list[str]] = defaultdict(list)
        for rid, movie in conn.execute(
            sa.select(items.c.impression_id, items.c.movie_id)
            .where(items.c.impression_id.in_([row.id for row in rows]))
            .order_by(items.c.impression_id, items.c.position)
        ):
            shown[rid].append(str(movie))
        conn.execute(
            update,
            [
                {'rid': r.id, 'ms': _unix_ms(r.shown_at), 'movies': ','.join(shown[r.id])}
                for r in rows
            ],
        )
    op.drop_index('ix_impression_items_user_movie_shown', table_name='impression_items')
    op.drop_table('impression_items')
    # SQLite rebuilds the table for NOT NULL: after impression_items went, whose cascading
    # foreign key would empty it as the old table is dropped
    with op.batch_alter_table('impressions') as batch:
        batch.alter_column('shown_ms', existing_type=sa.BigInteger(), nullable=False)
        batch.alter_column('movie_ids', existing_type=sa.Text(), nullable=False)
    op.create_index('ix_impressions_user_shown', 'impressions', ['user_id', 'shown_ms'])


def downgrade() -> None:
    _make_items_table()
    conn = op.get_bind()
    columns = (impressions.c.user_id, impressions.c.shown_ms, impressions.c.movie_ids)
    for rows in _chunks(conn, *columns):
        shown = [
            {
                'impression_id': r.id,
                'position': position,
                'user_id': r.user_id,
                'movie_id': int(movie),
                'shown_at': r.shown_ms,
            }
            for r in rows
            for position, movie in enumerate(r.movie_ids.split(',') if r.movie_ids else [])
        ]
        if shown:
            conn.execute(items.insert(), shown)
    op.drop_index('ix_impressions_user_shown', table_name='impressions')
    # ALTER TABLE DROP COLUMN (SQLite 3.35+), not a rebuild that would cascade into the items
    op.drop_column('impressions', 'movie_ids')
    op.drop_column('impressions', 'shown_ms')
