"""Chatting: keep every turn in the store while the engine answers.

`ChatService.open` finds or starts the conversation a request belongs to (stateless API clients send the whole
history, so a request that extends an open conversation of the same owner and source continues it) and commits the
user's message before anything is generated. `ChatService.reply` streams the assistant's answer and saves it as it
grows: on completion it is marked complete; on a stop, a disconnect or a crash the partial text stays, marked
interrupted.

The chat page also branches: `reply(after=...)` writes another version of a reply (the earlier ones are kept),
`edit` adds another version of a user message, and `continue_reply` extends a reply that was cut off.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace

from thresher.conversation import COMPLETE, INTERRUPTED, STREAMING, Conversation, Message
from thresher.engines import ChatParams, Chunk, Engine
from thresher.store import ROOT, Store, Turn

FLUSH_SECONDS = 0.5  # how often a growing reply is written to the store (what survives a SIGKILL)


class ConversationEnded(ValueError):
    """The conversation was ended; a new message needs a new conversation."""


class NotOnBranch(ValueError):
    """The message named is not one this action applies to on the conversation's current branch."""


@dataclass
class Opened:
    conversation_id: str
    continued: bool


Started = tuple["ReplyRecord", list[dict[str, str]], ChatParams]  # a reply stored, its prompt, its sampling


