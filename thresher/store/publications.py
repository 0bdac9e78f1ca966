"""Curation's decisions and the published set: publications, the duplicate index, counts."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import (
    Session,
    aliased,
    selectinload,
)

from thresher.conversation import Conversation, Judgment, Status, utcnow
from thresher.store.records import (
    Publication,
)
from thresher.store.tables import (
    DEDUP_STATES,
    ConversationRow,
    DedupBandRow,
    JudgmentRow,
    PublicationRow,
    _aware,
    _to_conversation,
    _to_judgment,
    _to_publication,
)


class Publications:
    """Part of `Store` (see the module's docstring); it uses the store's `session()`."""

    session: Callable[[], AbstractContextManager[Session]]

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
                .where(ConversationRow.status.in_((str(Status.ENDED), str(Status.JUDGED))), ~decided,
                       JudgmentRow.status != "failed")
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
        # The conversation's status follows the decision, where `Status`'s transitions allow it (an open one, or a
        # published one "accepted" again, stays as it is).
        for state in sorted({v["state"] for v in values.values()}):
            follows = c.c.status.in_([sa.literal(str(x)) for x in Status.sources(state)])  # bound once, for all
            s.execute(sa.update(c).where(c.c.id == sa.bindparam("b_id"), follows).values(status=state),
                      [{"b_id": cid} for cid, v in values.items() if v["state"] == state])
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
