"""The conversation store: SQLAlchemy 2 tables and the queries every stage uses.

SQLite in WAL mode by default (one file in the data dir), Postgres by URL. The schema changes only through the
Alembic migrations in `thresher/migrations`, applied by `Store.migrate()`. Methods take and return
`thresher.conversation` objects, so callers never see ORM rows.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    aliased,
    mapped_column,
    relationship,
    selectinload,
    sessionmaker,
)

from thresher.conversation import COMPLETE, INTERRUPTED, STREAMING, Conversation, Message, messages_hash, utcnow
from thresher.judge import Judgment

MIGRATIONS = Path(__file__).parent / "migrations"


class NotFound(LookupError):
    """No conversation with that id."""


class PublishLocked(ValueError):
    """The conversation is published or being published: its owner's switch no longer changes anything (a takedown
    does)."""


# Conversation states in which the owner's publishing choice can no longer change what happens.
LOCKED = ("publishing", "published", "taken_down")
# Curation's reasons for a rejection that only the owner's choice caused; a later yes undoes them.
CONSENT_REJECTIONS = ("owner opted out", "owner withdrew consent")


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
# The conversation statuses that follow the publication state set for them (curation owns the conversation then).
CURATION_STATUSES = ("ended", "judged", "published", "rejected", "accepted", "publishing", "taken_down")


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


@dataclass
class Publication:
    conversation_id: str
    state: str
    reason: str | None = None
    path: str | None = None
    commit_sha: str | None = None
    pushed: bool = False
    score: float | None = None
    judge_id: str | None = None
    pii_counts: dict[str, int] | None = None
    dedup_hash: str | None = None
    minhash: bytes | None = None
    threshold: float | None = None  # the acceptance threshold curation decided at


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


@dataclass
class Review:
    """One reviewer's verdict on one conversation, as read from `reviews/<id>/<reviewer>.json`."""

    conversation_id: str
    reviewer: str
    verdict: str  # approve | reject
    reason: str
    time: datetime
    score: int | None = None
    commit_sha: str | None = None  # the commit that last wrote the verdict file


@dataclass
class Correction:
    """An edit a reviewer made to a published conversation file: the diff from what was published."""

    conversation_id: str
    commit_sha: str
    diff: str
    time: datetime
    author: str | None = None
    rejudged_at: datetime | None = None


RATINGS = ("up", "down")
ROOT = 0  # `append(after=ROOT)`: a new first message (row ids start at 1)


@dataclass
class Feedback:
    """A reader's rating of one reply: stored with the conversation, shown to reviewers, and available to the
    judge's training."""

    conversation_id: str
    message_id: int
    rating: str  # up | down
    reason: str | None = None
    position: int | None = None  # where the reply is in the conversation's current branch; None: another branch


@dataclass
class ReplyVersion:
    """One version of a reply (the first, or one regenerated): its text, status, its owner's rating, and whether it
    is the version the conversation's current branch keeps."""

    content: str
    status: str
    rating: str | None
    kept: bool


@dataclass
class Turn:
    """One message of a conversation's current branch as its owner's page shows it: with its id, the ids of the
    other versions at the same place (regenerated replies, edited messages; oldest first, itself included), and the
    owner's rating."""

    id: int
    parent_id: int | None
    role: str
    content: str
    status: str
    finish_reason: str | None
    versions: list[int]
    feedback: Feedback | None = None
    created_at: datetime | None = None


@dataclass
class Summary:
    """A line of an owner's conversation list."""

    id: str
    title: str
    updated_at: datetime
    ended: bool
    publish_allowed: bool
    status: str
    created_at: datetime | None = None
    renamed: bool = False  # the title is the owner's own, not the first message


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


