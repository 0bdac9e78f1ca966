"""Dedup keys kept with each publication, so publishing never re-reads and re-hashes the whole dataset.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("publications") as batch:
        batch.add_column(sa.Column("dedup_hash", sa.String(64), nullable=True))
        batch.add_column(sa.Column("minhash", sa.LargeBinary(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("publications") as batch:
        batch.drop_column("minhash")
        batch.drop_column("dedup_hash")