class ChatService:
    def __init__(self, store: Store, engine: Engine, licence: str = "CC-BY-4.0") -> None:
        self.store = store
        self.engine = engine
        self.licence = licence

    def open(
        self,
        messages: list[Message],
        *,
        client_hash: str | None,
        source: str,
        publish_allowed: bool = False,
        owner_hash: str | None = None,
        stitch: bool = True,
    ) -> Opened:
        """Attach a request's messages (ending with a user message) to a conversation and commit the last one.
        With `stitch` off (the web page: its new chats are always new) no earlier conversation is continued."""
        earlier, last = messages[:-1], messages[-1]
        conv_id = None
        if earlier and stitch:
            conv_id = self.store.find_continuation(source, owner_hash, [m.to_openai() for m in earlier])
        if conv_id is not None:
            self.store.append(conv_id, last)
            return Opened(conv_id, continued=True)
        conv = Conversation(
            messages=[*earlier, last],
            source=source,
            client_hash=client_hash,
            owner_hash=owner_hash,
            publish_allowed=publish_allowed,
            licence=self.licence,
            model_version=self.engine.version,
        )
        self.store.create(conv)
        return Opened(conv.id, continued=False)

    def add_user_message(self, conv_id: str, text: str) -> None:
        conv = self.store.get(conv_id)
        if conv.ended:
            raise ConversationEnded(conv_id)
        self.store.append(conv_id, Message(role="user", content=text))

    def _turn(self, conv_id: str, message_id: int, role: str) -> Turn:
        conv, turns = self.store.thread(conv_id)
        if conv.ended:
            raise ConversationEnded(conv_id)
        turn = next((t for t in turns if t.id == message_id), None)
        if turn is None or turn.role != role:
            raise NotOnBranch(f"message {message_id} is not a {role} message of this conversation's current branch")
        return turn

    def edit(self, conv_id: str, message_id: int, text: str) -> int:
        """Another version of one of the user's messages, starting a new branch there; returns its id."""
        turn = self._turn(conv_id, message_id, "user")
        return self.store.append(conv_id, Message(role="user", content=text), after=turn.parent_id or ROOT)

    def regenerate_after(self, conv_id: str, message_id: int) -> int:
        """The user message a new version of reply `message_id` answers (for `reply(after=...)`)."""
        turn = self._turn(conv_id, message_id, "assistant")
        if turn.parent_id is None:
            raise NotOnBranch("this reply answers no message")
        return turn.parent_id

    def reply(
        self, conv_id: str, params: ChatParams, cancel: threading.Event | None = None, after: int | None = None
    ) -> Iterator[Chunk]:
        """Stream the assistant's answer to the conversation so far (or to the branch ending at message `after`:
        another version of the reply that follows it), saving it as it grows.

        Setting `cancel` (or closing the iterator) stops generation; the partial answer is kept as interrupted."""
        return self.stream(*self.start_reply(conv_id, params, after), cancel)

    def continue_reply(
        self, conv_id: str, message_id: int, params: ChatParams, cancel: threading.Event | None = None
    ) -> Iterator[Chunk]:
        """Extend the last reply (one that was stopped or ran out of length) in place: the engine is given the
        cut-off text as the start of its own turn (`ChatParams.prefix`) and writes what follows, which is appended
        to the same message."""
        return self.stream(*self.start_continue(conv_id, message_id, params), cancel)

    # What `reply` and `continue_reply` do in two halves, for a caller that reads the engine itself (the server,
    # from its event loop): the reply stored and what the engine is to answer, then the engine's chunks, kept.

    def start_reply(self, conv_id: str, params: ChatParams, after: int | None = None) -> Started:
        msg_id = self.store.append(conv_id, Message(role="assistant", content="", status=STREAMING), after=after)
        conv = self.store.get(conv_id)
        prompt = [m.to_openai() for m in conv.messages if m.content or m.role != "assistant"]
        return ReplyRecord(self.store, msg_id), prompt, params

    def start_continue(self, conv_id: str, message_id: int, params: ChatParams) -> Started:
        conv, turns = self.store.thread(conv_id)
        if conv.ended:
            raise ConversationEnded(conv_id)
        if not turns or turns[-1].id != message_id or turns[-1].role != "assistant":
            raise NotOnBranch("only the last reply of the current branch can be continued")
        if turns[-1].status == STREAMING:
            raise NotOnBranch("this reply is still being written")
        prompt = [m.to_openai() for m in conv.messages[:-1]]
        self.store.update_reply(message_id, turns[-1].content, STREAMING)
        return (ReplyRecord(self.store, message_id, turns[-1].content), prompt,
                replace(params, prefix=turns[-1].content))

    def stream(
        self, record: ReplyRecord, prompt: list[dict[str, str]], params: ChatParams,
        cancel: threading.Event | None = None,
    ) -> Iterator[Chunk]:
        """The engine's reply to `prompt`, kept in `record` as it grows; see `reply`."""
        stream: Iterator[Chunk] | None = None
        try:
            stream = self.engine.stream_chat(prompt, params)
            for chunk in stream:
                if record.add(chunk):
                    record.save()
                if chunk.text or chunk.waiting is not None:  # waiting: how many requests are ahead of this one
                    yield chunk
                if cancel is not None and cancel.is_set():
                    break
        finally:
            close = getattr(stream, "close", None)  # an engine may hand back a plain iterator
            if close is not None:
                close()
            record.close()
        if record.final is not None:
            yield record.final

    def end(self, conv_id: str, reason: str) -> Conversation:
        return self.store.end(conv_id, reason)


class ReplyRecord:
    """An assistant reply being saved as it streams: every FLUSH_SECONDS while it grows (what survives a SIGKILL),
    and once at the end, complete with its finish reason and token counts, or interrupted if no last chunk came."""

    def __init__(self, store: Store, message_id: int, text: str = "") -> None:
        self.store, self.message_id, self.text = store, message_id, text
        self.final: Chunk | None = None
        self._saved = time.monotonic()

    def add(self, chunk: Chunk) -> bool:
        """Take the next chunk; True when the text so far is due to be saved (`save`)."""
        if chunk.finish_reason is not None:
            self.final = chunk
        if not chunk.text:
            return False
        self.text += chunk.text
        return time.monotonic() - self._saved >= FLUSH_SECONDS

    def save(self) -> None:
        self.store.update_reply(self.message_id, self.text)
        self._saved = time.monotonic()

    def close(self) -> None:
        final = self.final
        if final is not None:
            self.store.update_reply(self.message_id, self.text, COMPLETE, final.finish_reason, final.prompt_tokens,
                                    final.completion_tokens)
        else:
            self.store.update_reply(self.message_id, self.text, INTERRUPTED, "interrupted")
