"""Peer review in git over a real store and real git with a local bare remote: the verdict protocol, two reviewers
pushing at once, quorum, malformed verdicts skipped with a report, `sync` into the store (idempotent), withdrawn
verdicts leaving the store, corrections with their diff, and the `thresher review` and `thresher sync` commands."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest
from tests_helpers import git, judged
from typer.testing import CliRunner

from thresher.cli import app
from thresher.config import Settings
from thresher.dataset_repo import DatasetRepo, GitError
from thresher.flywheel import publish
from thresher.review import (
    InvalidVerdict,
    Review,
    commit_correction,
    parse_verdict,
    pending,
    quorum,
    read_verdicts,
    reviewer_slug,
    sync,
    write_verdict,
)
from thresher.store import Store


def clone(tmp_path: Path, remote: Path, name: str, email: str) -> DatasetRepo:
    """A reviewer's own clone, with their own git identity."""
    path = tmp_path / name
    subprocess.run(["git", "clone", "-q", str(remote), str(path)], check=True)
    git(path, "config", "user.name", name)
    git(path, "config", "user.email", email)
    return DatasetRepo(path, str(remote))


def published(store: Store, tmp_path: Path, remote: Path, n: int = 3) -> tuple[DatasetRepo, list[str]]:
    topics = ["tides", "owls", "bread", "glass", "maps"][:n]
    ids = [judged(store, f"Tell me about {t}, please.", f"Here is a careful answer about {t} number {i}.", 9.0,
                  rationale=f"Clear and correct about {t}.") for i, t in enumerate(topics)]
    repo = DatasetRepo(tmp_path / "publisher", str(remote)).open()
    report = publish(store, repo, threshold=8.0)
    assert sorted(report.published) == sorted(ids) and report.pushed
    return repo, sorted(ids)


# -- the protocol -----------------------------------------------------------------------------------------------


def test_reviewer_slugs() -> None:
    assert reviewer_slug("ada@example.org") == "ada-example.org"
    assert reviewer_slug("Ada Lovelace <Ada.L@Example.org>") == "ada.l-example.org"
    assert reviewer_slug("Ada Lovelace") == "ada-lovelace"
    assert reviewer_slug("../../etc/passwd") == "etc-passwd"
    with pytest.raises(InvalidVerdict):
        reviewer_slug("!!!")


def test_verdict_validation() -> None:
    now = "2025-01-02T03:04:05+02:00"
    ok = parse_verdict("01ABC", "ada", {"verdict": "approve", "reason": "", "score": 9, "time": now})
    assert ok.time == datetime(2025, 1, 2, 1, 4, 5, tzinfo=UTC) and ok.score == 9
    for bad in ({"verdict": "maybe", "reason": "x", "time": now}, {"verdict": "reject", "reason": " ", "time": now},
                {"verdict": "approve", "reason": "x", "score": 11, "time": now},
                {"verdict": "approve", "reason": "x", "score": True, "time": now},
                {"verdict": "approve", "reason": 3, "time": now}, {"verdict": "approve", "reason": "x"}, ["approve"]):
        with pytest.raises(InvalidVerdict):
            parse_verdict("01ABC", "ada", bad)
    with pytest.raises(InvalidVerdict):
        parse_verdict("01ABC", "Not A Slug", {"verdict": "approve", "reason": "", "time": now})


def test_quorum() -> None:
    def r(v: str) -> Review:
        return Review("c", "x", v, "why", datetime.now(UTC))

    assert quorum([]) == "pending"
    assert quorum([r("approve")]) == "approved"
    assert quorum([r("approve")], min_approvals=2) == "pending"
    assert quorum(["approve", "approve"], min_approvals=2) == "approved"
    assert quorum([r("approve"), r("approve"), r("reject")], min_approvals=2) == "rejected"
    assert quorum(["reject"]) == "rejected"


# -- verdicts in git -----------------------------------------------------------------------------------------------


