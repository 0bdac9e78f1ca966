"""The worker that turns the loop. So far: judge every ended conversation once per judge version.

Each conversation's judgment is committed on its own, so a worker killed mid-batch loses at most the conversation it
was judging, and running it again continues with the rest.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from thresher.judge import Judge
from thresher.store import Store

log = logging.getLogger("thresher.flywheel")


def judge_pending(
    store: Store,
    judge: Judge,
    limit: int | None = None,
    on_judged: Callable[[str, object], None] | None = None,
    batch: int = 16,
) -> int:
    """Judge ended, not-opted-out conversations this judge version has not judged yet; returns how many."""
    done = 0
    failed: set[str] = set()  # engine failures are stored and retried on the next run, not again in this one
    while limit is None or done < limit:
        todo = store.pending_judgment(judge.judge_id, judge.rubric_hash,
                                      len(failed) + (batch if limit is None else min(batch, limit - done)))
        todo = [c for c in todo if c.id not in failed]
        if not todo:
            break
        for conv in todo:
            judgment = judge.judge(conv.to_openai())
            store.save_judgment(conv.id, judgment)
            done += 1
            if judgment.status == "failed":
                failed.add(conv.id)
            log.info("judged %s: %s %s", conv.id, judgment.status,
                     "-" if judgment.score is None else f"{judgment.score:.2f}")
            if on_judged is not None:
                on_judged(conv.id, judgment)
    return done
