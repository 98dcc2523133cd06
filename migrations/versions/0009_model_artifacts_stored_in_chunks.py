"""model artifacts stored in checksummed chunks

PostgreSQL refuses a bytea value over 1 GB (a 25M-rating artifact was 681 MB), and reading
or writing one value held the whole artifact in memory. The artifact moves into
model_artifact_chunks, a piece of at most CHUNK_BYTES each with its own SHA-256; the old
column goes. Existing artifacts are copied a chunk at a time (substr on the column), so the
migration too holds one chunk in memory. The downgrade joins the chunks back into the
column (an artifact over 1 GB cannot go back to PostgreSQL's bytea).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07 12:30:00.000000
"""

import hashlib
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0009'
down_revision: str | None = '0008'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CHUNK_BYTES = 64 * 2**20  # the ARTIFACT_CHUNK_BYTES default

versions = sa.table(
    'model_versions',
    sa.column('version', sa.String),
    sa.column('artifact', sa.LargeBinary),
    sa.column('artifact_bytes', sa.BigInteger),
)
chunks = sa.table(
    'model_artifact_chunks',
    sa.column('version', sa.String),
    sa.column('chunk_index', sa.Integer),
    sa.column('data', sa.LargeBinary),
    sa.column('sha256', sa.String),
    sa.column('size', sa.BigInteger),
)


def _chunk_columns() -> list[sa.Column]:
    return [
        sa.Column('version', sa.String(length=64), nullable=False),
        sa.Column('chunk_index', sa.Integer(), autoincrement=False, nullable=False),
        sa.Column('data', sa.LargeBinary(), nullable=False),
        sa.Column('sha256', sa.String(length=64), nullable=False),
        sa.Column('size', sa.BigInteger(), nullable=False),
    ]


def upgrade() -> None:
    # The chunks are staged in a table without the foreign key first: SQLite drops a column
    # by rebuilding model_versions, and dropping the old table would cascade to them.
    op.create_table('model_artifact_chunks_staging', *_chunk_columns())
    staging = sa.table('model_artifact_chunks_staging', *(sa.column(c.name) for c in chunks.c))
    bind = op.get_bind()
    stored = bind.execute(
        sa.select(versions.c.version, sa.func.length(versions.c.artifact)).where(
            versions.c.artifact.is_not(None)
        )
    ).all()
    for version, size in stored:
        for index, start in enumerate(range(0, int(size), CHUNK_BYTES)):
            piece = sa.func.substr(versions.c.artifact, start + 1, CHUNK_BYTES)
            data = bytes(
                bind.scalar(sa.select(piece).where(versions.c.version == version)) or b''
            )
            bind.execute(
                staging.insert().values(
                    version=version, chunk_index=index, data=data,
                    sha256=hashlib.sha256(data).hexdigest(), size=len(data),
                )
            )
    with op.batch_alter_table('model_versions', schema=None) as batch_op:
        batch_op.drop_column('artifact')
    op.create_table(
        'model_artifact_chunks',
        *_chunk_columns(),
        sa.ForeignKeyConstraint(
            ['version'], ['model_versions.version'],
            name=op.f('fk_model_artifact_chunks_version_model_versions'), ondelete='CASCADE',
        ),
        sa.PrimaryKeyConstraint('version', 'chunk_index', name=op.f('pk_model_artifact_chunks')),
    )
    bind.execute(chunks.insert().from_select(list(chunks.c.keys()), sa.select(staging)))
    op.drop_table('model_artifact_chunks_staging')


def downgrade() -> None:
    with op.batch_alter_table('model_versions', schema=None) as batch_op:
        batch_op.add_column(sa.Column('artifact', sa.LargeBinary(), nullable=True))
    bind = op.get_bind()
    stored = bind.execute(sa.select(chunks.c.version).distinct()).scalars().all()
    for version in stored:
        pieces = bind.execute(
            sa.select(chunks.c.data)
            .where(chunks.c.version == version)
            .order_by(chunks.c.chunk_index)
        ).scalars()
        joined = b''.join(bytes(p) for p in pieces)
        bind.execute(
            versions.update().where(versions.c.version == version).values(artifact=joined)
        )
    op.drop_table('model_artifact_chunks')
