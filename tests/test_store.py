"""The store on real SQLite and real PostgreSQL: migrations, conversations, replies, stitching, idle end."""

from __future__ import annotations

from datetime import timedelta

import pytest
import sqlalchemy as sa

from thresher.conversation import COMPLETE, INTERRUPTED, STREAMING, Conversation, Message, utcnow
from thresher.store import NotFound, PublishLocked, Store


def test_migrate_blank_database_creates_columns(store: Store) -> None:
    insp = sa.inspect(store.engine)
    conv_cols = {c["name"] for c in insp.get_columns("conversations")}
    assert {"id", "created_at", "updated_at", "ended_at", "status", "publish_allowed", "licence", "model_version",
            "client_hash", "source", "tail_hash"} <= conv_cols
    msg_cols = {c["name"] for c in insp.get_columns("messages")}
    assert {"conversation_id", "position", "role", "content", "status", "finish_reason"} <= msg_cols
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar() == "0009"
    assert {"parent_id"} <= msg_cols and {"head_id", "title", "reply_settings"} <= conv_cols
    assert {"message_id", "conversation_id", "rating", "reason"} <= {c["name"] for c in insp.get_columns("feedback")}
    judgment_cols = {c["name"] for c in insp.get_columns("judgments")}
    assert {"conversation_id", "judge_id", "rubric_hash", "status", "score", "distribution", "rationale",
            "flags"} <= judgment_cols
    assert "ix_conversations_continuation" in {i["name"] for i in insp.get_indexes("conversations")}
    store.migrate()  # running again is a no-op


def test_finding_the_conversation_a_request_continues_is_one_index_look_up(tmp_path) -> None:
    st = Store(f"sqlite:///{tmp_path / 'x.db'}")
    st.migrate()
    with st.engine.connect() as conn:
        plan = " ".join(str(row[-1]) for row in conn.exec_driver_sql(
            "EXPLAIN QUERY PLAN SELECT id FROM conversations WHERE tail_hash = 'h' AND ended_at IS NULL "
            "AND source = 'api' AND owner_hash = 'o' ORDER BY updated_at DESC LIMIT 1"))
    assert "USING INDEX ix_conversations_continuation" in plan, plan
    st.close()


def test_sqlite_uses_wal(tmp_path) -> None:
    st = Store(f"sqlite:///{tmp_path / 'x.db'}")
    st.migrate()
    with st.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    st.close()


def test_create_and_get_roundtrip(store: Store) -> None:
    conv = Conversation(messages=[Message("system", "Be brief."), Message("user", "Hi")], source="web",
                        client_hash="c1", publish_allowed=False, model_version="m@1")
    store.create(conv)
    got = store.get(conv.id)
    assert [(m.role, m.content) for m in got.messages] == [("system", "Be brief."), ("user", "Hi")]
    assert got.source == "web" and got.client_hash == "c1" and not got.publish_allowed
    assert got.created_at.tzinfo is not None and got.ended_at is None and got.status == "open"
    with pytest.raises(NotFound):
        store.get("nope")


def test_reply_grows_then_completes(store: Store) -> None:
    conv = store.create(Conversation(messages=[Message("user", "Hi")]))
    mid = store.append(conv.id, Message("assistant", "", status=STREAMING))
    store.update_reply(mid, "Hel")
    assert store.get(conv.id).messages[-1].content == "Hel"
    store.update_reply(mid, "Hello", COMPLETE, "stop", 5, 2)
    last = store.get(conv.id).messages[-1]
    assert (last.content, last.status, last.finish_reason) == ("Hello", COMPLETE, "stop")


def test_recover_interrupted_keeps_partial_text(store: Store) -> None:
    conv = store.create(Conversation(messages=[Message("user", "Hi")]))
    mid = store.append(conv.id, Message("assistant", "", status=STREAMING))
    store.update_reply(mid, "partial ans")
    assert store.recover_interrupted() == 1
    last = store.get(conv.id).messages[-1]
    assert (last.content, last.status) == ("partial ans", INTERRUPTED)
    assert store.recover_interrupted() == 0


def test_find_continuation_matches_only_same_owner_source_and_open(store: Store) -> None:
    conv = store.create(Conversation(messages=[Message("user", "Hi")], client_hash="addr", owner_hash="alice"))
    mid = store.append(conv.id, Message("assistant", "", status=STREAMING))
    earlier = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
    assert store.find_continuation("api", "alice", earlier) is None  # reply not complete yet
    store.update_reply(mid, "Hello!", COMPLETE, "stop")
    assert store.find_continuation("api", "alice", earlier) == conv.id
    assert store.find_continuation("api", "bob", earlier) is None
    assert store.find_continuation("api", "addr", earlier) is None  # the same address is not the same owner
    assert store.find_continuation("web", "alice", earlier) is None
    assert store.find_continuation("api", "alice", earlier[:1]) is None
    store.end(conv.id, "api")
    assert store.find_continuation("api", "alice", earlier) is None