def test_two_reviewers_at_once_lose_nothing(store: Store, tmp_path: Path, remote: Path) -> None:
    _, ids = published(store, tmp_path, remote)
    ada = clone(tmp_path, remote, "ada", "ada@example.org")
    bob = clone(tmp_path, remote, "bob", "bob@example.org")
    start = threading.Barrier(2)
    errors: list[BaseException] = []

    def review(repo: DatasetRepo, verdict: str) -> None:
        try:
            start.wait()
            for cid in ids:
                assert write_verdict(repo, cid, verdict, "" if verdict == "approve" else "too vague").pushed
        except BaseException as e:  # surfaced in the main thread
            errors.append(e)

    threads = [threading.Thread(target=review, args=(ada, "approve")), threading.Thread(target=review,
                                                                                          args=(bob, "reject"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    names = set(git(remote, "ls-tree", "-r", "--name-only", "main", "--", "reviews").splitlines())
    assert names == {f"reviews/{c}/{who}.json" for c in ids for who in ("ada-example.org", "bob-example.org")}
    # Each verdict is committed under its reviewer's own identity.
    authors = git(remote, "log", "--format=%ae", "main", "--", "reviews").splitlines()
    assert sorted(set(authors)) == ["ada@example.org", "bob@example.org"]
    fresh = clone(tmp_path, remote, "carol", "carol@example.org")
    read = read_verdicts(fresh)
    assert read.problems == [] and len(read.verdicts) == 2 * len(ids)
    assert all(v.commit_sha for v in read.verdicts)
    assert len(pending(fresh, "carol-example.org")) == len(ids) and pending(fresh, "ada-example.org") == []


def test_malformed_verdicts_are_reported_and_skipped(store: Store, tmp_path: Path, remote: Path) -> None:
    _, ids = published(store, tmp_path, remote, n=2)
    ada = clone(tmp_path, remote, "ada", "ada@example.org")
    write_verdict(ada, ids[0], "approve", score=8)
    (ada.path / "reviews" / ids[1]).mkdir(parents=True)
    (ada.path / "reviews" / ids[1] / "ada-example.org.json").write_text("{not json")
    (ada.path / "reviews" / ids[1] / "bob.json").write_text(json.dumps({"verdict": "yes", "time": "now"}))
    (ada.path / "reviews" / "stray.txt").write_text("hello")
    ada.commit(["reviews"], "Hand-written verdicts")
    assert ada.push()
    read = read_verdicts(ada)
    assert [(v.conversation_id, v.verdict, v.score) for v in read.verdicts] == [(ids[0], "approve", 8)]
    assert sorted(p for p, _ in read.problems) == sorted([f"reviews/{ids[1]}/ada-example.org.json",
                                                          f"reviews/{ids[1]}/bob.json", "reviews/stray.txt"])
    # At an earlier commit, only what was there then.
    first = git(ada.path, "rev-parse", "HEAD~1")
    assert [v.conversation_id for v in read_verdicts(ada, at=first).verdicts] == [ids[0]]
    assert read_verdicts(ada, at=first).problems == []


# -- sync into the store -------------------------------------------------------------------------------------------


def test_sync_reads_verdicts_into_the_store_and_is_idempotent(store: Store, tmp_path: Path, remote: Path) -> None:
    publisher, ids = published(store, tmp_path, remote)
    ada = clone(tmp_path, remote, "ada", "ada@example.org")
    bob = clone(tmp_path, remote, "bob", "bob@example.org")
    write_verdict(ada, ids[0], "approve", score=9)
    write_verdict(bob, ids[0], "approve")
    write_verdict(ada, ids[1], "reject", "wrong about owls")
    (bob.path / "reviews" / ids[2]).mkdir(parents=True)
    (bob.path / "reviews" / ids[2] / "bob-example.org.json").write_text("[]")
    bob.commit(["reviews"], "broken")
    assert bob.push()

    report = sync(store, publisher, min_approvals=2)
    assert (report.new, report.updated, report.corrections) == (3, 0, 0)
    assert (report.approved, report.rejected, report.pending) == (1, 1, 1)
    assert [p for p, _ in report.problems] == [f"reviews/{ids[2]}/bob-example.org.json"]
    rejected = store.reviews(ids[1])
    assert [(r.reviewer, r.verdict, r.reason) for r in rejected] == [("ada-example.org", "reject", "wrong about owls")]
    assert rejected[0].commit_sha == git(remote, "log", "-1", "--format=%H", "main", "--",
                                         f"reviews/{ids[1]}/ada-example.org.json")
    again = sync(store, publisher, min_approvals=2)
    assert (again.new, again.updated, again.corrections) == (0, 0, 0)
    assert len(store.reviews()) == 3
    # A reviewer changes their mind: updated, not duplicated.
    write_verdict(ada, ids[1], "approve", "on second reading it is fine")
    changed = sync(store, publisher, min_approvals=1)
    assert (changed.new, changed.updated) == (0, 1) and (changed.approved, changed.rejected) == (2, 0)
    assert [r.verdict for r in store.reviews(ids[1])] == ["approve"]


def test_an_edit_is_a_correction_with_its_diff(store: Store, tmp_path: Path, remote: Path) -> None:
    publisher, ids = published(store, tmp_path, remote, n=2)
    ada = clone(tmp_path, remote, "ada", "ada@example.org")
    path = next(p for p in pending(ada, "ada-example.org") if ids[0] in p)
    rec = ada.read(path)
    rec["messages"][1]["content"] = "A better answer about tides: the moon and the sun pull the sea."
    ada.write(path, rec)
    ada.commit([path], f"Correct {ids[0]}")
    assert ada.push()

    report = sync(store, publisher)
    assert report.corrections == 1
    (c,) = store.corrections(to_rejudge=True)
    assert c.conversation_id == ids[0] and c.author == "ada <ada@example.org>"
    assert c.commit_sha == git(remote, "rev-parse", "main")
    assert "+" in c.diff and "the moon and the sun pull the sea" in c.diff and path in c.diff
    assert sync(store, publisher).corrections == 0  # recorded once
    assert store.corrections(ids[1]) == []

    # The corrected text is judged again, and the correction is then done.
    from conftest import ScriptedEngine

    from thresher.flywheel import rejudge_corrections
    from thresher.judge import Judge

    engine = ScriptedEngine()
    seen: list[str] = []
    engine.next_token_probs = lambda messages, choices, prefix="": (  # type: ignore[method-assign]
        seen.append(messages[-1]["content"]) or {c: 1 / len(choices) for c in choices})
    assert rejudge_corrections(store, publisher, Judge(engine, rationale="never")) == 1
    assert any("the moon and the sun pull the sea" in text for text in seen)
    assert [j.judge_id for j in store.judgments(ids[0])] == ["judge@1", "scripted@1"]
    assert store.corrections(to_rejudge=True) == [] and store.corrections(ids[0])[0].rejudged_at is not None
    assert rejudge_corrections(store, publisher, Judge(engine, rationale="never")) == 0


def test_a_deleted_verdict_file_is_withdrawn_on_sync(store: Store, tmp_path: Path, remote: Path) -> None:
    publisher, ids = published(store, tmp_path, remote, n=2)
    ada = clone(tmp_path, remote, "ada", "ada@example.org")
    bob = clone(tmp_path, remote, "bob", "bob@example.org")
    write_verdict(ada, ids[0], "reject", "made up")
    write_verdict(bob, ids[0], "approve")
    write_verdict(bob, ids[1], "approve", score=7)
    first = sync(store, publisher)
    assert (first.new, first.removed, first.rejected, first.approved) == (3, 0, 1, 1)

    # ada withdraws her rejection by deleting her file; bob's second verdict turns malformed (kept as it was).
    git(ada.path, "pull", "-q", "--rebase", "origin", "main")
    git(ada.path, "rm", "-q", f"reviews/{ids[0]}/ada-example.org.json")
    git(ada.path, "commit", "-qm", f"Withdraw my verdict on {ids[0]}")
    assert ada.push()
    (bob.path / "reviews" / ids[1] / "bob-example.org.json").write_text("{oops")
    bob.commit([f"reviews/{ids[1]}/bob-example.org.json"], "broken")
    assert bob.push()

    report = sync(store, publisher)
    assert (report.new, report.updated, report.removed) == (0, 0, 1)
    assert (report.approved, report.rejected, report.pending) == (2, 0, 0)
    assert [p for p, _ in report.problems] == [f"reviews/{ids[1]}/bob-example.org.json"]
    assert [(r.reviewer, r.verdict) for r in store.reviews(ids[0])] == [("bob-example.org", "approve")]
    assert [(r.reviewer, r.score) for r in store.reviews(ids[1])] == [("bob-example.org", 7)]
    assert sync(store, publisher).removed == 0  # once

    # Deleting the last one leaves the conversation pending again.
    git(bob.path, "pull", "-q", "--rebase", "origin", "main")
    git(bob.path, "rm", "-q", "-r", "reviews")
    git(bob.path, "commit", "-qm", "Withdraw everything")
    assert bob.push()
    gone = sync(store, publisher)
    assert (gone.removed, gone.pending, gone.problems) == (2, 2, []) and store.reviews() == []


# -- the commands ----------------------------------------------------------------------------------------------


def test_thresher_review_then_thresher_sync(store: Store, store_url: str, tmp_path: Path, remote: Path,
                                           settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """The acceptance point: a verdict made with `thresher review` in another clone is in the store after
    `thresher sync`."""
    ids = [judged(store, f"Tell me about {t}, please.", f"Here is a careful answer about {t}.", 9.0,
                  rationale=f"Good on {t}.") for t in ("tides", "owls", "bread", "glass")]
    for cid in ids:
        store.set_feedback(cid, store.thread(cid)[1][1].id, "up", "clear")
    for key, value in (("DATA_DIR", tmp_path / "data"), ("DATABASE_URL", store_url), ("DATASET_REMOTE", remote)):
        monkeypatch.setenv(f"THRESHER_{key}", str(value))
    runner = CliRunner()
    result = runner.invoke(app, ["publish", "--min-score", "8"])
    assert result.exit_code == 0, result.output
    ids.sort()

    ada = clone(tmp_path, remote, "ada", "ada@example.org")
    # approve the first, reject the second with a reason, skip the third, then quit at the fourth
    result = runner.invoke(app, ["review", "--repo", str(ada.path)], input="a\nr\nmade-up facts\ns\nq\n")
    assert result.exit_code == 0, result.output
    assert "4 conversation(s) to review as ada-example.org" in result.output
    assert "Good on tides" in result.output and "Tell me about owls" in result.output
    assert "user: thumbs up (clear)" in result.output  # the owner's feedback, published with the conversation
    assert "approved 1, rejected 1, skipped 1, corrected 0" in result.output
    assert git(ada.path, "status", "--porcelain") == ""
    assert git(ada.path, "rev-parse", "HEAD") == git(remote, "rev-parse", "main")  # pushed

    result = runner.invoke(app, ["sync"])
    assert result.exit_code == 0, result.output
    assert "verdicts: 2 new, 0 updated" in result.output
    assert "1 approved, 1 rejected, 2 pending (quorum 1)" in result.output
    verdicts = {r.conversation_id: r for r in store.reviews()}
    assert set(verdicts) == set(ids[:2]) and verdicts[ids[0]].verdict == "approve"
    assert verdicts[ids[1]].verdict == "reject" and verdicts[ids[1]].reason == "made-up facts"
    assert runner.invoke(app, ["sync"]).output.startswith("verdicts: 0 new, 0 updated")

    # Next time only what ada has not reviewed is shown; an edit is committed as a correction, then approved.
    editor = tmp_path / "editor.py"
    editor.write_text("import json, sys\np = sys.argv[1]\nrec = json.load(open(p))\n"
                      "rec['messages'][1]['content'] = 'Fixed by ada.'\njson.dump(rec, open(p, 'w'))\n")
    monkeypatch.setenv("EDITOR", f"{sys.executable} {editor}")
    result = runner.invoke(app, ["review", "--repo", str(ada.path)], input="e\na\nq\n")
    assert result.exit_code == 0, result.output
    assert "2 conversation(s) to review" in result.output and "Fixed by ada." in result.output
    assert "approved 1, rejected 0, skipped 0, corrected 1" in result.output
    result = runner.invoke(app, ["sync"])
    assert "verdicts: 1 new, 0 updated; corrections: 1 new" in result.output
    (c,) = store.corrections()
    assert c.conversation_id == ids[2] and "Fixed by ada." in c.diff


def test_thresher_review_errors(tmp_path: Path, remote: Path, settings: Settings) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["review", "--repo", str(tmp_path / "nowhere")])
    assert result.exit_code == 2 and "not a git clone" in " ".join(result.output.split())
    path = tmp_path / "anon"
    subprocess.run(["git", "clone", "-q", str(remote), str(path)], check=True, capture_output=True)
    result = runner.invoke(app, ["review", "--repo", str(path), "--reviewer", "Not A Slug"])
    assert result.exit_code == 2 and "safe slug" in " ".join(result.output.split())


# -- the reviewed dataset and takedowns ---------------------------------------------------------------------------


def test_dataset_build_is_reproducible_and_only_approved(store: Store, tmp_path: Path, remote: Path) -> None:
    from thresher.review import build_dataset

    repo, ids = published(store, tmp_path, remote, n=4)
    ann = clone(tmp_path, remote, "ann", "ann@example.org")
    bob = clone(tmp_path, remote, "bob", "bob@example.org")
    write_verdict(ann, ids[0], "approve")
    write_verdict(ann, ids[1], "approve")
    write_verdict(bob, ids[1], "reject", reason="the answer is vague")
    write_verdict(bob, ids[2], "approve", score=8)
    repo.pull()
    first = build_dataset(repo, "HEAD", tmp_path / "a")
    with pytest.raises(GitError, match="not a commit of the clone"):
        build_dataset(ann, first.commit, tmp_path / "b")  # ann's clone has not seen bob's verdicts yet
    ann.pull()
    second = build_dataset(DatasetRepo(ann.path), first.commit, tmp_path / "b")  # another clone, pinned commit
    assert second == first
    assert (tmp_path / "a" / "data.jsonl").read_bytes() == (tmp_path / "b" / "data.jsonl").read_bytes()
    assert (tmp_path / "a" / "manifest.json").read_bytes() == (tmp_path / "b" / "manifest.json").read_bytes()
    rows = [json.loads(x) for x in (tmp_path / "a" / "data.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == sorted([ids[0], ids[2]])
    assert set(rows[0]) == {"id", "messages"} and rows[0]["messages"][0]["role"] == "user"
    assert (first.approved, first.rejected, first.pending, first.conversations) == (2, 1, 1, 4)
    two = build_dataset(repo, "HEAD", tmp_path / "c", min_approvals=2)
    assert two.approved == 0 and two.pending == 3


def test_takedown_removes_from_head_and_from_every_build(store: Store, tmp_path: Path, remote: Path) -> None:
    from thresher.flywheel import takedown
    from thresher.review import build_dataset

    repo, ids = published(store, tmp_path, remote, n=2)
    ann = clone(tmp_path, remote, "ann", "ann@example.org")
    for cid in ids:
        write_verdict(ann, cid, "approve")
    repo.pull()
    before = repo.head()
    report = takedown(store, repo, ids[0], "contains a home address")
    assert report.removed_path and report.pushed and report.history
    files = git(remote, "ls-tree", "-r", "--name-only", "main")
    assert f"{ids[0]}.json" not in files.replace(f"takedowns/{ids[0]}.json", "")
    assert f"reviews/{ids[0]}/" not in files and f"takedowns/{ids[0]}.json" in files
    assert git(remote, "log", "-1", "--format=%s", "main") == f"Take down {ids[0]}: contains a home address"
    assert store.get(ids[0]).status == "taken_down" and not store.get(ids[0]).publish_allowed
    # A build pinned before the takedown leaves it out too: never-train.
    m = build_dataset(repo, before, tmp_path / "old")
    assert m.taken_down == 1 and m.approved == 1
    assert ids[0] not in (tmp_path / "old" / "data.jsonl").read_text()
    # Publishing again does not bring it back.
    assert publish(store, repo, threshold=8.0).published == []
    with pytest.raises(ValueError, match="reason"):
        takedown(store, repo, ids[1], "  ")


def test_takedown_and_build_commands(settings: Settings, tmp_path: Path, remote: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("THRESHER_DATASET_REMOTE", str(remote))
    store = Store(settings.db_url)
    store.migrate()
    cid = judged(store, "Tell me about tides.", "Tides follow the moon.", 9.0)
    store.close()
    runner = CliRunner()
    assert runner.invoke(app, ["publish", "--data-dir", str(settings.data_dir)]).exit_code == 0
    result = runner.invoke(app, ["takedown", cid, "--reason", "asked by its owner",
                                 "--data-dir", str(settings.data_dir)])
    assert result.exit_code == 0, result.output
    assert "never-train" in result.output and "git filter-repo --invert-paths --path conversations/" in result.output
    missing = runner.invoke(app, ["takedown", "NOPE", "--reason", "x", "--data-dir", str(settings.data_dir)])
    assert missing.exit_code == 2 and "no conversation" in missing.output
    out = tmp_path / "built"
    result = runner.invoke(app, ["dataset", "build", "--out", str(out), "--repo", str(settings.data_dir / "dataset")])
    assert result.exit_code == 0, result.output
    assert "0 approved of 0" in result.output and (out / "manifest.json").exists()


def test_serve_publishes_and_reads_verdicts_in_the_background(serve, tmp_path: Path, remote: Path) -> None:
    import time

    import httpx
    from conftest import ScriptedEngine

    with serve(ScriptedEngine(), judge="serving", judge_interval_seconds=0.1, judge_threshold=5.0,
               publish_interval_seconds=0.2, dataset_remote=str(remote)) as srv:
        r = httpx.post(srv.url + "/v1/chat/completions",
                       headers={"X-Thresher-End": "true", "X-Thresher-Publish": "true"},
                       json={"model": "scripted", "messages": [{"role": "user", "content": "Tell me about owls."}]})
        cid = r.headers["x-thresher-conversation"]
        store = srv.server.config.app.state.rt.store
        deadline = time.monotonic() + 20
        while store.get(cid).status != "published" and time.monotonic() < deadline:
            time.sleep(0.1)
        assert store.get(cid).status == "published"  # judged 5.5 by the uniform scripted judge, threshold 5
        ann = clone(tmp_path, remote, "ann", "ann@example.org")
        write_verdict(ann, cid, "approve", reason="fine")
        while not store.reviews(cid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert [v.verdict for v in store.reviews(cid)] == ["approve"]


def test_an_edit_that_breaks_the_record_is_refused_and_a_pushed_one_is_not_judged(store: Store, tmp_path: Path,
                                                                                  remote: Path) -> None:
    from conftest import ScriptedEngine

    from thresher.flywheel import rejudge_corrections
    from thresher.judge import Judge

    publisher, ids = published(store, tmp_path, remote, n=2)
    ada = clone(tmp_path, remote, "ada", "ada@example.org")
    path = next(p for p in pending(ada, "ada-example.org") if ids[0] in p)
    rec = ada.read(path)
    rec["messages"][1] = {"role": "assistant"}  # the text gone
    ada.write(path, rec)
    with pytest.raises(InvalidVerdict, match="no longer a conversation record"):
        commit_correction(ada, path)
    # Committed by hand all the same: synced as a correction, but there is nothing to judge until it is mended.
    ada.commit([path], f"Correct {ids[0]}")
    assert ada.push()
    assert sync(store, publisher).corrections == 1
    assert rejudge_corrections(store, publisher, Judge(ScriptedEngine(), rationale="never")) == 0
    assert store.corrections(to_rejudge=True) == []
    assert [j.judge_id for j in store.judgments(ids[0])] == ["judge@1"]


def test_a_review_session_is_what_the_command_does(store: Store, tmp_path: Path, remote: Path) -> None:
    """The library side of `thresher review`: what is left to review, the records, a verdict pushed, a broken edit
    undone and refused, a good one committed as a correction, and the counts."""
    from thresher.review import ReviewSession

    _, ids = published(store, tmp_path, remote, n=3)
    ada = clone(tmp_path, remote, "ada", "ada@example.org")
    session = ReviewSession(ada.path)
    assert session.reviewer == "ada-example.org" and len(session.todo) == 3
    first, second, third = session.todo
    assert session.record(first).id in ids and session.record(first).messages[0]["role"] == "user"
    assert session.verdict(first, True) == "approved, pushed"
    assert git(ada.path, "rev-parse", "HEAD") == git(remote, "rev-parse", "main")

    before = session.file(second).read_text()
    rec = json.loads(before)
    rec["messages"] = []
    session.file(second).write_text(json.dumps(rec))
    with pytest.raises(InvalidVerdict, match="no longer a conversation record"):
        session.correct(second)
    assert session.file(second).read_text() == before  # the broken edit is undone
    rec = json.loads(before)
    rec["messages"][1]["content"] = "Mended by ada."
    session.file(second).write_text(json.dumps(rec))
    assert session.correct(second) and session.record(second).messages[1]["content"] == "Mended by ada."
    assert session.correct(second) is None  # nothing changed since
    assert session.verdict(third, False, "vague") == "rejected, pushed"
    assert session.summary() == "approved 1, rejected 1, skipped 0, corrected 1"
    assert ReviewSession(ada.path).todo == [second]  # only what ada has not judged yet
    with pytest.raises(GitError, match="not a git clone"):
        ReviewSession(tmp_path / "nowhere")


def test_the_review_loop_asks_until_it_gets_an_answer_and_undoes_a_broken_edit(store: Store, tmp_path: Path,
                                                                               remote: Path) -> None:
    """`ReviewSession.run`, as `thresher review` drives it with the terminal: an answer it does not know is asked
    again; an edit that breaks the record is undone and asked about again; a good edit is committed, the corrected
    conversation shown, and then judged; quit stops before the rest."""
    from thresher.review import ReviewSession

    published(store, tmp_path, remote, n=3)
    session = ReviewSession(clone(tmp_path, remote, "ada", "ada@example.org").path)
    first, second, third = session.todo
    answers = iter(["x", "e", "e", "a", "r", "too vague", "q"])
    edits = iter([lambda rec: rec.update(messages=[]), lambda rec: rec["messages"][1].update(content="Mended.")])
    shown: list[tuple[str, str]] = []
    said: list[str] = []
    asked: list[str] = []

    def ask(question: str, default: str | None) -> str:
        asked.append(question)
        return next(answers)

    def edit(file: Path) -> None:
        rec = json.loads(file.read_text())
        next(edits)(rec)
        file.write_text(json.dumps(rec))

    summary = session.run(lambda path, where: shown.append((path, where)), ask, edit, said.append)
    assert summary == "approved 1, rejected 1, skipped 0, corrected 1"
    # the first again after its correction; the third shown, then quit
    assert shown == [(first, "1/3"), (first, "1/3"), (second, "2/3"), (third, "3/3")]
    assert said[0] == "answer a, r, s, e or q" and said[1].startswith("edit not kept: ")
    assert said[2].startswith("correction committed (") and said[3:] == ["approved, pushed", "rejected, pushed"]
    assert asked.count("Reason") == 1 and session.record(first).messages[1]["content"] == "Mended."


def test_the_chat_models_data_and_the_judges_rows_follow_one_verdict_policy(store: Store, tmp_path: Path,
                                                                           remote: Path) -> None:
    from thresher.review import build_dataset, reviewed
    from thresher.train.data import rows_from_verdicts

    publisher, ids = published(store, tmp_path, remote, n=4)
    ada, bob, cy = (clone(tmp_path, remote, n, f"{n}@example.org") for n in ("ada", "bob", "cy"))
    write_verdict(ada, ids[0], "approve", score=9)
    write_verdict(ada, ids[1], "approve")  # two approvals and one rejection: rejected, for both
    write_verdict(bob, ids[1], "approve")
    write_verdict(cy, ids[1], "reject", "made up")
    write_verdict(bob, ids[2], "reject", "rude")  # ids[3]: nobody said anything yet
    publisher.pull()
    _, items, gone = reviewed(publisher)
    assert {i.id: i.state for i in items} == {ids[0]: "approved", ids[1]: "rejected", ids[2]: "rejected",
                                              ids[3]: "pending"} and gone == 0
    manifest = build_dataset(publisher, "HEAD", tmp_path / "build")
    assert (manifest.approved, manifest.rejected, manifest.pending) == (1, 2, 1)
    rows = {r.source: r for r in rows_from_verdicts(publisher)}
    assert {cid: r.label for cid, r in rows.items()} == {ids[0]: "good", ids[1]: "bad", ids[2]: "bad"}
    assert rows[ids[0]].rating == 9  # the reviewer's own score is the rating learnt
    with pytest.raises(GitError, match="not a commit"):
        reviewed(publisher, "no-such-commit")
