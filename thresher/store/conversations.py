"""Conversations and their message tree: create, append, branch and switch, settings, feedback, reply versions,
ending and consent."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import (
    Session,
)

from thresher.conversation import (
    INTERRUPTED,
    LOCKED,
    STREAMING,
    Conversation,
    Message,
    Status,
    messages_hash,
    utcnow,
)
from thresher.store.records import (
    CONSENT_REJECTIONS,
    RATINGS,
    ROOT,
    Feedback,
    NotFound,
    PublishLocked,
    ReplyVersion,
    Summary,
    Turn,
)
from thresher.store.tables import (
    ConversationRow,
    CorrectionRow,
    DedupBandRow,
    FeedbackRow,
    JudgmentRow,
    MessageRow,
    PublicationRow,
    ReviewRow,
    _aware,
    _path,
    _tail_hash,
    _title,
    _to_conversation,
)

_m, _c = MessageRow.__table__.c, ConversationRow.__table__.c
_GROW_REPLY = sa.update(MessageRow.__table__).where(_m.id == sa.bindparam("mid")).values(
    content=sa.bindparam("content"), status=sa.bindparam("status"), finish_reason=sa.bindparam("reason"),
    prompt_tokens=sa.bindparam("prompt"), completion_tokens=sa.bindparam("completion"),
).returning(_m.conversation_id)
_TOUCH = sa.update(ConversationRow.__table__).where(_c.id == sa.bindparam("cid")).values(updated_at=sa.bindparam("now"))


class Conversations:
    """Part of `Store` (see the module's docstring); it uses the store's `session()`."""

    session: Callable[[], AbstractContextManager[Session]]

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
        if status == STREAMING:  # twice a second for each reply being written: two plain statements, ~1/4 the time
            with self.session() as s:
                conv_id = s.execute(_GROW_REPLY, {"mid": message_id, "content": content, "status": status,
                                                  "reason": finish_reason, "prompt": prompt_tokens,
                                                  "completion": completion_tokens}).scalar()
                if conv_id is None:
                    raise NotFound(f"message {message_id}")
                s.execute(_TOUCH, {"cid": conv_id, "now": utcnow()})
            return
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
                row.status = str(Status.move(row.status, Status.ENDED))
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
                row.status = str(Status.move(row.status, Status.JUDGED if judged else Status.ENDED if row.ended_at
                                             else Status.OPEN))
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
                    s.execute(sa.update(c).where(c.c.id.in_(allowed)).values(status=str(Status.PUBLISHING)))
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
                row.ended_at, row.end_reason, row.status = now, "idle", str(Status.move(row.status, Status.ENDED))
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
