"""Branches and feedback: a reply can be regenerated and a user message edited, so messages form a tree (each
message names its parent; the conversation names the last message of the branch it is on), and a reader's thumbs
up or down with an optional reason is kept per reply.

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("messages") as batch:
        batch.add_column(sa.Column("parent_id", sa.Integer(), nullable=True))
        batch.drop_constraint("uq_messages_position", type_="unique")  # siblings share a position
        batch.create_index("ix_messages_conversation", ["conversation_id", "position"])
    with op.batch_alter_table("conversations") as batch:
        batch.add_column(sa.Column("head_id", sa.Integer(), nullable=True))
    # Every existing conversation is one branch: each message's parent is the one before it.
    op.execute(
        "UPDATE messages SET parent_id = (SELECT p.id FROM messages p"
        " WHERE p.conversation_id = messages.conversation_id AND p.position = messages.position - 1)"
    )
    op.execute(
        "UPDATE conversations SET head_id = (SELECT m.id FROM messages m WHERE m.conversation_id = conversations.id"
        " ORDER BY m.position DESC LIMIT 1)"
    )
    op.create_table(
        "feedback",
        sa.Column("message_id", sa.Integer(), sa.ForeignKey("messages.id", ondelete="CASCADE"), primary_key=True),
        sa.Column(
            "conversation_id", sa.String(26), sa.ForeignKey("conversations.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("rating", sa.String(8), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_feedback_conversation", "feedback", ["conversation_id"])


def downgrade() -> None:
    op.drop_table("feedback")
    with op.batch_alter_table("conversations") as batch:
        batch.drop_column("head_id")
    with op.batch_alter_table("messages") as batch:
        batch.drop_index("ix_messages_conversation")
        batch.create_unique_constraint("uq_messages_position", ["conversation_id", "position"])
        batch.drop_column("parent_id")
