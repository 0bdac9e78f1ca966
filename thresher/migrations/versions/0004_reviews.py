"""Reviews and corrections: reviewers' verdicts read from the dataset repository, and edits made to published
conversation files (kept with their diff, waiting to be judged again).

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "reviews",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column(
            "conversation_id",
            sa.String(26),
            sa.ForeignKey("conversations.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("reviewer", sa.String(64), nullable=False),
        sa.Column("verdict", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("score", sa.Integer(), nullable=True),
        sa.Column("time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("commit_sha", sa.String(64), nullable=True),
        sa.UniqueConstraint("conversation_id", "reviewer", name="uq_reviews_reviewer"),
    )
    op.create_table(
        "corrections",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column(
            "conversation_id",
            sa.String(26),
            sa.ForeignKey("conversations.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("commit_sha", sa.String(64), nullable=False),
        sa.Column("author", sa.String(300), nullable=True),
        sa.Column("diff", sa.Text(), nullable=False),
        sa.Column("time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("rejudged_at", sa.DateTime(timezone=True), nullable=True),
        sa.UniqueConstraint("conversation_id", "commit_sha", name="uq_corrections_commit"),
    )
    op.create_index("ix_corrections_conversation", "corrections", ["conversation_id"])


def downgrade() -> None:
    op.drop_table("corrections")
    op.drop_table("reviews")
