"""Small builders shared by several test modules: conversations in the store, and real git."""

from __future__ import annotations

import subprocess
from pathlib import Path

from thresher.conversation import Conversation, Message
from thresher.judge import Judgment
from thresher.store import Store

TOPICS = ["tea", "rivers", "prime numbers", "bicycles", "volcanoes", "owls", "bread", "comets", "chess", "glass",
          "tides", "maps"]


def ended_conversations(store: Store, n: int) -> list[str]:
    """n ended, publishable two-turn conversations; returns their ids in the order they ended."""
    ids = []
    for i in range(n):
        topic = TOPICS[i % len(TOPICS)]
        conv = store.create(Conversation(messages=[
            Message("user", f"Tell me one fact about {topic}."),
            Message("assistant", f"Here is a fact about {topic}: it has been studied for centuries."),
        ], publish_allowed=True))
        store.end(conv.id, "button")
        ids.append(conv.id)
    return ids


def judged(store: Store, user: str, answer: str, score: float, *, allowed: bool = True, status: str = "ok",
           flags: list[str] | None = None, rationale: str | None = None) -> str:
    """An ended two-turn conversation judged by "judge@1"; returns its id."""
    conv = store.create(Conversation(messages=[Message("user", user), Message("assistant", answer)],
                                     publish_allowed=allowed, client_hash="c" * 32, model_version="m@1"))
    store.end(conv.id, "button")
    store.save_judgment(conv.id, Judgment(score=score, status=status, judge_id="judge@1", rubric_hash="r1",
                                          flags=flags or [], rationale=rationale))
    return conv.id


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()


def bare_remote(path: Path) -> Path:
    """An empty bare repository on `main`: the stand-in for a public git host."""
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(path)], check=True)
    return path
