"""The chat service: the user's message is committed before generation, replies are saved as they grow, and a
stopped or cut-off reply keeps its partial text."""

from __future__ import annotations

import threading

import pytest
from conftest import ScriptedEngine

from thresher.chat import ChatService
from thresher.conversation import COMPLETE, INTERRUPTED, STREAMING, Message
from thresher.engines import ChatParams, EngineError
from thresher.store import Store


def test_user_message_committed_before_generation(store: Store) -> None:
    engine = ScriptedEngine()
    chat = ChatService(store, engine)
    opened = chat.open([Message("user", "Hi")], client_hash="c", source="api")
    conv = store.get(opened.conversation_id)
    assert [(m.role, m.content) for m in conv.messages] == [("user", "Hi")]
    assert engine.prompts == []  # nothing generated yet
    reply = chat.reply(opened.conversation_id, ChatParams())
    first = next(reply)
    # Mid-stream the reply exists in the store, marked streaming.
    assert store.get(opened.conversation_id).messages[-1].status == STREAMING
    rest = list(reply)
    text = first.text + "".join(c.text for c in rest)
    last = store.get(opened.conversation_id).messages[-1]
    assert (last.content, last.status, last.finish_reason) == (text, COMPLETE, "stop")
    assert rest[-1].completion_tokens == 5


def test_closing_the_stream_keeps_partial_reply(store: Store) -> None:
    chat = ChatService(store, ScriptedEngine())
    cid = chat.open([Message("user", "Hi")], client_hash="c", source="web").conversation_id
    reply = chat.reply(cid, ChatParams())
    assert next(reply).text == "Hello"
    assert next(reply).text == " there"
    reply.close()
    last = store.get(cid).messages[-1]
    assert (last.content, last.status, last.finish_reason) == ("Hello there", INTERRUPTED, "interrupted")


def test_cancel_event_stops_generation(store: Store) -> None:
    chat = ChatService(store, ScriptedEngine(words=[f"w{i} " for i in range(50)]))
    cid = chat.open([Message("user", "Hi")], client_hash="c", source="web").conversation_id
    cancel = threading.Event()
    got = []
    for chunk in chat.reply(cid, ChatParams(), cancel):
        got.append(chunk.text)
        if len(got) == 3:
            cancel.set()
    assert got == ["w0 ", "w1 ", "w2 "]
    assert store.get(cid).messages[-1].status == INTERRUPTED


def test_interrupted_reply_is_part_of_the_next_prompt(store: Store) -> None:
    engine = ScriptedEngine()
    chat = ChatService(store, engine)
    cid = chat.open([Message("user", "Hi")], client_hash="c", source="web").conversation_id
    reply = chat.reply(cid, ChatParams())
    next(reply)
    reply.close()
    chat.add_user_message(cid, "Go on")
    list(chat.reply(cid, ChatParams()))
    assert engine.prompts[-1] == [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
                                  {"role": "user", "content": "Go on"}]


def test_engine_failure_before_the_first_token_is_recorded(store: Store) -> None:
    class Refusing(ScriptedEngine):
        def stream_chat(self, messages, params):
            raise EngineError("the prompt is too long")

    chat = ChatService(store, Refusing())
    cid = chat.open([Message("user", "Hi")], client_hash="c", source="api").conversation_id
    with pytest.raises(EngineError):
        list(chat.reply(cid, ChatParams()))
    last = store.get(cid).messages[-1]
    assert (last.role, last.content, last.status) == ("assistant", "", INTERRUPTED)


def test_regenerate_edit_and_continue_keep_every_version(store: Store) -> None:
    from thresher.chat import ConversationEnded, NotOnBranch

    engine = ScriptedEngine()
    chat = ChatService(store, engine)
    cid = chat.open([Message("user", "Hi")], client_hash="c", source="web").conversation_id
    list(chat.reply(cid, ChatParams(max_tokens=2)))  # cut off by length
    _, (user, first) = store.thread(cid)
    assert (first.content, first.finish_reason) == ("Hello there", "length")

    # Continue: the same message grows; the model was given its cut-off reply as the start of its turn.
    list(chat.continue_reply(cid, first.id, ChatParams()))
    _, (_, grown) = store.thread(cid)
    assert grown.id == first.id and grown.content == "Hello there" + "Hello there, friend."
    assert grown.status == COMPLETE and engine.prompts[-1] == [{"role": "user", "content": "Hi"}]
    assert engine.prefixes[-1] == "Hello there"

    # Regenerate: another version of the reply to the same message; the first is kept.
    list(chat.reply(cid, ChatParams(), after=chat.regenerate_after(cid, grown.id)))
    _, (_, again) = store.thread(cid)
    assert again.versions == [first.id, again.id] and engine.prompts[-1] == [{"role": "user", "content": "Hi"}]

    # Edit: another version of the user's message, answered on its own branch.
    edited = chat.edit(cid, user.id, "Hello!")
    list(chat.reply(cid, ChatParams()))
    conv, turns = store.thread(cid)
    assert [m.content for m in conv.messages] == ["Hello!", "Hello there, friend."]
    assert turns[0].versions == [user.id, edited] and turns[1].versions == [turns[1].id]
    assert engine.prompts[-1] == [{"role": "user", "content": "Hello!"}]

    with pytest.raises(NotOnBranch):
        chat.edit(cid, turns[1].id, "not mine")  # a reply is not the user's message
    with pytest.raises(NotOnBranch):
        chat.continue_reply(cid, first.id, ChatParams())  # not on the current branch
    chat.end(cid, "button")
    with pytest.raises(ConversationEnded):
        chat.edit(cid, edited, "too late")
