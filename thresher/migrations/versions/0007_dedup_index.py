"""A near-duplicate index kept in the store: the LSH band keys of each publication's MinHash signature, so publishing
looks a batch's candidates up by SQL instead of rebuilding an index from every publication on every run; and the
indexes each run's other reads need (content hash, the day's publications, what is not pushed) in place of the one
on state alone. Publications that already have a signature are put in the band index here, once.

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

from thresher.curate import band_keys

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

DEDUP_STATES = ("accepted", "published")  # as thresher.store.DEDUP_STATES when this was written


def upgrade() -> None:
    op.create_table(
        "dedup_bands",
        sa.Column("band_hash", sa.BigInteger(), nullable=False, autoincrement=False),
        sa.Column(
            "conversation_id",
            sa.String(26),
            sa.ForeignKey("publications.conversation_id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("band_hash", "conversation_id"),
        sqlite_with_rowid=False,  # the primary key is the table: one b-tree, not two
    )
    op.create_index("ix_dedup_bands_conversation", "dedup_bands", ["conversation_id"])
    op.drop_index("ix_publications_state", "publications")
    op.create_index("ix_publications_dedup_hash", "publications", ["dedup_hash", "state", "conversation_id"])
    op.create_index("ix_publications_recent", "publications", ["state", "created_at"])
    op.create_index("ix_publications_unpushed", "publications", ["state", "pushed", "created_at"])

    conn = op.get_bind()
    pubs = sa.table("publications", sa.column("conversation_id", sa.String), sa.column("state", sa.String),
                    sa.column("minhash", sa.LargeBinary))
    bands = sa.table("dedup_bands", sa.column("band_hash", sa.BigInteger), sa.column("conversation_id", sa.String))
    after = ""
    while True:  # a page at a time, so a million publications never sit in memory at once
        page = conn.execute(sa.select(pubs.c.conversation_id, pubs.c.minhash)
                            .where(pubs.c.state.in_(DEDUP_STATES), pubs.c.minhash.is_not(None),
                                   pubs.c.conversation_id > after)
                            .order_by(pubs.c.conversation_id).limit(5000)).all()
        if not page:
            break
        rows = [{"band_hash": k, "conversation_id": cid} for cid, sig in page for k in set(band_keys(sig))]
        if rows:
            conn.execute(sa.insert(bands), rows)
        after = page[-1][0]


def downgrade() -> None:
    op.drop_index("ix_publications_unpushed", "publications")
    op.drop_index("ix_publications_recent", "publications")
    op.drop_index("ix_publications_dedup_hash", "publications")
    op.create_index("ix_publications_state", "publications", ["state"])
    op.drop_index("ix_dedup_bands_conversation", "dedup_bands")
    op.drop_table("dedup_bands")