def test_end_is_idempotent_and_append_after_end_refused(store: Store) -> None:
    conv = store.create(Conversation(messages=[Message("user", "Hi")]))
    first = store.end(conv.id, "button")
    again = store.end(conv.id, "idle")
    assert again.end_reason == "button" and again.ended_at == first.ended_at
    with pytest.raises(ValueError, match="ended"):
        store.append(conv.id, Message("user", "more"))


def test_end_idle(store: Store) -> None:
    old = Conversation(messages=[Message("user", "old")])
    old.updated_at = utcnow() - timedelta(hours=2)
    store.create(old)
    fresh = store.create(Conversation(messages=[Message("user", "fresh")]))
    ended = store.end_idle(utcnow() - timedelta(minutes=30))
    assert ended == [old.id]
    assert store.get(old.id).end_reason == "idle"
    assert not store.get(fresh.id).ended
    assert store.counts() == {"ended": 1, "open": 1}


def test_set_publish_and_list(store: Store) -> None:
    a = store.create(Conversation(messages=[Message("user", "a")], owner_hash="o1"))
    store.create(Conversation(messages=[Message("user", "b")], owner_hash="o2"))
    store.set_publish(a.id, False)
    assert store.get(a.id).publish_allowed is False
    assert [c.id for c in store.list(owner_hash="o1")] == [a.id]
    assert len(store.list(status="open")) == 2


def test_judgments_pending_save_and_replace(store: Store) -> None:
    from thresher.judge import Judgment

    ended = store.create(Conversation(messages=[Message("user", "a")], publish_allowed=True))
    store.end(ended.id, "button")
    private = store.create(Conversation(messages=[Message("user", "b")], publish_allowed=False))
    store.end(private.id, "button")
    store.create(Conversation(messages=[Message("user", "still open")]))
    assert [c.id for c in store.pending_judgment("j1", "r1")] == [ended.id]  # open and opted-out ones wait
    store.save_judgment(ended.id, Judgment(score=7.5, status="ok", judge_id="j1", rubric_hash="r1",
                                           distribution={"7": 0.5, "8": 0.5}, flags=["x"]))
    assert store.pending_judgment("j1", "r1") == []
    assert [c.id for c in store.pending_judgment("j2", "r1")] == [ended.id]  # a new judge version judges again
    assert store.get(ended.id).status == "judged"
    store.save_judgment(ended.id, Judgment(score=6.0, status="ok", judge_id="j1", rubric_hash="r1"))
    got = store.judgments(ended.id)
    assert len(got) == 1 and got[0].score == 6.0  # replaced, not duplicated
    store.save_judgment(ended.id, Judgment(score=None, status="failed", judge_id="j2", rubric_hash="r1",
                                           error="down"))
    assert [c.id for c in store.pending_judgment("j2", "r1")] == [ended.id]  # failures are retried
    stats = store.judgment_stats()
    assert stats["by_status"] == {"ok": 1, "failed": 1} and stats["histogram"][5] == 1


def test_owner_choice_locks_once_claimed_for_publishing(store: Store) -> None:
    conv = store.create(Conversation(messages=[Message("user", "a")], publish_allowed=False))
    other = store.create(Conversation(messages=[Message("user", "b")], publish_allowed=True))
    assert store.choose_publish(conv.id, True).publish_allowed is True
    store.end(conv.id, "button")
    assert store.claim_for_publishing([conv.id, other.id, "NOPE"]) == {conv.id, other.id}
    assert store.get(conv.id).status == "publishing"
    with pytest.raises(PublishLocked, match="already publishing"):
        store.choose_publish(conv.id, False)
    assert store.get(conv.id).publish_allowed is True
    assert store.choose_publish(conv.id, True).publish_allowed is True  # saying yes again changes nothing
    store.choose_publish(other.id, True)
    with pytest.raises(NotFound):
        store.choose_publish("NOPE", True)
    private = store.create(Conversation(messages=[Message("user", "c")], publish_allowed=False))
    assert store.claim_for_publishing([private.id]) == set() and store.get(private.id).status == "open"


