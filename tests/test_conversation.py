"""The Conversation type: OpenAI message validation, ids and the stable hash."""

from __future__ import annotations

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
