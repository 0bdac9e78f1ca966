"""Reviewers' verdicts and corrections as read from the dataset repository."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager

import sqlalchemy as sa
from sqlalchemy.orm import (
    Session,
)

from thresher.conversation import utcnow
from thresher.store.records import (
    Correction,
    NotFound,
    Review,
)
from thresher.store.tables import (
    ConversationRow,
    CorrectionRow,
    ReviewRow,
    _aware,
)


class Reviews:
    """Part of `Store` (see the module's docstring); it uses the store's `session()`."""

    session: Callable[[], AbstractContextManager[Session]]

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