def test_a_yes_after_a_consent_rejection_is_decided_again(store: Store) -> None:
    from thresher.judge import Judgment
    from thresher.store import Publication

    conv = store.create(Conversation(messages=[Message("user", "a"), Message("assistant", "b")],
                                     publish_allowed=False))
    store.end(conv.id, "button")
    store.save_judgment(conv.id, Judgment(score=9.0, status="ok", judge_id="j", rubric_hash="r"))
    store.set_publication(Publication(conv.id, "rejected", "owner opted out"))
    assert store.get(conv.id).status == "rejected"
    store.choose_publish(conv.id, True)
    assert store.publication(conv.id) is None and store.get(conv.id).status == "judged"
    assert [c.id for c, _ in store.undecided()] == [conv.id]
    # A rejection for any other reason stands.
    store.set_publication(Publication(conv.id, "rejected", "score 3.00 below the threshold 8"))
    store.choose_publish(conv.id, False)
    store.choose_publish(conv.id, True)
    assert store.publication(conv.id).state == "rejected"


def _store_at_revision(url: str, revision: str) -> Store:
    """A store migrated only up to `revision`, to test what a later migration does to rows already there."""
    from alembic import command
    from alembic.config import Config

    from thresher.store import MIGRATIONS

    st = Store(url)
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with st.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)
    return st


def test_migration_0006_makes_each_existing_conversation_one_branch(store_url: str) -> None:
    st = _store_at_revision(store_url, "0005")
    now = utcnow()
    with st.engine.begin() as conn:
        conn.execute(sa.text(
            "INSERT INTO conversations (id, created_at, updated_at, status, publish_allowed, licence, source)"
            " VALUES ('C1', :t, :t, 'open', false, 'CC0', 'web')"), {"t": now})
        for i, (role, text) in enumerate([("user", "Hi"), ("assistant", "Hello"), ("user", "Bye")]):
            conn.execute(sa.text(
                "INSERT INTO messages (conversation_id, position, role, content, status, created_at)"
                " VALUES ('C1', :i, :r, :c, 'complete', :t)"), {"i": i, "r": role, "c": text, "t": now})
    st.migrate()
    assert [m.content for m in st.get("C1").messages] == ["Hi", "Hello", "Bye"]
    _, turns = st.thread("C1")
    assert [t.parent_id for t in turns] == [None, turns[0].id, turns[1].id]
    st.append("C1", Message("assistant", "Cheers"))
    assert [m.content for m in st.get("C1").messages] == ["Hi", "Hello", "Bye", "Cheers"]
    st.close()


def test_branches_versions_and_switching(store: Store) -> None:
    from thresher.store import ROOT

    conv = store.create(Conversation(messages=[Message("user", "Hi"), Message("assistant", "Hello")]))
    _, (u1, a1) = store.thread(conv.id)
    a2 = store.append(conv.id, Message("assistant", "Hey"), after=u1.id)  # a regenerated reply
    got, turns = store.thread(conv.id)
    assert [m.content for m in got.messages] == ["Hi", "Hey"]
    assert turns[1].versions == [a1.id, a2] and turns[0].versions == [u1.id]
    u2 = store.append(conv.id, Message("user", "Hi there"), after=ROOT)  # the first message, edited
    assert [m.content for m in store.get(conv.id).messages] == ["Hi there"]
    _, turns = store.thread(conv.id)
    assert turns[0].versions == [u1.id, u2]
    # Back to the first version: the newest reply below it comes with it.
    assert [m.content for m in store.switch(conv.id, u1.id).messages] == ["Hi", "Hey"]
    assert [m.content for m in store.switch(conv.id, a1.id).messages] == ["Hi", "Hello"]
    # The stitching hash follows the branch: an API client continuing "Hi/Hello" finds it.
    assert store.find_continuation("api", None, [{"role": "user", "content": "Hi"},
                                                 {"role": "assistant", "content": "Hello"}]) == conv.id
    with pytest.raises(NotFound):
        store.switch(conv.id, 10**9)
    other = store.create(Conversation(messages=[Message("user", "x")]))
    with pytest.raises(NotFound):
        store.switch(other.id, a1.id)  # a message of another conversation


def test_feedback_delete_and_the_owners_list(store: Store) -> None:
    conv = store.create(Conversation(messages=[Message("user", "  Tell me\nabout tides " + "x" * 80),
                                               Message("assistant", "Moon.")], owner_hash="o1"))
    store.create(Conversation(messages=[Message("user", "someone else's")], owner_hash="o2"))
    _, (user, reply) = store.thread(conv.id)
    store.set_feedback(conv.id, reply.id, "down", "  too short ")
    _, turns = store.thread(conv.id)
    assert turns[1].feedback is not None and (turns[1].feedback.rating, turns[1].feedback.reason) == (
        "down", "too short")
    store.set_feedback(conv.id, reply.id, "up")
    assert [(f.rating, f.reason, f.position) for f in store.feedback([conv.id])[conv.id]] == [("up", None, 1)]
    with pytest.raises(ValueError, match="only replies"):
        store.set_feedback(conv.id, user.id, "up")
    with pytest.raises(ValueError, match="rating must be one of up, down"):
        store.set_feedback(conv.id, reply.id, "meh")
    with pytest.raises(NotFound):
        store.set_feedback("OTHER", reply.id, "up")
    (line,) = store.conversations_of("o1")
    assert line.id == conv.id and line.title.startswith("Tell me about tides x") and len(line.title) == 60
    assert store.delete(conv.id) is True
    assert store.conversations_of("o1") == [] and store.feedback([conv.id]) == {}
    with pytest.raises(NotFound):
        store.get(conv.id)
    with store.engine.connect() as c:
        assert c.execute(sa.text("SELECT count(*) FROM messages WHERE conversation_id = :c"),
                         {"c": conv.id}).scalar() == 0
    published = store.create(Conversation(messages=[Message("user", "y")], owner_hash="o1", status="published"))
    assert store.delete(published.id) is False and store.get(published.id)


