"""A conversation's own title (the owner renamed it) and its reply settings (temperature, reply length), which the
chat page lets its owner choose per conversation; and the threshold each curation decision was made at, so figures
and the owner's page say what a conversation was really measured against.

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("conversations") as batch:
        batch.add_column(sa.Column("title", sa.String(200), nullable=True))
        batch.add_column(sa.Column("reply_settings", sa.JSON(), nullable=True))
    with op.batch_alter_table("publications") as batch:
        batch.add_column(sa.Column("threshold", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("publications") as batch:
        batch.drop_column("threshold")
    with op.batch_alter_table("conversations") as batch:
        batch.drop_column("reply_settings")
        batch.drop_column("title")
