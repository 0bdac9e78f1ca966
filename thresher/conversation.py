"""The one data type that flows through thresher: a `Conversation` of `Message`s, and its published `Record`.

The same object goes from the HTTP request to the store, the judge, the dataset and the training example; once
published it is a `Record` (`Conversation.to_record`), the one schema of a file in the public dataset, read back
with `Record.from_json` wherever a published file or a dataset build's line is read. This module also owns ids
(ULID), the stable content hash used to stitch stateless API requests together, and the conversions to and from
the OpenAI message shape.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Literal

from ulid import ULID

Role = Literal["system", "user", "assistant"]
ROLES: tuple[str, ...] = ("system", "user", "assistant")

# Message status: a finished turn, a reply being generated right now, or one cut off (stop, disconnect, crash).
COMPLETE, STREAMING, INTERRUPTED = "complete", "streaming", "interrupted"


class Status(StrEnum):
    """Where a conversation stands, in the order it passes through: the one status type (stored as its text).
    `TRANSITIONS` lists every change the store makes; `Status.move` checks one."""

    OPEN = "open"  # being chatted in
    ENDED = "ended"  # ended, not judged yet
    JUDGED = "judged"  # judged, not curated yet
    ACCEPTED = "accepted"  # chosen by curation, its file not committed yet
    PUBLISHING = "publishing"  # claimed for publishing: the owner's switch is locked
    PUBLISHED = "published"
    REJECTED = "rejected"  # turned away by curation (the reason is kept with the publication)
    TAKEN_DOWN = "taken_down"

    @staticmethod
    def move(old: str, new: str) -> Status:
        """`new`, if a conversation may go there from `old` (or stays where it is); ValueError otherwise."""
        if new != old and Status(new) not in TRANSITIONS[Status(old)]:
            raise ValueError(f"a conversation cannot go from {old} to {new}")
        return Status(new)

    @staticmethod
    def sources(new: str) -> list[Status]:
        """Every status a conversation may reach `new` from (itself included)."""
        return [old for old, to in TRANSITIONS.items() if Status(new) in to or old == new]


# What curation decides (a publication's state); the conversation's status follows it.
_DECIDED = frozenset({Status.ACCEPTED, Status.PUBLISHED, Status.REJECTED, Status.TAKEN_DOWN})
TRANSITIONS: dict[Status, frozenset[Status]] = {
    Status.OPEN: frozenset({Status.ENDED}),
    Status.ENDED: frozenset({Status.JUDGED}) | _DECIDED,
    Status.JUDGED: _DECIDED,
    Status.ACCEPTED: frozenset({Status.PUBLISHING}) | _DECIDED,  # published at once: a crash's leftovers
    Status.PUBLISHING: _DECIDED,  # rejected: the owner withdrew before the claim
    Status.PUBLISHED: frozenset({Status.TAKEN_DOWN}),
    # A later yes from the owner undoes a rejection for want of consent, and curation decides again.
    Status.REJECTED: frozenset({Status.JUDGED, Status.ENDED, Status.OPEN}) | _DECIDED,
    Status.TAKEN_DOWN: frozenset(),
}
# The owner's publishing choice no longer changes what happens in these.
LOCKED = frozenset({Status.PUBLISHING, Status.PUBLISHED, Status.TAKEN_DOWN})


class InvalidConversation(ValueError):
    """Messages that cannot form a conversation (bad role, empty content, wrong shape)."""


def new_id() -> str:
    return str(ULID())


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class Message:
    role: Role
    content: str
    status: str = COMPLETE
    finish_reason: str | None = None
    created_at: datetime = field(default_factory=utcnow)

    def to_openai(self) -> dict[str, str]:
        return {"role": self.role, "content": self.content}


@dataclass
class Conversation:
    id: str = field(default_factory=new_id)
    messages: list[Message] = field(default_factory=list)
    created_at: datetime = field(default_factory=utcnow)
    updated_at: datetime = field(default_factory=utcnow)
    ended_at: datetime | None = None
    end_reason: str | None = None
    status: str = Status.OPEN
    publish_allowed: bool = False  # nothing is published without its owner's affirmative choice
    licence: str = "CC-BY-4.0"
    model_version: str | None = None
    client_hash: str | None = None
    owner_hash: str | None = None
    source: str = "api"

    @property
    def ended(self) -> bool:
        return self.ended_at is not None

    def to_openai(self) -> list[dict[str, str]]:
        return [m.to_openai() for m in self.messages]

    def content_hash(self) -> str:
        return messages_hash(self.to_openai())

    def to_record(self, judgment: Judgment, *, rationale: str | None = None, threshold: float | None = None,
                  feedback: list[dict[str, Any]] | None = None, pairs: list[dict[str, Any]] | None = None,
                  published_at: str | None = None) -> Record:
        """The conversation as published, with the judgment that chose it. Its
        messages go as they are: scrub them first. No client or owner hash ever leaves the machine."""
        return Record(
            id=self.id, messages=self.to_openai(), feedback=list(feedback or []), pairs=list(pairs or []),
            score=None if judgment.score is None else round(judgment.score, 4),
            distribution=judgment.distribution, rationale=rationale, threshold=threshold, flags=list(judgment.flags),
            judge=judgment.judge_id, rubric=judgment.rubric_hash, model=self.model_version, licence=self.licence,
            source=self.source, created_at=self.created_at.isoformat(),
            published_at=published_at or utcnow().isoformat(timespec="seconds"))


# --------------------------------------------------------------------------- what is said of a conversation

OK, FLAGGED, UNPARSEABLE, FAILED = "ok", "flagged", "unparseable", "failed"  # a judgment's status
BLOCKING_FLAG = "injection:"  # a flag that begins so names text aimed at the evaluator: never accepted


def _rating_rubric() -> str:
    from thresher.judge import RUBRIC_HASH  # the rating judge's prompt, which it is the default for

    return RUBRIC_HASH


@dataclass
class Judgment:
    """A judge's verdict on one conversation as fine-tuning data."""

    score: float | None  # expected rating, 1-10; None when the judge gave none
    status: str  # ok | flagged (kept for a human) | unparseable | failed
    judge_id: str
    rubric_hash: str = field(default_factory=_rating_rubric)
    distribution: dict[str, float] | None = None  # "1".."10" -> probability, one-pass only
    rationale: str | None = None
    flags: list[str] = field(default_factory=list)
    method: str = "probabilities"  # or "generated"
    error: str | None = None
    created_at: datetime = field(default_factory=utcnow)

    def accepted(self, threshold: float) -> bool:
        return self.score is not None and self.score >= threshold and not any(
            f.startswith(BLOCKING_FLAG) for f in self.flags)


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