def _signature(text: str) -> tuple[str, bytes]:
    from thresher.curate import Deduplicator

    return Deduplicator().keys(Conversation(messages=[Message("user", text)]))


def _band_rows(store: Store) -> dict[str, int]:
    with store.engine.connect() as c:
        return dict(c.execute(sa.text("SELECT conversation_id, count(*) FROM dedup_bands GROUP BY conversation_id"))
                    .all())


def test_the_dedup_index_follows_publication_states(store: Store) -> None:
    """Band rows exist exactly for publications accepted or published with a signature: a takedown, a withdrawn
    consent or a deleted conversation takes them out."""
    from thresher.curate import BANDS, band_keys
    from thresher.store import Publication

    convs = [store.create(Conversation(messages=[Message("user", f"question {i}")])) for i in range(3)]
    keys = [_signature(text) for text in ("why do rivers meander across flat plains", "what pulls the tides twice a "
                                          "day", "how far away is the moon from the earth")]
    store.set_publications([Publication(c.id, "accepted", dedup_hash=h, minhash=sig)
                            for c, (h, sig) in zip(convs, keys, strict=True)])
    assert _band_rows(store) == {c.id: BANDS for c in convs}
    store.set_publications([Publication(c.id, "published", commit_sha="abc") for c in convs])  # keys are kept
    assert _band_rows(store) == {c.id: BANDS for c in convs}
    h, sig = keys[0]
    assert store.dedup_by_hash([h, "0" * 64]) == {h: convs[0].id}
    found = store.dedup_by_band(band_keys(sig))
    assert {cid for _, cid, _ in found} == {convs[0].id} and all(s == sig for *_, s in found)

    store.set_publication(Publication(convs[0].id, "taken_down", "asked by its owner"))
    store.set_publication(Publication(convs[1].id, "rejected", "owner withdrew consent"))
    assert _band_rows(store) == {convs[2].id: BANDS}
    assert store.dedup_by_hash([h]) == {} and store.dedup_by_band(band_keys(sig)) == []

    fresh = store.create(Conversation(messages=[Message("user", "another")]))
    store.set_publication(Publication(fresh.id, "accepted", dedup_hash=h, minhash=sig))  # a copy, being published
    assert store.dedup_by_hash([h]) == {h: fresh.id}
    assert store.delete(fresh.id) is True  # accepted is not locked yet: its owner may still delete it
    assert _band_rows(store) == {convs[2].id: BANDS}


def test_migration_0007_indexes_the_signatures_already_kept(store_url: str) -> None:
    from thresher.curate import BANDS

    st = _store_at_revision(store_url, "0006")
    now = utcnow()
    h, sig = _signature("how do owls see at night with such large eyes")
    with st.engine.begin() as conn:
        for cid, state, keys in (("C1", "published", (h, sig)), ("C2", "published", (None, None)),
                                 ("C3", "taken_down", (h, sig)), ("C4", "rejected", (None, None))):
            conn.execute(sa.text(
                "INSERT INTO conversations (id, created_at, updated_at, status, publish_allowed, licence, source)"
                " VALUES (:c, :t, :t, :s, false, 'CC0', 'web')"), {"c": cid, "t": now, "s": state})
            conn.execute(sa.text(
                "INSERT INTO publications (conversation_id, state, pushed, dedup_hash, minhash, created_at, updated_at)"
                " VALUES (:c, :s, true, :h, :m, :t, :t)"), {"c": cid, "s": state, "h": keys[0], "m": keys[1], "t": now})
    st.migrate()
    assert _band_rows(st) == {"C1": BANDS}
    assert st.missing_dedup_keys() == [("C2", None)]  # left for publishing to backfill from its file
    insp = sa.inspect(st.engine)
    assert {"ix_publications_dedup_hash", "ix_publications_recent", "ix_publications_unpushed"} <= {
        i["name"] for i in insp.get_indexes("publications")}
    st.close()
