"""An index for finding the open conversation a stateless API request continues: by the hash of its messages so far
and its owner (the API key's or, without keys, the client's), so each request costs one index look-up instead of a
scan of every conversation.

Revision ID: 0009
Revises: 0008
"""

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_conversations_continuation", "conversations", ["tail_hash", "owner_hash"])


def downgrade() -> None:
    op.drop_index("ix_conversations_continuation", table_name="conversations")