# --------------------------------------------------------------------------- the published file

RECORD_SCHEMA = 1  # the version of the published file's fields; a file without one is version 1


class InvalidRecord(InvalidConversation):
    """A published file (or a dataset build's line) that does not hold a conversation record."""


@dataclass
class Record:
    """A published conversation: one file `conversations/YYYY/MM/DD/<id>.json` of the public dataset (its fields
    are listed in the dataset card), and what a dataset build's lines and training read back. Written by
    `Conversation.to_record` and read by `Record.from_json`, nowhere else."""

    id: str
    messages: list[dict[str, str]]  # role and content, scrubbed
    feedback: list[dict[str, Any]] = field(default_factory=list)  # the user's thumbs on replies (scrubbed reasons)
    pairs: list[dict[str, Any]] = field(default_factory=list)  # preference pairs between versions of a reply
    score: float | None = None
    distribution: Any = None
    rationale: str | None = None
    threshold: float | None = None  # the acceptance threshold it was published at
    flags: list[str] = field(default_factory=list)
    judge: str | None = None
    rubric: str | None = None
    model: str | None = None
    licence: str | None = None
    source: str | None = None
    created_at: str | None = None
    published_at: str | None = None
    schema: int = RECORD_SCHEMA

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "messages": self.messages, "feedback": self.feedback}
        if self.pairs:
            out["pairs"] = self.pairs
        out.update(score=self.score, distribution=self.distribution, rationale=self.rationale,
                   threshold=self.threshold, flags=self.flags, judge=self.judge, rubric=self.rubric, model=self.model,
                   licence=self.licence, source=self.source, created_at=self.created_at,
                   published_at=self.published_at, schema=self.schema)
        return out

    def training_json(self) -> dict[str, Any]:
        """What a dataset build keeps of it, one line each: id, messages, and its preference pairs if any."""
        return {"id": self.id, "messages": self.messages, **({"pairs": self.pairs} if self.pairs else {})}

    @classmethod
    def from_json(cls, data: Any) -> Record:
        """A record from a parsed file; a reviewer's edit may have broken it, so it is checked: InvalidRecord says
        what is wrong. Fields a later schema added are ignored; ones it lacks take their defaults."""
        if not isinstance(data, dict):
            raise InvalidRecord("a conversation record must be a JSON object")
        if not isinstance(data.get("id"), str) or not data["id"]:
            raise InvalidRecord("the record has no 'id'")
        raw = data.get("messages")
        if not isinstance(raw, list) or not raw:
            raise InvalidRecord("'messages' must be a non-empty list")
        messages = []
        for i, m in enumerate(raw):
            if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
                raise InvalidRecord(f"messages[{i}] must have a role (system, user, assistant) and a text content")
            messages.append({"role": m["role"], "content": m["content"]})
        known = {f: data[f] for f in cls.__dataclass_fields__ if f in data and f not in ("id", "messages")}
        for name in ("feedback", "pairs", "flags"):
            if not isinstance(known.get(name, []), list):
                known.pop(name)
        return cls(id=data["id"], messages=messages, **known)

    def conversation(self) -> Conversation:
        """The conversation it records (messages, model, licence, source; times are not kept)."""
        return Conversation(id=self.id, messages=[Message(m["role"], m["content"]) for m in self.messages],
                            licence=self.licence or "CC-BY-4.0", model_version=self.model, source=self.source or "api")


