"""Judgments: what is left to judge for a judge version, saving and reading them."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager

import sqlalchemy as sa
from sqlalchemy.orm import (
    Session,
)

from thresher.conversation import Conversation, Judgment, Status
from thresher.store.records import (
    NotFound,
)
from thresher.store.tables import (
    ConversationRow,
    JudgmentRow,
    _to_conversation,
    _to_judgment,
)


class Judgments:
    """Part of `Store` (see the module's docstring); it uses the store's `session()`."""

    session: Callable[[], AbstractContextManager[Session]]

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
            if conv.status in (Status.ENDED, Status.JUDGED):
                conv.status = str(Status.JUDGED)

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
