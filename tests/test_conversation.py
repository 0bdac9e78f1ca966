"""The Conversation type: OpenAI message validation, ids and the stable hash."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from thresher.conversation import Conversation, InvalidConversation, Message, messages_from_openai, messages_hash


def test_messages_from_openai_accepts_strings_and_text_parts() -> None:
    msgs = messages_from_openai([
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Hello"}, {"type": "image_url", "image_url": {}}]},
    ])
    assert [(m.role, m.content) for m in msgs] == [("system", "Be brief."), ("user", "Hello")]


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        ([], "non-empty"),
        ("hi", "non-empty"),
        ([{"role": "tool", "content": "x"}], "role"),
        ([{"role": "user"}], "no content"),
        ([{"role": "user", "content": 5}], "string or a list"),
        ([{"role": "user", "content": [{"text": "x"}]}], "type"),
        ([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}], "last message"),
        ([{"role": "user", "content": "   "}], "empty"),
        (["hi"], "object"),
    ],
)
def test_bad_messages_are_clear_errors(raw, match) -> None:
    with pytest.raises(InvalidConversation, match=match):
        messages_from_openai(raw)


def test_ids_are_unique_and_sortable() -> None:
    a, b = Conversation(), Conversation()
    assert a.id != b.id and len(a.id) == 26


@given(st.lists(st.tuples(st.sampled_from(["system", "user", "assistant"]), st.text()), max_size=6))
def test_hash_depends_only_on_roles_and_contents(pairs) -> None:
    msgs = [{"role": r, "content": c} for r, c in pairs]
    conv = Conversation(messages=[Message(r, c) for r, c in pairs])  # type: ignore[arg-type]
    assert conv.content_hash() == messages_hash(msgs)
    if msgs:
        changed = [*msgs[:-1], {"role": msgs[-1]["role"], "content": msgs[-1]["content"] + "x"}]
        assert messages_hash(changed) != messages_hash(msgs)


def test_a_record_is_what_the_file_holds_and_reads_back_the_same() -> None:
    from thresher.conversation import RECORD_SCHEMA, Record
    from thresher.judge import Judgment

    conv = Conversation(messages=[Message("user", "What is a tide?"), Message("assistant", "The sea rising.")],
                        model_version="m-1", licence="CC0-1.0", source="web", owner_hash="secret-owner",
                        client_hash="secret-client")
    judgment = Judgment(score=8.123456, status="ok", judge_id="head-x", rubric_hash="r1", flags=["long"])
    rec = conv.to_record(judgment, rationale="Fine.", threshold=7.5, feedback=[{"message": 2, "rating": "up"}])
    data = rec.to_json()
    assert data["schema"] == RECORD_SCHEMA and data["score"] == 8.1235 and data["threshold"] == 7.5
    assert "pairs" not in data  # present only when there are any
    assert not any("secret" in str(v) for v in data.values())  # no owner or client hash leaves the machine
    back = Record.from_json(data)
    assert back == rec and back.conversation().to_openai() == conv.to_openai()
    assert back.training_json() == {"id": conv.id, "messages": conv.to_openai()}
    older = {k: v for k, v in data.items() if k not in ("schema", "threshold")}  # a file from before either field
    assert Record.from_json({**older, "added_later": 1}).schema == RECORD_SCHEMA


@pytest.mark.parametrize("data, why", [
    ([], "JSON object"),
    ({"messages": [{"role": "user", "content": "hi"}]}, "no 'id'"),
    ({"id": "c1", "messages": []}, "non-empty list"),
    ({"id": "c1", "messages": [{"role": "robot", "content": "hi"}]}, "messages[0]"),
    ({"id": "c1", "messages": [{"role": "user", "content": None}]}, "messages[0]"),
])
def test_a_broken_record_says_what_is_wrong(data, why: str) -> None:
    from thresher.conversation import InvalidRecord, Record

    with pytest.raises(InvalidRecord, match=re.escape(why)):
        Record.from_json(data)


def test_the_status_type_knows_every_move_and_refuses_others() -> None:
    from thresher import stats
    from thresher.conversation import LOCKED, TRANSITIONS, Status

    assert set(TRANSITIONS) == set(Status) and set(stats.STATUSES) == set(Status)  # nothing left undescribed
    assert Status.move("open", "ended") == Status.ENDED and Status.move("judged", "judged") == "judged"
    for old, new in [("open", "published"), ("published", "accepted"), ("taken_down", "published"),
                     ("published", "open")]:
        with pytest.raises(ValueError, match=f"from {old} to {new}"):
            Status.move(old, new)
    assert Status.TAKEN_DOWN not in Status.sources("published") and "published" in LOCKED
    assert not TRANSITIONS[Status.TAKEN_DOWN]  # a takedown is final


def test_curation_moves_a_status_only_where_the_transitions_allow(store) -> None:
    from thresher.store import Publication

    conv = store.create(Conversation(messages=[Message("user", "hi"), Message("assistant", "hello")],
                                     publish_allowed=True))
    store.set_publications([Publication(conv.id, "accepted")])
    assert store.get(conv.id).status == "open"  # an open conversation is not curation's yet
    store.end(conv.id, "button")
    store.set_publications([Publication(conv.id, "published")])
    assert store.get(conv.id).status == "published"
    store.set_publications([Publication(conv.id, "accepted")])
    assert store.get(conv.id).status == "published"  # never back from published but by a takedown
    store.set_publications([Publication(conv.id, "taken_down")])
    assert store.get(conv.id).status == "taken_down"