def _content_text(content: Any) -> str:
    """OpenAI content is a string or a list of parts; we keep the text parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if not isinstance(part, dict) or "type" not in part:
                raise InvalidConversation("each content part must be an object with a 'type'")
            if part["type"] == "text":
                if not isinstance(part.get("text"), str):
                    raise InvalidConversation("a text content part needs a string 'text'")
                texts.append(part["text"])
            # Other parts (images, audio) are not understood by a text model: dropped, not invented.
        return "\n".join(texts)
    raise InvalidConversation("message content must be a string or a list of content parts")


def messages_from_openai(raw: Any, *, user_last: bool = True) -> list[Message]:
    """Validate OpenAI-style messages and turn them into `Message`s (developer role is read as system).

    `user_last`: a chat request must end with the user's message; a finished transcript need not."""
    if not isinstance(raw, list) or not raw:
        raise InvalidConversation("'messages' must be a non-empty list")
    out: list[Message] = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict):
            raise InvalidConversation(f"messages[{i}] must be an object")
        role = item.get("role")
        if role == "developer":
            role = "system"
        if role not in ROLES:
            raise InvalidConversation(
                f"messages[{i}].role must be one of system, user, assistant (got {role!r})"
            )
        if "content" not in item or item["content"] is None:
            raise InvalidConversation(f"messages[{i}] has no content")
        try:
            text = _content_text(item["content"])
        except InvalidConversation as e:
            raise InvalidConversation(f"messages[{i}]: {e}") from None
        out.append(Message(role=role, content=text))
    if not user_last:
        if not any(m.content.strip() for m in out):
            raise InvalidConversation("every message is empty")
        return out
    if out[-1].role != "user":
        raise InvalidConversation("the last message must come from the user")
    if not out[-1].content.strip():
        raise InvalidConversation("the last user message is empty")
    return out


