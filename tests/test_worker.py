"""`thresher worker` killed at each stage of the loop (judging, committing a batch, pushing it) continues where it
stopped: every conversation judged once, published once, pushed; then reviewers' verdicts are read back. The round
stage is in test_round (a round SIGKILLed mid-training continues) and test_demo (when a round is due)."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tests_helpers import bare_remote, ended_conversations, git

from thresher.store import Store

# A git hook that, once armed, marks that it was reached and then hangs, so the test can kill the worker right there.
HOOK = """#!/bin/sh
name=$(basename "$0")
if [ "$name" = commit-msg ] && ! grep -q '^Publish' "$1"; then exit 0; fi
if [ -e "$ARM_DIR/$name" ]; then touch "$ARM_DIR/$name.hit"; sleep 300; fi
exit 0
"""


def _wait_for(what, timeout: float, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while not what():
        assert proc.poll() is None, f"the worker exited early:\n{log.read_text()}"
        assert time.monotonic() < deadline, f"timed out:\n{log.read_text()}"
        time.sleep(0.05)


def _kill(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGKILL)  # the worker, and the git and hook it is waiting for
    proc.wait(timeout=30)


@pytest.mark.slow
def test_worker_killed_at_each_stage_continues(tmp_path: Path) -> None:
    data, remote, arm, hooks = tmp_path / "data", bare_remote(tmp_path / "remote.git"), tmp_path / "arm", \
        tmp_path / "hooks"
    arm.mkdir()
    hooks.mkdir()
    for name in ("commit-msg", "pre-push"):
        (hooks / name).write_text(HOOK)
        (hooks / name).chmod(0o755)
    st = Store(f"sqlite:///{data / 'thresher.db'}")
    st.migrate()
    ids = ended_conversations(st, 12)
    st.close()
    env = {k: v for k, v in os.environ.items() if not k.startswith("THRESHER_")} | {
        "THRESHER_DATASET_REMOTE": str(remote), "THRESHER_JUDGE": "serving", "THRESHER_JUDGE_THRESHOLD": "1",
        "THRESHER_JUDGE_RATIONALE": "never", "THRESHER_JUDGE_INTERVAL_SECONDS": "0.2",
        "THRESHER_PUBLISH_INTERVAL_SECONDS": "1", "ARM_DIR": str(arm),
        "GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": "core.hooksPath", "GIT_CONFIG_VALUE_0": str(hooks)}
    log = tmp_path / "worker.log"

    def start(*extra: str) -> subprocess.Popen:
        with open(log, "ab") as out:
            return subprocess.Popen([sys.executable, "-m", "thresher", "worker", "--data-dir", str(data), *extra],
                                    env=env, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)

    db = sqlite3.connect(data / "thresher.db")

    def count(sql: str) -> int:
        return db.execute(sql).fetchone()[0]

    def published() -> list[str]:
        if not git(remote, "branch", "--list", "main"):
            return []
        return [Path(n).stem for n in git(remote, "ls-tree", "-r", "--name-only", "main").splitlines()
                if n.startswith("conversations/")]

    # 1. Killed while judging.
    proc = start()
    _wait_for(lambda: count("SELECT count(*) FROM judgments") >= 3, 180, proc, log)
    _kill(proc)
    assert 3 <= count("SELECT count(*) FROM judgments") < 12

    # 2. Killed while committing the first batch: decisions stored, nothing published yet.
    (arm / "commit-msg").touch()
    proc = start("--once")
    _wait_for((arm / "commit-msg.hit").exists, 300, proc, log)
    _kill(proc)
    (arm / "commit-msg").unlink()
    assert count("SELECT count(*) FROM judgments") == 12  # the rest was judged, none twice
    assert count("SELECT count(*) FROM publications WHERE state = 'accepted'") == 12
    assert published() == []
    lock = data / "dataset" / ".git" / "index.lock"
    if lock.exists():  # git's own rule after a killed git: the lock is stale once nothing runs
        lock.unlink()

    # 3. Killed while pushing: committed in the clone, not on the remote.
    (arm / "pre-push").touch()
    proc = start("--once")
    _wait_for((arm / "pre-push.hit").exists, 120, proc, log)
    _kill(proc)
    (arm / "pre-push").unlink()
    assert count("SELECT count(*) FROM publications WHERE state = 'published' AND NOT pushed") == 12
    assert published() == []

    # 4. Left alone: pushes what was committed; nothing is judged or published twice.
    done = subprocess.run([sys.executable, "-m", "thresher", "worker", "--data-dir", str(data), "--once"], env=env,
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert sorted(published()) == sorted(ids)
    assert count("SELECT count(*) FROM publications WHERE state = 'published' AND pushed") == 12
    assert db.execute("SELECT max(n) FROM (SELECT count(*) AS n FROM judgments GROUP BY conversation_id)"
                      ).fetchone()[0] == 1
    assert len(git(remote, "log", "--format=%s", "--grep=^Publish", "main").splitlines()) == 1
    assert subprocess.run(["git", "fsck", "--full"], cwd=remote, capture_output=True).returncode == 0

    # 5. A reviewer's verdicts come back through the next tick.
    ada = tmp_path / "ada"
    subprocess.run(["git", "clone", "-q", str(remote), str(ada)], check=True)
    for cid in ids[:2]:
        (ada / "reviews" / cid).mkdir(parents=True)
        (ada / "reviews" / cid / "ada-example.org.json").write_text(json.dumps(
            {"verdict": "approve", "reason": "", "time": "2026-11-25T12:00:00+00:00"}))
    git(ada, "add", "-A")
    git(ada, "-c", "user.name=Ada", "-c", "user.email=ada@example.org", "commit", "-qm", "Approve two")
    git(ada, "push", "-q", "origin", "main")
    done = subprocess.run([sys.executable, "-m", "thresher", "worker", "--data-dir", str(data), "--once"], env=env,
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "published 0, rejected 0; 2 approved in the dataset" in done.stdout
    db.close()
