"""The store's own record types and errors: what its methods take and return besides the core types of
`thresher.conversation` (Conversation, Judgment, Review, Correction), which are named here too."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from thresher.conversation import Correction, Review  # noqa: F401  (named here too)


class NotFound(LookupError):
    """No conversation with that id."""


class PublishLocked(ValueError):
    """The conversation is published or being published: its owner's switch no longer changes anything (a takedown
    does)."""


# Curation's reasons for a rejection that only the owner's choice caused; a later yes undoes them.
CONSENT_REJECTIONS = ("owner opted out", "owner withdrew consent")



@dataclass
class Publication:
    conversation_id: str
    state: str
    reason: str | None = None
    path: str | None = None
    commit_sha: str | None = None
    pushed: bool = False
    score: float | None = None
    judge_id: str | None = None
    pii_counts: dict[str, int] | None = None
    dedup_hash: str | None = None
    minhash: bytes | None = None
    threshold: float | None = None  # the acceptance threshold curation decided at



RATINGS = ("up", "down")
ROOT = 0  # `append(after=ROOT)`: a new first message (row ids start at 1)


@dataclass
class Feedback:
    """A reader's rating of one reply: stored with the conversation, shown to reviewers, and available to the
    judge's training."""

    conversation_id: str
    message_id: int
    rating: str  # up | down
    reason: str | None = None
    position: int | None = None  # where the reply is in the conversation's current branch; None: another branch


@dataclass
class ReplyVersion:
    """One version of a reply (the first, or one regenerated): its text, status, its owner's rating, and whether it
    is the version the conversation's current branch keeps."""

    content: str
    status: str
    rating: str | None
    kept: bool


@dataclass
class Turn:
    """One message of a conversation's current branch as its owner's page shows it: with its id, the ids of the
    other versions at the same place (regenerated replies, edited messages; oldest first, itself included), and the
    owner's rating."""

    id: int
    parent_id: int | None
    role: str
    content: str
    status: str
    finish_reason: str | None
    versions: list[int]
    feedback: Feedback | None = None
    created_at: datetime | None = None


@dataclass
class Summary:
    """A line of an owner's conversation list."""

    id: str
    title: str
    updated_at: datetime
    ended: bool
    publish_allowed: bool
    status: str
    created_at: datetime | None = None
    renamed: bool = False  # the title is the owner's own, not the first message
