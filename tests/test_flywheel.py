"""The judging worker: every ended, not-opted-out conversation judged once per judge version; a worker killed
with SIGKILL mid-batch loses nothing and continues; `thresher serve` judges in the background."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from conftest import LiveServer, ScriptedEngine
from tests_helpers import ended_conversations, git

from thresher.conversation import Conversation, Message
from thresher.flywheel import judge_pending
from thresher.judge import Judge, SwitchableJudge
from thresher.reward import Head, HeadJudge, features, fit_head
from thresher.store import Store


def test_judge_pending_judges_each_once(store: Store) -> None:
    ids = ended_conversations(store, 5)
    private = store.create(Conversation(messages=[Message("user", "secret")], publish_allowed=False))
    store.end(private.id, "button")
    judge = Judge(ScriptedEngine(), rationale="never")
    seen: list[str] = []
    assert judge_pending(store, judge, limit=2, on_judged=lambda cid, j: seen.append(cid)) == 2
    assert judge_pending(store, judge, on_judged=lambda cid, j: seen.append(cid)) == 3
    assert judge_pending(store, judge) == 0
    assert sorted(seen) == sorted(ids)
    assert store.judgments(private.id) == []  # opted out: never judged


def test_failed_judgments_are_retried_next_run(store: Store) -> None:
    from thresher.engines import EngineError

    class Flaky(ScriptedEngine):
        broken = True

        def next_token_probs(self, *a, **kw):
            if self.broken:
                raise EngineError("judge server down")
            return super().next_token_probs(*a, **kw)

    engine = Flaky()
    (cid,) = ended_conversations(store, 1)
    judge = Judge(engine, rationale="never")
    assert judge_pending(store, judge) == 1  # tried once, stored as failed, not looped on
    assert store.judgments(cid)[0].status == "failed"
    engine.broken = False
    assert judge_pending(store, judge) == 1
    assert [j.status for j in store.judgments(cid)] == ["ok"]


@pytest.mark.slow
def test_worker_killed_mid_batch_continues(tmp_path: Path) -> None:
    data = tmp_path / "data"
    st = Store(f"sqlite:///{data / 'thresher.db'}")
    st.migrate()
    ids = ended_conversations(st, 12)
    st.close()
    env = {k: v for k, v in os.environ.items() if not k.startswith("THRESHER_")}
    cmd = [sys.executable, "-m", "thresher", "judge", "--pending", "--data-dir", str(data), "--rationale", "never"]
    with open(tmp_path / "log", "wb") as log:
        proc = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
    db = sqlite3.connect(data / "thresher.db")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if db.execute("SELECT count(*) FROM judgments").fetchone()[0] >= 3:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    first = db.execute("SELECT count(*) FROM judgments").fetchone()[0]
    assert 3 <= first < 12, (tmp_path / "log").read_text()
    out = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert f"judged {12 - first} conversation(s)" in out.stderr
    rows = db.execute("SELECT conversation_id, count(*) FROM judgments GROUP BY conversation_id").fetchall()
    assert sorted(r[0] for r in rows) == sorted(ids) and all(n == 1 for _, n in rows)
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    db.close()


def test_serve_judges_ended_conversations_in_the_background(serve) -> None:
    engine = ScriptedEngine()
    with serve(engine, judge="serving", judge_interval_seconds=0.1) as srv:
        r = httpx.post(srv.url + "/v1/chat/completions",
                       headers={"X-Thresher-End": "true", "X-Thresher-Publish": "true"},
                       json={"model": "scripted", "messages": [{"role": "user", "content": "Hi"}]})
        cid = r.headers["x-thresher-conversation"]
        store = srv.server.config.app.state.rt.store
        deadline = time.monotonic() + 10
        while not store.judgments(cid) and time.monotonic() < deadline:
            time.sleep(0.05)
        judgments = store.judgments(cid)
    assert len(judgments) == 1 and judgments[0].score == pytest.approx(5.5)  # the scripted engine is uniform
    assert judgments[0].judge_id == "scripted@1"


def test_a_judge_without_a_server_follows_promotions(settings, tmp_path: Path) -> None:
    """What `thresher worker` does each tick: its judge switches to a promoted judge version, or (judge = serving)
    to the promoted chat model, and back on rollback."""
    from thresher.follow import ModelFollower
    from thresher.registry import Registry, Version

    judge = SwitchableJudge(Judge(ScriptedEngine(), rationale="never"))
    follower = ModelFollower(settings.model_copy(update={"judge": "serving", "data_dir": tmp_path}), judge)
    assert follower.check() == [] and judge.judge_id == "scripted@1"
    reg = Registry(tmp_path / "models")
    url = "http://127.0.0.1:9/v1"  # an OpenAI-compatible engine with its model named connects only when asked
    reg.add(Version("chat-r1", "chat", f"openai:{url}#chat-r1"))
    reg.promote("chat-r1")
    assert follower.check() == [f"judge -> chat-r1@{url}"] and judge.judge_id == f"chat-r1@{url}"
    assert follower.check() == []
    reg.add(Version("judge-r1", "judge", f"openai:{url}#judge-r1"))
    reg.promote("judge-r1")
    assert follower.check() == ["judge -> judge-r1"] and judge.judge_id == f"judge-r1@{url}"
    reg.rollback("judge")
    assert follower.check() == [f"judge -> chat-r1@{url}"]
    reg.rollback("chat")
    assert follower.check() == ["judge -> scripted@1"] and judge.engine.model_id == "scripted"
    # a head judge version (what a round registers): text signals only, so it needs no model
    head = _text_head()
    head.save(tmp_path / "head")
    reg.add(Version("judge-r2", "judge", f"head:{tmp_path / 'head'}"))
    reg.promote("judge-r2")
    assert follower.check() == ["judge -> judge-r2"] and judge.judge_id == head.id
    assert judge.threshold == head.threshold and isinstance(judge.current, HeadJudge)
    reg.rollback("judge")
    assert follower.check() == ["judge -> scripted@1"]


def _text_head() -> Head:
    good = [[{"role": "user", "content": f"What is {i} + {i}?"}, {"role": "assistant", "content": f"It is {2 * i}."}]
            for i in range(12)]
    bad = [[c[0], {"role": "assistant", "content": "I'm sorry, I can't help with that"}] for c in good]
    head = fit_head(features(good + bad, None, encoder=False), ["good"] * 12 + ["bad"] * 12,
                    {"encoder": False, "hidden": False}, "none", "none")
    head.threshold = 6.0
    return head


@pytest.mark.slow
def test_serve_with_default_settings_publishes_good_conversations_and_not_bad_ones(settings, remote: Path,
                                                                                   embedded_engine) -> None:
    """Real questions with their real answers (topics the shipped judge never trained on) and copies of them
    spoiled in every family, ended in a server left at its default judge and threshold: the good ones reach the
    public repository, the bad ones stay out."""
    from thresher.reward import default_head_path
    from thresher.server import create_app
    from thresher.train import sources
    from thresher.train.contrast import contrast_rows

    held_topics = set(Head.load(default_head_path()).info["heldout_topics"])
    pool = [s for s in sources.load(["zaragoza", "chatterbot"]) if s.topic in held_topics]
    rows = contrast_rows(random.Random(4).sample(pool, 16), seed=11, heldout=True, per_good=1, two_turn_share=0)
    s = settings.model_copy(update={"judge": "serving", "dataset_remote": str(remote), "judge_interval_seconds": 0.2,
                                    "publish_interval_seconds": 0.5})
    assert s.judge_threshold == "auto"
    label: dict[str, str] = {}
    with LiveServer(create_app(s, engine=embedded_engine)) as srv:
        store = srv.server.config.app.state.rt.store
        for r in rows:
            conv = store.create(Conversation(messages=[Message(m["role"], m["content"]) for m in r.messages],
                                             publish_allowed=True))
            store.end(conv.id, "button")
            label[conv.id] = r.label
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            decided = {p.conversation_id: p.state for p in store.publications()}
            if len(decided) == len(rows) and "accepted" not in decided.values():
                break
            time.sleep(0.5)
    published = {cid for cid, state in decided.items() if state == "published"}
    good = {cid for cid, lab in label.items() if lab == "good"}
    assert len(decided) == len(rows)
    assert len(published & good) >= 0.6 * len(good), (decided, label)
    assert len(published - good) <= 0.2 * (len(label) - len(good)), (decided, label)
    files = git(remote, "ls-tree", "-r", "--name-only", "main", "conversations").split()
    assert len(files) == len(published)


def test_a_worker_turn_judges_publishes_and_reads_reviews_back(store: Store, settings, remote: Path,
                                                                 tmp_path: Path) -> None:
    import threading

    from thresher.dataset_repo import DatasetRepo
    from thresher.flywheel import Worker
    from thresher.review import write_verdict

    s = settings.model_copy(update={"dataset_remote": str(remote), "judge": "serving"})
    ids = ended_conversations(store, 3)
    judge = SwitchableJudge(Judge(ScriptedEngine(), threshold=5.0, rationale="never"))  # scores 5.5: all pass
    worker = Worker(s, store, judge)

    first = worker.tick()
    assert first.judged == 3 and sorted(first.published.published) == sorted(ids)
    assert first.problems == [] and "published 3, rejected 0 conversation(s)" in first.lines()
    again = worker.tick()
    assert again.judged == 0 and again.published.published == []  # nothing twice
    assert worker.tick(publish=False).published is None  # a stage not due is not run

    ann = tmp_path / "ann"
    subprocess.run(["git", "clone", "-q", str(remote), str(ann)], check=True)
    git(ann, "config", "user.name", "ann")
    git(ann, "config", "user.email", "ann@example.org")
    write_verdict(DatasetRepo(ann, str(remote)), ids[0], "approve", reason="fine")
    assert worker.tick().synced.approved == 1

    # The remote gone: the turn says so and the loop lives; the next turn, with it back, pushes what it committed.
    remote.rename(tmp_path / "away.git")
    late = store.create(Conversation(messages=[Message("user", "What do herons eat?"),
                                               Message("assistant", "Mostly fish, frogs and insects.")],
                                     publish_allowed=True))
    store.end(late.id, "button")
    broken = worker.tick()
    assert broken.judged == 1 and broken.published.published == [late.id]  # committed in the clone
    assert len(broken.problems) == 1 and broken.problems[0].startswith("dataset: ")
    assert not store.publication(late.id).pushed
    (tmp_path / "away.git").rename(remote)
    stop = threading.Event()
    loop = threading.Thread(target=worker.run, args=(stop,))
    loop.start()
    deadline = time.monotonic() + 30
    while not store.publication(late.id).pushed and time.monotonic() < deadline:
        time.sleep(0.05)
    stop.set()
    loop.join(timeout=10)
    assert not loop.is_alive() and store.publication(late.id).pushed
    assert late.id in git(remote, "ls-tree", "-r", "--name-only", "main")
