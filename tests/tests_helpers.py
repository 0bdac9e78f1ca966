"""Small builders shared by several test modules."""

from __future__ import annotations

from thresher.conversation import Conversation, Message
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
        ]))
        store.end(conv.id, "button")
        ids.append(conv.id)
    return ids
