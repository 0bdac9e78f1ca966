"""The tables (SQLAlchemy 2 declarative rows) and the conversions from rows to records.

The schema changes only through the Alembic migrations in `thresher/migrations`."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    mapped_column,
    relationship,
)

from thresher.conversation import COMPLETE, Conversation, Judgment, Message, messages_hash
from thresher.store.records import (
    Publication,
)


class Base(DeclarativeBase):
    pass


class ConversationRow(Base):
    __tablename__ = "conversations"

    id: Mapped[str] = mapped_column(sa.String(26), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), index=True)
    ended_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    end_reason: Mapped[str | None] = mapped_column(sa.String(32))
    status: Mapped[str] = mapped_column(sa.String(32), index=True)
    publish_allowed: Mapped[bool] = mapped_column(sa.Boolean())
    licence: Mapped[str] = mapped_column(sa.String(64))
    model_version: Mapped[str | None] = mapped_column(sa.String(200))
    client_hash: Mapped[str | None] = mapped_column(sa.String(64))
    owner_hash: Mapped[str | None] = mapped_column(sa.String(64), index=True)
    source: Mapped[str] = mapped_column(sa.String(16))
    # Hash of the complete messages so far: how a stateless API request that extends them is recognised.
    tail_hash: Mapped[str | None] = mapped_column(sa.String(64))
    # The last message of the branch the conversation is on (regenerating or editing starts another branch).
    head_id: Mapped[int | None] = mapped_column(sa.Integer())
    # The owner's own name for it (None: titled by its first message) and the reply settings they chose for it.
    title: Mapped[str | None] = mapped_column(sa.String(200))
    reply_settings: Mapped[dict[str, Any] | None] = mapped_column(sa.JSON())

    # Every message of every branch, oldest first; `_path` picks the current branch out of them.
    messages: Mapped[list[MessageRow]] = relationship(
        order_by="MessageRow.id", cascade="all, delete-orphan", passive_deletes=True
    )

    __table_args__ = (sa.Index("ix_conversations_stitch", "client_hash", "tail_hash"),
                      sa.Index("ix_conversations_continuation", "tail_hash", "owner_hash"))


class MessageRow(Base):
    __tablename__ = "messages"

    id: Mapped[int] = mapped_column(sa.Integer(), primary_key=True, autoincrement=True)
    conversation_id: Mapped[str] = mapped_column(sa.ForeignKey("conversations.id", ondelete="CASCADE"))
    parent_id: Mapped[int | None] = mapped_column(sa.Integer())  # the message before it on its branch
    position: Mapped[int] = mapped_column(sa.Integer())  # depth on its branch; siblings share it
    role: Mapped[str] = mapped_column(sa.String(16))
    content: Mapped[str] = mapped_column(sa.Text())
    status: Mapped[str] = mapped_column(sa.String(16))
    finish_reason: Mapped[str | None] = mapped_column(sa.String(32))
    prompt_tokens: Mapped[int | None] = mapped_column(sa.Integer())
    completion_tokens: Mapped[int | None] = mapped_column(sa.Integer())
    created_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True))

    __table_args__ = (sa.Index("ix_messages_conversation", "conversation_id", "position"),)


class FeedbackRow(Base):
    """A reader's thumbs up or down on one reply, with an optional reason."""

    __tablename__ = "feedback"

    message_id: Mapped[int] = mapped_column(sa.ForeignKey("messages.id", ondelete="CASCADE"), primary_key=True)
    conversation_id: Mapped[str] = mapped_column(sa.ForeignKey("conversations.id", ondelete="CASCADE"))
    rating: Mapped[str] = mapped_column(sa.String(8))  # up | down
    reason: Mapped[str | None] = mapped_column(sa.Text())
    created_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True))

    __table_args__ = (sa.Index("ix_feedback_conversation", "conversation_id"),)


class JudgmentRow(Base):
    __tablename__ = "judgments"

    id: Mapped[int] = mapped_column(sa.Integer(), primary_key=True, autoincrement=True)
    conversation_id: Mapped[str] = mapped_column(sa.ForeignKey("conversations.id", ondelete="CASCADE"), index=True)
    judge_id: Mapped[str] = mapped_column(sa.String(200))
    rubric_hash: Mapped[str] = mapped_column(sa.String(32))
    status: Mapped[str] = mapped_column(sa.String(16))
    method: Mapped[str] = mapped_column(sa.String(16))
    score: Mapped[float | None] = mapped_column(sa.Float())
    distribution: Mapped[dict[str, float] | None] = mapped_column(sa.JSON())
    rationale: Mapped[str | None] = mapped_column(sa.Text())
    flags: Mapped[list[str]] = mapped_column(sa.JSON())
    error: Mapped[str | None] = mapped_column(sa.Text())
    created_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True))

    __table_args__ = (
        sa.UniqueConstraint("conversation_id", "judge_id", "rubric_hash", name="uq_judgments_version"),
    )


