"""movies, genres and ratings

Revision ID: 0001
Revises: 
Create Date: 2026-11-27 03:42:24.255636
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0001'
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('movies',
    sa.Column('id', sa.BigInteger(), autoincrement=False, nullable=False),
    sa.Column('title', sa.String(length=500), nullable=False),
    sa.Column('year', sa.Integer(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_movies'))
    )
    op.create_table('movie_genres',
    sa.Column('movie_id', sa.BigInteger(), nullable=False),
    sa.Column('genre', sa.String(length=64), nullable=False),
    sa.ForeignKeyConstraint(['movie_id'], ['movies.id'], name=op.f('fk_movie_genres_movie_id_movies'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('movie_id', 'genre', name=op.f('pk_movie_genres'))
    )
    with op.batch_alter_table('movie_genres', schema=None) as batch_op:
        batch_op.create_index('ix_movie_genres_genre', ['genre', 'movie_id'], unique=False)

    op.create_table('ratings',
    sa.Column('user_id', sa.BigInteger(), autoincrement=False, nullable=False),
    sa.Column('movie_id', sa.BigInteger(), nullable=False),
    sa.Column('rating', sa.Float(), nullable=False),
    sa.Column('timestamp', sa.BigInteger(), nullable=False),
    sa.CheckConstraint('rating IN (0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0)', name=op.f('ck_ratings_rating_half_stars')),
    sa.ForeignKeyConstraint(['movie_id'], ['movies.id'], name=op.f('fk_ratings_movie_id_movies'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('user_id', 'movie_id', name=op.f('pk_ratings'))
    )
    with op.batch_alter_table('ratings', schema=None) as batch_op:
        batch_op.create_index('ix_ratings_movie_id', ['movie_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('ratings', schema=None) as batch_op:
        batch_op.drop_index('ix_ratings_movie_id')

    op.drop_table('ratings')
    with op.batch_alter_table('movie_genres', schema=None) as batch_op:
        batch_op.drop_index('ix_movie_genres_genre')

    op.drop_table('movie_genres')
    op.drop_table('movies')