def messages_hash(messages: list[dict[str, str]]) -> str:
    """Stable hash of roles and contents, independent of ids, times and JSON formatting."""
    canonical = json.dumps([[m["role"], m["content"]] for m in messages], ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


# ---------------------------------------------------------------------------------------------- training formats
FORMATS = ("alpaca", "sharegpt", "messages")
_SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                   "chatgpt": "assistant", "bing": "assistant", "bard": "assistant", "system": "system"}


def from_alpaca(row: dict[str, Any]) -> list[dict[str, str]]:
    """An Alpaca row (instruction, optional input, output) as one user turn and one assistant turn."""
    instruction, output = row.get("instruction"), row.get("output")
    if not isinstance(instruction, str) or not instruction.strip() or not isinstance(output, str):
        raise InvalidConversation("an Alpaca row needs a non-empty 'instruction' and an 'output' string")
    extra = row.get("input") or ""
    if not isinstance(extra, str):
        raise InvalidConversation("an Alpaca row's 'input' must be a string")
    user = f"{instruction.strip()}\n\n{extra.strip()}" if extra.strip() else instruction.strip()
    return [{"role": "user", "content": user}, {"role": "assistant", "content": output.strip()}]


def to_alpaca(messages: list[dict[str, str]]) -> dict[str, str]:
    """The first user turn and the assistant's answer to it as an Alpaca row (later turns do not fit the format)."""
    users = [i for i, m in enumerate(messages) if m["role"] == "user"]
    if not users or users[0] + 1 >= len(messages) or messages[users[0] + 1]["role"] != "assistant":
        raise InvalidConversation("no user turn followed by an assistant answer")
    return {"instruction": messages[users[0]]["content"], "input": "", "output": messages[users[0] + 1]["content"]}


def from_sharegpt(row: dict[str, Any]) -> list[dict[str, str]]:
    """A ShareGPT row (`conversations`: [{from, value}]) as OpenAI-style messages."""
    turns = row.get("conversations")
    if not isinstance(turns, list) or not turns:
        raise InvalidConversation("a ShareGPT row needs a non-empty 'conversations' list")
    out = []
    for i, t in enumerate(turns):
        if not isinstance(t, dict) or t.get("from") not in _SHAREGPT_ROLES or not isinstance(t.get("value"), str):
            raise InvalidConversation(f"conversations[{i}] needs 'from' (human, gpt or system) and a 'value' string")
        out.append({"role": _SHAREGPT_ROLES[t["from"]], "content": t["value"]})
    return out


def to_sharegpt(messages: list[dict[str, str]]) -> dict[str, Any]:
    names = {"user": "human", "assistant": "gpt", "system": "system"}
    return {"conversations": [{"from": names[m["role"]], "value": m["content"]} for m in messages]}


def from_format(row: Any, fmt: str) -> list[dict[str, str]]:
    """One training row in `fmt` (alpaca, sharegpt or messages) as validated OpenAI-style messages that end with an
    assistant turn."""
    if not isinstance(row, dict):
        raise InvalidConversation("each row must be a JSON object")
    if fmt == "alpaca":
        messages = from_alpaca(row)
    elif fmt == "sharegpt":
        messages = from_sharegpt(row)
    elif fmt == "messages":
        messages = row.get("messages")
    else:
        raise InvalidConversation(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    checked = [m.to_openai() for m in messages_from_openai(messages, user_last=False)]
    if not any(m["role"] == "assistant" and m["content"].strip() for m in checked):
        raise InvalidConversation("no assistant message to learn from")
    return checked