class PublicationRow(Base):
    __tablename__ = "publications"

    conversation_id: Mapped[str] = mapped_column(
        sa.ForeignKey("conversations.id", ondelete="CASCADE"), primary_key=True
    )
    # accepted (chosen, file not committed yet) | published (committed) | rejected (with the reason, kept)
    # | taken_down
    state: Mapped[str] = mapped_column(sa.String(16))
    reason: Mapped[str | None] = mapped_column(sa.Text())
    path: Mapped[str | None] = mapped_column(sa.String(200))
    commit_sha: Mapped[str | None] = mapped_column(sa.String(64))
    pushed: Mapped[bool] = mapped_column(sa.Boolean(), default=False)
    score: Mapped[float | None] = mapped_column(sa.Float())
    judge_id: Mapped[str | None] = mapped_column(sa.String(200))
    threshold: Mapped[float | None] = mapped_column(sa.Float())  # the score the decision was made against
    pii_counts: Mapped[dict[str, int] | None] = mapped_column(sa.JSON())
    # The published (scrubbed) text's dedup keys: normalised hash and MinHash signature bytes.
    dedup_hash: Mapped[str | None] = mapped_column(sa.String(64))
    minhash: Mapped[bytes | None] = mapped_column(sa.LargeBinary())
    created_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True))

    # Each publishing run looks up only its own few rows: by content hash (exact duplicates; also the publications
    # still without keys), the day's count against the cap, and what is not pushed yet.
    __table_args__ = (
        sa.Index("ix_publications_dedup_hash", "dedup_hash", "state", "conversation_id"),
        sa.Index("ix_publications_recent", "state", "created_at"),
        sa.Index("ix_publications_unpushed", "state", "pushed", "created_at"),
    )


# Publication states whose conversations new ones must not duplicate: those in the dataset and those on their way.
DEDUP_STATES = ("accepted", "published")


class DedupBandRow(Base):
    """The near-duplicate index: one row per LSH band of each publication in `DEDUP_STATES` that has a MinHash
    signature (`thresher.curate.band_keys`); candidates are the publications sharing a band key. `_set_publications`
    keeps it in step with their states: a takedown or a withdrawn consent takes a publication out."""

    __tablename__ = "dedup_bands"

    band_hash: Mapped[int] = mapped_column(sa.BigInteger(), primary_key=True, autoincrement=False)
    conversation_id: Mapped[str] = mapped_column(
        sa.ForeignKey("publications.conversation_id", ondelete="CASCADE"), primary_key=True
    )

    __table_args__ = (sa.Index("ix_dedup_bands_conversation", "conversation_id"), {"sqlite_with_rowid": False})



class ReviewRow(Base):
    __tablename__ = "reviews"

    id: Mapped[int] = mapped_column(sa.Integer(), primary_key=True, autoincrement=True)
    conversation_id: Mapped[str] = mapped_column(sa.ForeignKey("conversations.id", ondelete="CASCADE"))
    reviewer: Mapped[str] = mapped_column(sa.String(64))
    verdict: Mapped[str] = mapped_column(sa.String(16))  # approve | reject
    reason: Mapped[str] = mapped_column(sa.Text())
    score: Mapped[int | None] = mapped_column(sa.Integer())
    time: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True))
    commit_sha: Mapped[str | None] = mapped_column(sa.String(64))

    __table_args__ = (sa.UniqueConstraint("conversation_id", "reviewer", name="uq_reviews_reviewer"),)


class CorrectionRow(Base):
    __tablename__ = "corrections"

    id: Mapped[int] = mapped_column(sa.Integer(), primary_key=True, autoincrement=True)
    conversation_id: Mapped[str] = mapped_column(sa.ForeignKey("conversations.id", ondelete="CASCADE"), index=True)
    commit_sha: Mapped[str] = mapped_column(sa.String(64))
    author: Mapped[str | None] = mapped_column(sa.String(300))
    diff: Mapped[str] = mapped_column(sa.Text())
    time: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True))
    rejudged_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))  # None: to be judged again

    __table_args__ = (sa.UniqueConstraint("conversation_id", "commit_sha", name="uq_corrections_commit"),)



def _path(row: ConversationRow) -> list[MessageRow]:
    """The messages of the conversation's current branch, first to last."""
    if row.head_id is None:  # no messages yet, or being edited from its first message
        return []
    by_id = {m.id: m for m in row.messages}
    path: list[MessageRow] = []
    at = by_id.get(row.head_id)
    while at is not None:
        path.append(at)
        at = by_id.get(at.parent_id) if at.parent_id is not None else None
    path.reverse()
    return path


def _aware(dt: datetime | None) -> datetime | None:
    # SQLite hands back naive datetimes; everything we store is UTC.
    if dt is not None and dt.tzinfo is None:
        return dt.replace(tzinfo=UTC)
    return dt


def _to_judgment(r: JudgmentRow) -> Judgment:
    return Judgment(score=r.score, status=r.status, judge_id=r.judge_id, rubric_hash=r.rubric_hash,
                    distribution=r.distribution, rationale=r.rationale, flags=list(r.flags), method=r.method,
                    error=r.error, created_at=_aware(r.created_at))  # type: ignore[arg-type]


def _to_publication(r: PublicationRow) -> Publication:
    return Publication(r.conversation_id, r.state, r.reason, r.path, r.commit_sha, r.pushed, r.score, r.judge_id,
                       r.pii_counts, threshold=r.threshold)


def _to_message(row: MessageRow) -> Message:
    return Message(
        role=row.role,  # type: ignore[arg-type]
        content=row.content,
        status=row.status,
        finish_reason=row.finish_reason,
        created_at=_aware(row.created_at),  # type: ignore[arg-type]
    )


def _to_conversation(row: ConversationRow) -> Conversation:
    return Conversation(
        id=row.id,
        messages=[_to_message(m) for m in _path(row)],
        created_at=_aware(row.created_at),  # type: ignore[arg-type]
        updated_at=_aware(row.updated_at),  # type: ignore[arg-type]
        ended_at=_aware(row.ended_at),
        end_reason=row.end_reason,
        status=row.status,
        publish_allowed=row.publish_allowed,
        licence=row.licence,
        model_version=row.model_version,
        client_hash=row.client_hash,
        owner_hash=row.owner_hash,
        source=row.source,
    )


def _title(text: str, limit: int = 60) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1].rstrip() + "…"


def _tail_hash(rows: list[MessageRow]) -> str:
    return messages_hash([{"role": m.role, "content": m.content} for m in rows if m.status == COMPLETE])