class Store:
    def __init__(self, url: str) -> None:
        self.url = url
        kwargs: dict[str, Any] = {}
        if url.startswith("sqlite"):
            path = url.split("///", 1)[-1]
            if path and path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
        else:
            kwargs["pool_pre_ping"] = True
        self.engine = sa.create_engine(url, **kwargs)
        if url.startswith("sqlite"):
            event.listen(self.engine, "connect", _sqlite_pragmas)
            event.listen(self.engine, "begin", _sqlite_begin)
        self._session = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self._session.begin() as s:
            yield s

    def migrate(self) -> None:
        """Bring the schema to the newest revision (creates it in a blank database)."""
        from alembic import command
        from alembic.config import Config

        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        with self.engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")

    def close(self) -> None:
        self.engine.dispose()

    # -- conversations ---------------------------------------------------------------------------------------

    def create(self, conv: Conversation) -> Conversation:
        """Insert a conversation with the messages it already has (all treated as complete turns)."""
        with self.session() as s:
            row = ConversationRow(
                id=conv.id,
                created_at=conv.created_at,
                updated_at=conv.updated_at,
                ended_at=conv.ended_at,
                end_reason=conv.end_reason,
                status=conv.status,
                publish_allowed=conv.publish_allowed,
                licence=conv.licence,
                model_version=conv.model_version,
                client_hash=conv.client_hash,
                owner_hash=conv.owner_hash,
                source=conv.source,
            )
            for i, m in enumerate(conv.messages):
                row.messages.append(
                    MessageRow(
                        position=i,
                        role=m.role,
                        content=m.content,
                        status=m.status,
                        finish_reason=m.finish_reason,
                        created_at=m.created_at,
                    )
                )
            row.tail_hash = _tail_hash(row.messages)
            s.add(row)
            if row.messages:  # one branch: each message's parent is the one before it
                s.flush()
                for before, after in zip(row.messages, row.messages[1:], strict=False):
                    after.parent_id = before.id
                row.head_id = row.messages[-1].id
        return conv

    def get(self, conv_id: str) -> Conversation:
        with self.session() as s:
            row = s.get(ConversationRow, conv_id)
            if row is None:
                raise NotFound(conv_id)
            return _to_conversation(row)

    def find_continuation(self, source: str, owner_hash: str | None, earlier: list[dict[str, str]]) -> str | None:
        """The open conversation from `source` of this owner whose messages so far are exactly `earlier`, if any:
        a request never continues a conversation of another owner or of another source."""
        h = messages_hash(earlier)
        with self.session() as s:
            stmt = (
                sa.select(ConversationRow.id)
                .where(ConversationRow.tail_hash == h, ConversationRow.ended_at.is_(None),
                       ConversationRow.source == source)
                .where(
                    ConversationRow.owner_hash.is_(None)
                    if owner_hash is None
                    else ConversationRow.owner_hash == owner_hash
                )
                .order_by(ConversationRow.updated_at.desc())
                .limit(1)
            )
            return s.scalar(stmt)

    def append(self, conv_id: str, message: Message, after: int | None = None) -> int:
        """Commit one message at the end of the conversation's current branch, or after message `after` (ROOT: as
        its first message), which starts a new branch when that message already has a successor; returns its id."""
        with self.session() as s:
            row = s.get(ConversationRow, conv_id, with_for_update=True)
            if row is None:
                raise NotFound(conv_id)
            if row.ended_at is not None:
                raise ValueError(f"conversation {conv_id} has ended")
            if after is not None:
                self._move_head(row, after)
            path = _path(row)
            msg = MessageRow(
                parent_id=path[-1].id if path else None,
                position=len(path),
                role=message.role,
                content=message.content,
                status=message.status,
                finish_reason=message.finish_reason,
                created_at=message.created_at,
            )
            row.messages.append(msg)
            s.flush()
            row.head_id = msg.id
            row.updated_at = utcnow()
            row.tail_hash = _tail_hash([*path, msg])
            return msg.id

    @staticmethod
    def _move_head(row: ConversationRow, message_id: int) -> None:
        if message_id == ROOT:
            row.head_id = None
            return
        if not any(m.id == message_id for m in row.messages):
            raise NotFound(f"message {message_id} in conversation {row.id}")
        row.head_id = message_id

    def switch(self, conv_id: str, message_id: int) -> Conversation:
        """Put the conversation on the branch through `message_id` (one of several versions), following the
        newest version below it to the end."""
        with self.session() as s:
            row = s.get(ConversationRow, conv_id, with_for_update=True)
            if row is None:
                raise NotFound(conv_id)
            self._move_head(row, message_id)
            children: dict[int, int] = {}
            for m in row.messages:  # oldest first, so the newest child wins
                if m.parent_id is not None:
                    children[m.parent_id] = m.id
            at = message_id
            while at in children:
                at = children[at]
            row.head_id = at
            row.tail_hash = _tail_hash(_path(row))
            return _to_conversation(row)

    def thread(self, conv_id: str) -> tuple[Conversation, list[Turn]]:
        """The conversation and its current branch as turns (ids, versions, ratings) for its owner's page."""
        with self.session() as s:
            row = s.get(ConversationRow, conv_id)
            if row is None:
                raise NotFound(conv_id)
            siblings: dict[tuple[int | None, str], list[int]] = {}
            for m in row.messages:
                siblings.setdefault((m.parent_id, m.role), []).append(m.id)
            path = _path(row)
            ratings = {f.message_id: f for f in s.scalars(
                sa.select(FeedbackRow).where(FeedbackRow.conversation_id == conv_id))}
            turns = []
            for i, m in enumerate(path):
                f = ratings.get(m.id)
                turns.append(Turn(
                    m.id, m.parent_id, m.role, m.content, m.status, m.finish_reason,
                    siblings[(m.parent_id, m.role)],
                    None if f is None else Feedback(conv_id, m.id, f.rating, f.reason, i), _aware(m.created_at)))
            return _to_conversation(row), turns

    def conversations_of(self, owner_hash: str, limit: int = 200) -> list[Summary]:
        """An owner's conversations, most recently active first, each titled by its owner's name for it or else by
        the first user message of the branch it is on (an edited first message retitles it)."""
        with self.session() as s:
            rows = s.scalars(sa.select(ConversationRow).where(ConversationRow.owner_hash == owner_hash)
                             .order_by(ConversationRow.updated_at.desc(), ConversationRow.id.desc())
                             .limit(limit)).all()
            untitled = [r for r in rows if not r.title and r.head_id is not None]
            parents: dict[int, int | None] = {}
            users: dict[int, str] = {}
            for start in range(0, len(untitled), 500):
                ids = [r.id for r in untitled[start:start + 500]]
                for mid, parent, role, content in s.execute(
                        sa.select(MessageRow.id, MessageRow.parent_id, MessageRow.role, MessageRow.content)
                        .where(MessageRow.conversation_id.in_(ids))):
                    parents[mid] = parent
                    if role == "user":
                        users[mid] = content
            firsts: dict[str, str] = {}
            for r in untitled:
                at: int | None = r.head_id
                while at is not None:  # up the current branch; the last user message seen is the first
                    if at in users:
                        firsts[r.id] = users[at]
                    at = parents.get(at)
            return [Summary(r.id, r.title or _title(firsts.get(r.id, "")), _aware(r.updated_at),  # type: ignore[arg-type]
                            r.ended_at is not None, r.publish_allowed, r.status, _aware(r.created_at),
                            bool(r.title)) for r in rows]

    def rename(self, conv_id: str, title: str | None) -> None:
        """Give a conversation its owner's own title; None or blank goes back to its first message."""
        line = " ".join((title or "").split())
        if len(line) > 200:
            raise ValueError(f"a title has at most 200 characters, not {len(line)}")
        with self.session() as s:
            row = s.get(ConversationRow, conv_id)
            if row is None:
                raise NotFound(conv_id)
            row.title = line or None

    def reply_settings(self, conv_id: str) -> dict[str, Any]:
        """The reply settings its owner chose for this conversation ({} when none)."""
        with self.session() as s:
            row = s.get(ConversationRow, conv_id)
            if row is None:
                raise NotFound(conv_id)
            return dict(row.reply_settings or {})

    def set_reply_settings(self, conv_id: str, settings: dict[str, Any]) -> None:
        with self.session() as s:
            row = s.get(ConversationRow, conv_id)
            if row is None:
                raise NotFound(conv_id)
            row.reply_settings = dict(settings) or None

    def delete(self, conv_id: str) -> bool:
        """Delete a conversation with everything kept about it (messages of every branch, judgments, curation's
        decision, ratings). One already published (or being published) is not deleted: the dataset holds it and
        only a takedown removes it; returns False then."""
        with self.session() as s:
            row = s.get(ConversationRow, conv_id, with_for_update=True)
            if row is None:
                raise NotFound(conv_id)
            if row.status in LOCKED:
                return False
            # Explicit deletes, not only ON DELETE CASCADE: SQLite enforces it only with foreign_keys on.
            for table in (FeedbackRow, JudgmentRow, DedupBandRow, PublicationRow, ReviewRow, CorrectionRow):
                s.execute(sa.delete(table).where(table.conversation_id == conv_id))  # type: ignore[attr-defined]
            s.delete(row)
            return True

    def set_feedback(self, conv_id: str, message_id: int, rating: str | None, reason: str | None = None) -> None:
        """Rate a reply up or down (with an optional reason), or take the rating back (rating None)."""
        if rating is not None and rating not in RATINGS:
            raise ValueError(f"rating must be one of {', '.join(RATINGS)} (or none), not {rating!r}")
        with self.session() as s:
            msg = s.get(MessageRow, message_id)
            if msg is None or msg.conversation_id != conv_id:
                raise NotFound(f"message {message_id} in conversation {conv_id}")
            if msg.role != "assistant":
                raise ValueError("only replies can be rated")
            row = s.get(FeedbackRow, message_id)
            if rating is None:
                if row is not None:
                    s.delete(row)
                return
            now = utcnow()
            if row is None:
                row = FeedbackRow(message_id=message_id, conversation_id=conv_id, created_at=now)
                s.add(row)
            row.rating, row.reason, row.updated_at = rating, (reason or "").strip() or None, now

    def feedback(self, ids: list[str]) -> dict[str, list[Feedback]]:
        """Ratings of these conversations' replies, each with its place in the current branch, by conversation."""
        out: dict[str, list[Feedback]] = {}
        with self.session() as s:
            for start in range(0, len(ids), 500):
                chunk = ids[start:start + 500]
                rows = s.scalars(sa.select(FeedbackRow).where(FeedbackRow.conversation_id.in_(chunk))
                                 .order_by(FeedbackRow.message_id)).all()
                if not rows:
                    continue
                convs = {c.id: c for c in s.scalars(sa.select(ConversationRow).where(
                    ConversationRow.id.in_({r.conversation_id for r in rows})))}
                places = {cid: {m.id: i for i, m in enumerate(_path(c))} for cid, c in convs.items()}
                for r in rows:
                    out.setdefault(r.conversation_id, []).append(Feedback(
                        r.conversation_id, r.message_id, r.rating, r.reason,
                        places.get(r.conversation_id, {}).get(r.message_id)))
        return out

    def reply_versions(self, ids: list[str]) -> dict[str, dict[int, list[ReplyVersion]]]:
        """Every version of each reply on these conversations' current branches that has more than one (regenerated
        replies), by conversation and place in the branch, oldest first, each with its rating and whether it is
        the one kept: what preference pairs are made of."""
        out: dict[str, dict[int, list[ReplyVersion]]] = {}
        with self.session() as s:
            for start in range(0, len(ids), 500):
                # One indexed look-up finds the few conversations with a regenerated reply; only those are read.
                have = s.scalars(sa.select(MessageRow.conversation_id).distinct().where(
                    MessageRow.conversation_id.in_(ids[start:start + 500]), MessageRow.role == "assistant")
                    .group_by(MessageRow.conversation_id, MessageRow.parent_id)
                    .having(sa.func.count() > 1)).all()
                if not have:
                    continue
                for row in s.scalars(sa.select(ConversationRow).where(ConversationRow.id.in_(set(have)))):
                    path = _path(row)
                    kept = {m.id for m in path}
                    siblings: dict[int | None, list[MessageRow]] = {}
                    for m in row.messages:
                        if m.role == "assistant":
                            siblings.setdefault(m.parent_id, []).append(m)
                    ratings: dict[int, str] | None = None
                    for place, m in enumerate(path):
                        versions = siblings.get(m.parent_id, []) if m.role == "assistant" else []
                        if len(versions) < 2:
                            continue
                        if ratings is None:
                            ratings = {f.message_id: f.rating for f in s.scalars(
                                sa.select(FeedbackRow).where(FeedbackRow.conversation_id == row.id))}
                        out.setdefault(row.id, {})[place] = [
                            ReplyVersion(v.content, v.status, ratings.get(v.id), v.id in kept)
                            for v in sorted(versions, key=lambda v: v.id)]
        return out

    def update_reply(
        self,
        message_id: int,
        content: str,
        status: str = STREAMING,
        finish_reason: str | None = None,
        prompt_tokens: int | None = None,
        completion_tokens: int | None = None,
    ) -> None:
        """Save an assistant reply as it grows, and once more when it completes or is cut off."""
        with self.session() as s:
            msg = s.get(MessageRow, message_id)
            if msg is None:
                raise NotFound(f"message {message_id}")
            msg.content = content
            msg.status = status
            msg.finish_reason = finish_reason
            msg.prompt_tokens = prompt_tokens
            msg.completion_tokens = completion_tokens
            conv = s.get(ConversationRow, msg.conversation_id)
            assert conv is not None
            conv.updated_at = utcnow()
            if status != STREAMING:
                conv.tail_hash = _tail_hash(_path(conv))

    def end(self, conv_id: str, reason: str) -> Conversation:
        """Mark a conversation ended (idempotent: the first end time and reason stay)."""
        with self.session() as s:
            row = s.get(ConversationRow, conv_id)
            if row is None:
                raise NotFound(conv_id)
            if row.ended_at is None:
                row.ended_at = utcnow()
                row.end_reason = reason
                row.status = "ended"
            return _to_conversation(row)

    def set_publish(self, conv_id: str, allowed: bool) -> None:
        """The operator's override (a takedown): unconditional. Owners go through `choose_publish`."""
        with self.session() as s:
            row = s.get(ConversationRow, conv_id)
            if row is None:
                raise NotFound(conv_id)
            row.publish_allowed = allowed

    def choose_publish(self, conv_id: str, allowed: bool) -> Conversation:
        """The owner's choice, honoured until the conversation is claimed for publishing (`claim_for_publishing`
        takes the same row lock, so a choice either lands before the claim or is refused with PublishLocked).
        A yes after curation turned the conversation away only for want of consent lets curation decide again."""
        with self.session() as s:
            row = s.get(ConversationRow, conv_id, with_for_update=True)
            if row is None:
                raise NotFound(conv_id)
            if row.status in LOCKED and allowed != row.publish_allowed:
                raise PublishLocked(f"conversation {conv_id} is already {row.status.replace('_', ' ')}")
            row.publish_allowed = allowed
            pub = s.get(PublicationRow, conv_id)
            if allowed and pub is not None and pub.state == "rejected" and pub.reason in CONSENT_REJECTIONS:
                s.delete(pub)
                judged = s.scalar(sa.select(JudgmentRow.id).where(JudgmentRow.conversation_id == conv_id,
                                                                  JudgmentRow.status != "failed").limit(1))
                row.status = "judged" if judged else "ended" if row.ended_at else "open"
            return _to_conversation(row)

    def claim_for_publishing(self, ids: list[str]) -> set[str]:
        """Of these conversations, the ones whose owners still allow publishing, now marked `publishing` (their
        owners' switches lock); the others are left as they are. One transaction with row locks."""
        c = ConversationRow.__table__
        claimed: set[str] = set()
        with self.session() as s:
            for start in range(0, len(ids), 500):
                allowed = [cid for cid, ok in s.execute(sa.select(c.c.id, c.c.publish_allowed)
                                                        .where(c.c.id.in_(ids[start:start + 500])).with_for_update())
                           if ok]
                if allowed:
                    s.execute(sa.update(c).where(c.c.id.in_(allowed)).values(status="publishing"))
                claimed.update(allowed)
        return claimed

    def end_idle(self, idle_since: datetime) -> list[str]:
        """End every open conversation with no activity since `idle_since`; returns their ids."""
        with self.session() as s:
            rows = s.scalars(
                sa.select(ConversationRow).where(
                    ConversationRow.ended_at.is_(None), ConversationRow.updated_at < idle_since
                )
            ).all()
            now = utcnow()
            for row in rows:
                row.ended_at, row.end_reason, row.status = now, "idle", "ended"
            return [r.id for r in rows]

    def recover_interrupted(self) -> int:
        """After a crash, replies left mid-stream keep their partial text and are marked interrupted."""
        with self.session() as s:
            rows = s.scalars(sa.select(MessageRow).where(MessageRow.status == STREAMING)).all()
            for msg in rows:
                msg.status = INTERRUPTED
                msg.finish_reason = msg.finish_reason or "interrupted"
            return len(rows)

    def list(self, status: str | None = None, owner_hash: str | None = None, limit: int = 100) -> list[Conversation]:
        with self.session() as s:
            stmt = sa.select(ConversationRow).order_by(ConversationRow.updated_at.desc()).limit(limit)
            if status is not None:
                stmt = stmt.where(ConversationRow.status == status)
            if owner_hash is not None:
                stmt = stmt.where(ConversationRow.owner_hash == owner_hash)
            return [_to_conversation(r) for r in s.scalars(stmt).all()]

    # -- judgments -------------------------------------------------------------------------------------------

    def pending_judgment(self, judge_id: str, rubric_hash: str, limit: int = 50) -> list[Conversation]:
        """Ended conversations whose owners allow publishing and that this judge version has not judged yet (or
        failed to), oldest first."""
        done = sa.select(JudgmentRow.conversation_id).where(
            JudgmentRow.judge_id == judge_id,
            JudgmentRow.rubric_hash == rubric_hash,
            JudgmentRow.status != "failed",  # an engine failure is tried again on the next run
        )
        with self.session() as s:
            stmt = (
                sa.select(ConversationRow)
                .where(ConversationRow.ended_at.is_not(None), ConversationRow.publish_allowed.is_(True))
                .where(ConversationRow.id.not_in(done))
                .order_by(ConversationRow.ended_at, ConversationRow.id)
                .limit(limit)
            )
            return [_to_conversation(r) for r in s.scalars(stmt).all()]

    def save_judgment(self, conv_id: str, j: Judgment) -> None:
        """Store one judgment (replacing an earlier one by the same judge version) and mark the conversation
        judged; one transaction, so a crash leaves either all of it or none."""
        with self.session() as s:
            conv = s.get(ConversationRow, conv_id)
            if conv is None:
                raise NotFound(conv_id)
            s.execute(
                sa.delete(JudgmentRow).where(
                    JudgmentRow.conversation_id == conv_id,
                    JudgmentRow.judge_id == j.judge_id,
                    JudgmentRow.rubric_hash == j.rubric_hash,
                )
            )
            s.add(JudgmentRow(
                conversation_id=conv_id, judge_id=j.judge_id, rubric_hash=j.rubric_hash, status=j.status,
                method=j.method, score=j.score, distribution=j.distribution, rationale=j.rationale,
                flags=list(j.flags), error=j.error, created_at=j.created_at,
            ))
            if conv.status in ("ended", "judged"):
                conv.status = "judged"

    def judgments(self, conv_id: str) -> list[Judgment]:
        with self.session() as s:
            rows = s.scalars(
                sa.select(JudgmentRow).where(JudgmentRow.conversation_id == conv_id).order_by(JudgmentRow.id)
            ).all()
            return [_to_judgment(r) for r in rows]

    def judgment_stats(self) -> dict[str, object]:
        """Counts by judgment status, the mean score, and a histogram of scores in whole-number bins."""
        with self.session() as s:
            by_status = dict(
                s.execute(sa.select(JudgmentRow.status, sa.func.count()).group_by(JudgmentRow.status)).all()
            )
            scores = [x for x in s.scalars(sa.select(JudgmentRow.score).where(JudgmentRow.score.is_not(None)))]
        hist = [0] * 10
        for x in scores:
            hist[min(9, max(0, int(x) - 1))] += 1
        return {"by_status": by_status, "mean_score": sum(scores) / len(scores) if scores else None,
                "histogram": hist}

    # -- publications ----------------------------------------------------------------------------------------

    def undecided(self, limit: int = 1000) -> list[tuple[Conversation, Judgment]]:
        """Judged conversations that curation has not decided on yet, each with its latest judgment. Reads only
        conversations waiting (ended or judged: a decision moves a conversation out of both), never the decided."""
        with self.session() as s:
            j = aliased(JudgmentRow)
            latest = (sa.select(sa.func.max(j.id)).where(j.conversation_id == ConversationRow.id)
                      .correlate(ConversationRow).scalar_subquery())
            decided = sa.exists().where(PublicationRow.conversation_id == ConversationRow.id)
            stmt = (
                sa.select(ConversationRow, JudgmentRow)
                .options(selectinload(ConversationRow.messages))
                .join(JudgmentRow, JudgmentRow.id == latest)
                .where(ConversationRow.status.in_(("ended", "judged")), ~decided, JudgmentRow.status != "failed")
                .order_by(ConversationRow.ended_at, ConversationRow.id)
                .limit(limit)
            )
            return [(_to_conversation(c), _to_judgment(j)) for c, j in s.execute(stmt).all()]

    def set_publication(self, p: Publication) -> None:
        """Record (or update) curation's decision for one conversation."""
        self.set_publications([p])

    def set_publications(self, pubs: list[Publication]) -> None:
        """Record (or update) curation's decisions, all in one transaction."""
        if not pubs:
            return
        with self.session() as s:
            for start in range(0, len(pubs), 500):  # stay well under SQLite's limit on query parameters
                self._set_publications(s, pubs[start:start + 500])

    def _set_publications(self, s: Session, pubs: list[Publication]) -> None:
        # Core statements, one per kind of change for the whole chunk: publishing sets thousands of rows a call,
        # which the ORM's unit of work would load and flush row by row.
        t, c = PublicationRow.__table__, ConversationRow.__table__
        now = utcnow()
        values: dict[str, dict[str, Any]] = {}
        for p in pubs:
            v = values.setdefault(p.conversation_id, {})
            v.update(state=p.state, reason=p.reason, path=p.path, commit_sha=p.commit_sha, pushed=p.pushed,
                     score=p.score, judge_id=p.judge_id, pii_counts=p.pii_counts, updated_at=now)
            if p.dedup_hash is not None:  # kept once set: later updates need not carry them
                v.update(dedup_hash=p.dedup_hash, minhash=p.minhash)
            if p.threshold is not None:
                v["threshold"] = p.threshold
        old = {r.conversation_id: r._asdict() for r in s.execute(
            sa.select(t).where(t.c.conversation_id.in_(list(values))))}
        new = [{"dedup_hash": None, "minhash": None, "threshold": None, **v, "conversation_id": cid,
                "created_at": now} for cid, v in values.items() if cid not in old]
        if new:
            s.execute(sa.insert(t), new)
        by_columns: dict[tuple[str, ...], list[dict[str, Any]]] = {}  # only what changed, grouped by columns
        for cid, v in values.items():
            if cid in old:
                changes = {k: x for k, x in v.items() if x != old[cid][k] or k == "updated_at"}
                by_columns.setdefault(tuple(sorted(changes)), []).append({**changes, "b_id": cid})
        for rows in by_columns.values():
            s.execute(sa.update(t).where(t.c.conversation_id == sa.bindparam("b_id")), rows)
        follows = c.c.status.in_([sa.literal(x) for x in CURATION_STATUSES])  # literals: bound once, for every row
        s.execute(sa.update(c).where(c.c.id == sa.bindparam("b_id"), follows).values(status=sa.bindparam("b_state")),
                  [{"b_id": cid, "b_state": v["state"]} for cid, v in values.items()])
        # The band index follows: in it go signatures that entered DEDUP_STATES (accepted), out go those that
        # left (a takedown, a withdrawn consent); published after accepted changes nothing.
        changed: dict[str, tuple[bytes | None, bytes | None]] = {}
        for cid, v in values.items():
            state, minhash = (old[cid]["state"], old[cid]["minhash"]) if cid in old else (None, None)
            before = minhash if state in DEDUP_STATES else None
            after = v.get("minhash", minhash) if v["state"] in DEDUP_STATES else None
            if before != after:
                changed[cid] = (before, after)
        _unband(s, sorted(cid for cid, (before, _after) in changed.items() if before is not None))
        _band(s, {cid: after for cid, (_before, after) in changed.items() if after is not None})

    # The lookups below name one indexed column each and filter the rest in Python: given a second condition (the
    # state), a planner without statistics may walk every published row through that column's index instead.

    def dedup_by_hash(self, hashes: Sequence[str]) -> dict[str, str]:
        """For each of these normalised hashes that a publication in DEDUP_STATES has, the earliest one's id (ids
        sort by creation time). Part of `thresher.curate.DedupIndex`."""
        t = PublicationRow.__table__
        out: dict[str, str] = {}
        with self.session() as s:
            for start in range(0, len(hashes), 500):
                for h, cid, state in s.execute(sa.select(t.c.dedup_hash, t.c.conversation_id, t.c.state)
                                               .where(t.c.dedup_hash.in_(hashes[start:start + 500]))):
                    if state in DEDUP_STATES and (h not in out or cid < out[h]):
                        out[h] = cid
        return out

    def dedup_by_band(self, bands: Sequence[int]) -> list[tuple[int, str, bytes]]:
        """(band key, id, MinHash signature) of every publication in DEDUP_STATES with one of these band keys.
        Part of `thresher.curate.DedupIndex`."""
        b, t = DedupBandRow.__table__, PublicationRow.__table__
        found: list[tuple[int, str]] = []
        signatures: dict[str, bytes] = {}
        with self.session() as s:
            for start in range(0, len(bands), 500):
                found.extend((k, cid) for k, cid in s.execute(
                    sa.select(b.c.band_hash, b.c.conversation_id).where(b.c.band_hash.in_(bands[start:start + 500]))))
            ids = sorted({cid for _, cid in found})
            for start in range(0, len(ids), 500):
                signatures.update((cid, sig) for cid, state, sig in s.execute(
                    sa.select(t.c.conversation_id, t.c.state, t.c.minhash)
                    .where(t.c.conversation_id.in_(ids[start:start + 500])))
                    if state in DEDUP_STATES and sig is not None)
        return [(k, cid, signatures[cid]) for k, cid in found if cid in signatures]

    def missing_dedup_keys(self, after: str = "", limit: int = 500) -> list[tuple[str, str | None]]:
        """(id, path) of published conversations without dedup keys (published before keys were kept), by id,
        from the first id after `after`: an index lookup, empty once every one has been backfilled."""
        t = PublicationRow.__table__
        with self.session() as s:
            return [(cid, path) for cid, path in s.execute(
                sa.select(t.c.conversation_id, t.c.path)
                .where(t.c.dedup_hash.is_(None), t.c.state == "published", t.c.conversation_id > after)
                .order_by(t.c.conversation_id).limit(limit))]

    def set_dedup_keys(self, keys: list[tuple[str, str, bytes]]) -> None:
        """Backfill dedup keys (id, normalised hash, MinHash signature) for publications made before they were kept,
        and put them in the band index."""
        t = PublicationRow.__table__
        with self.session() as s:
            indexed = set()
            for cid, h, sig in keys:
                done = s.execute(sa.update(t).where(t.c.conversation_id == cid, t.c.dedup_hash.is_(None),
                                                    t.c.state.in_(DEDUP_STATES)).values(dedup_hash=h, minhash=sig))
                if done.rowcount:
                    indexed.add(cid)
            _band(s, {cid: sig for cid, _h, sig in keys if cid in indexed})

    def get_many(self, ids: list[str]) -> dict[str, Conversation]:
        """Several conversations, with their messages, in a few queries."""
        out: dict[str, Conversation] = {}
        with self.session() as s:
            for start in range(0, len(ids), 500):
                rows = s.scalars(
                    sa.select(ConversationRow).where(ConversationRow.id.in_(ids[start:start + 500]))
                    .options(selectinload(ConversationRow.messages))
                ).all()
                out.update((r.id, _to_conversation(r)) for r in rows)
        return out

    def publications(self, state: str | None = None, pushed: bool | None = None) -> list[Publication]:
        t = PublicationRow.__table__
        with self.session() as s:  # plain rows, not ORM objects: publishing reads thousands a call
            stmt = (sa.select(t.c.conversation_id, t.c.state, t.c.reason, t.c.path, t.c.commit_sha, t.c.pushed,
                              t.c.score, t.c.judge_id, t.c.pii_counts, t.c.threshold)
                    .order_by(t.c.created_at, t.c.conversation_id))
            if state is not None:
                stmt = stmt.where(t.c.state == state)
            if pushed is not None:
                stmt = stmt.where(t.c.pushed.is_(pushed))
            return [Publication(*r[:9], threshold=r[9]) for r in s.execute(stmt)]

    def publication(self, conv_id: str) -> Publication | None:
        """Curation's decision for one conversation, if any."""
        with self.session() as s:
            r = s.get(PublicationRow, conv_id)
            return None if r is None else _to_publication(r)

    def published_since(self, since: datetime) -> int:
        with self.session() as s:
            return s.scalar(
                sa.select(sa.func.count()).select_from(PublicationRow).where(
                    PublicationRow.state.in_(("accepted", "published")), PublicationRow.created_at >= since
                )
            ) or 0

    def counts(self) -> dict[str, int]:
        with self.session() as s:
            rows = s.execute(
                sa.select(ConversationRow.status, sa.func.count()).group_by(ConversationRow.status)
            ).all()
            return {status: n for status, n in rows}

    def decisions(self) -> list[tuple[Publication, datetime]]:
        """Every curation decision with when it was first made, oldest first (for the dashboard's figures)."""
        with self.session() as s:
            rows = s.scalars(sa.select(PublicationRow).order_by(PublicationRow.created_at,
                                                                 PublicationRow.conversation_id)).all()
            return [(_to_publication(r), _aware(r.created_at)) for r in rows]  # type: ignore[misc]

    def all_judgments(self) -> list[tuple[str, Judgment]]:
        """(conversation id, judgment) for every judgment of every judge version, oldest first (no messages)."""
        with self.session() as s:
            rows = s.scalars(sa.select(JudgmentRow).order_by(JudgmentRow.id)).all()
            return [(r.conversation_id, _to_judgment(r)) for r in rows]

    # -- reviews ---------------------------------------------------------------------------------------------

    def save_reviews(self, reviews: list[Review]) -> tuple[int, int, list[Review]]:
        """Upsert verdicts (one per conversation and reviewer) in one transaction. Returns (new, updated, unknown):
        verdicts on conversations this store does not hold are left out and handed back."""
        new = updated = 0
        unknown: list[Review] = []
        with self.session() as s:
            ids = sorted({r.conversation_id for r in reviews})
            known: set[str] = set()
            for i in range(0, len(ids), 500):
                known.update(s.scalars(sa.select(ConversationRow.id).where(ConversationRow.id.in_(ids[i:i + 500]))))
            existing = {(r.conversation_id, r.reviewer): r for r in s.scalars(sa.select(ReviewRow))}
            for r in reviews:
                if r.conversation_id not in known:
                    unknown.append(r)
                    continue
                row = existing.get((r.conversation_id, r.reviewer))
                if row is None:
                    row = ReviewRow(conversation_id=r.conversation_id, reviewer=r.reviewer)
                    s.add(row)
                    existing[(r.conversation_id, r.reviewer)] = row
                    new += 1
                elif (row.verdict, row.reason, row.score, _aware(row.time), row.commit_sha) == (
                        r.verdict, r.reason, r.score, r.time, r.commit_sha):
                    continue
                else:
                    updated += 1
                row.verdict, row.reason, row.score, row.time, row.commit_sha = (
                    r.verdict, r.reason, r.score, r.time, r.commit_sha)
        return new, updated, unknown

    def reviews(self, conv_id: str | None = None) -> list[Review]:
        with self.session() as s:
            stmt = sa.select(ReviewRow).order_by(ReviewRow.conversation_id, ReviewRow.reviewer)
            if conv_id is not None:
                stmt = stmt.where(ReviewRow.conversation_id == conv_id)
            return [Review(r.conversation_id, r.reviewer, r.verdict, r.reason, _aware(r.time),  # type: ignore[arg-type]
                           r.score, r.commit_sha) for r in s.scalars(stmt).all()]

    def remove_reviews(self, keys: list[tuple[str, str]]) -> int:
        """Forget these (conversation id, reviewer) verdicts, withdrawn from the dataset; returns how many went."""
        removed = 0
        with self.session() as s:
            for conv_id, reviewer in keys:
                removed += s.execute(sa.delete(ReviewRow).where(ReviewRow.conversation_id == conv_id,
                                                                ReviewRow.reviewer == reviewer)).rowcount
        return removed

    def save_correction(self, c: Correction) -> bool:
        """Record an edit of a published conversation (to be judged again); False if it is already recorded."""
        with self.session() as s:
            if s.get(ConversationRow, c.conversation_id) is None:
                raise NotFound(c.conversation_id)
            if s.scalar(sa.select(CorrectionRow.id).where(CorrectionRow.conversation_id == c.conversation_id,
                                                         CorrectionRow.commit_sha == c.commit_sha)):
                return False
            s.add(CorrectionRow(conversation_id=c.conversation_id, commit_sha=c.commit_sha, author=c.author,
                                diff=c.diff, time=c.time, rejudged_at=c.rejudged_at))
            return True

    def corrections(self, conv_id: str | None = None, to_rejudge: bool | None = None) -> list[Correction]:
        with self.session() as s:
            stmt = sa.select(CorrectionRow).order_by(CorrectionRow.id)
            if conv_id is not None:
                stmt = stmt.where(CorrectionRow.conversation_id == conv_id)
            if to_rejudge is not None:
                stmt = stmt.where(CorrectionRow.rejudged_at.is_(None) if to_rejudge
                                  else CorrectionRow.rejudged_at.is_not(None))
            return [Correction(r.conversation_id, r.commit_sha, r.diff, _aware(r.time),  # type: ignore[arg-type]
                               r.author, _aware(r.rejudged_at)) for r in s.scalars(stmt).all()]

    def mark_rejudged(self, conv_id: str, commit_sha: str) -> None:
        """The correction at this commit has been judged again."""
        with self.session() as s:
            s.execute(sa.update(CorrectionRow).where(CorrectionRow.conversation_id == conv_id,
                                                     CorrectionRow.commit_sha == commit_sha)
                      .values(rejudged_at=utcnow()))


def _band(s: Session, signatures: dict[str, bytes]) -> None:
    """Put these publications (id -> MinHash signature) in the band index."""
    from thresher.curate import band_keys

    rows = [{"band_hash": k, "conversation_id": cid} for cid, sig in signatures.items() for k in set(band_keys(sig))]
    rows.sort(key=lambda r: r["band_hash"])  # in key order, each insert lands beside the last in the index
    for start in range(0, len(rows), 5000):
        s.execute(sa.insert(DedupBandRow.__table__), rows[start:start + 5000])


def _unband(s: Session, ids: list[str]) -> None:
    """Take these publications out of the band index."""
    t = DedupBandRow.__table__
    for start in range(0, len(ids), 500):
        s.execute(sa.delete(t).where(t.c.conversation_id.in_(ids[start:start + 500])))


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()
    # Let SQLAlchemy, not the driver, decide when transactions begin (see _sqlite_begin).
    dbapi_conn.isolation_level = None


def _sqlite_begin(conn: Any) -> None:
    # Take the write lock up front: a deferred transaction that later writes can fail with "database is locked"
    # when another process (the judge worker) wrote in between, and busy_timeout cannot help it.
    conn.exec_driver_sql("BEGIN IMMEDIATE")
