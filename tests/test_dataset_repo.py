"""The dataset repository over real git with a local bare remote: layout, card, atomic writes, commits, pushes that
fail and recover, pulling what others pushed, a conflicting pull that leaves the clone as it was, commits made on
someone's behalf, and the clone's write lock across threads and processes."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from tests_helpers import git

from thresher.dataset_repo import DatasetRepo, GitError, RepoBusy, conversation_path, dump


def test_open_clones_an_empty_remote_and_writes_the_card(tmp_path: Path, remote: Path) -> None:
    repo = DatasetRepo(tmp_path / "clone", str(remote)).open(licence="CC-BY-4.0")
    card = (repo.path / "README.md").read_text()
    assert card.startswith("---\nlicense: cc-by-4.0\n") and "conversations/**/*.json" in card
    assert (repo.path / "REVIEWING.md").exists()
    assert repo.unpushed() == 1
    assert repo.push() and repo.unpushed() == 0
    assert git(remote, "log", "--format=%s", "main") == "Start the dataset: card and reviewing guide"
    DatasetRepo(tmp_path / "clone", str(remote)).open()  # opening again changes nothing
    assert git(repo.path, "rev-list", "--count", "HEAD") == "1"


def test_a_clone_killed_half_way_is_never_taken_for_the_clone(tmp_path: Path, remote: Path) -> None:
    first = DatasetRepo(tmp_path / "first", str(remote)).open()
    assert first.push()
    # What a process killed mid-clone leaves: a repository half made, beside the clone's place
    left = tmp_path / ".clone.making-x1" / "repo" / ".git"
    left.mkdir(parents=True)
    (left / "HEAD").write_text("ref: refs/heads/main\n")
    repo = DatasetRepo(tmp_path / "clone", str(remote)).open()
    assert git(repo.path, "fsck", "--full") == "" and git(repo.path, "rev-list", "--count", "HEAD") == "1"
    assert not [p for p in tmp_path.iterdir() if ".making-" in p.name]  # the leftover cleared, and no new one
    # A directory of other things where the clone goes is not adopted as the dataset
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(GitError, match="is not a git clone"):
        DatasetRepo(tmp_path / "other", str(remote)).open()
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"


def test_write_commit_push_and_layout(tmp_path: Path, remote: Path) -> None:
    repo = DatasetRepo(tmp_path / "clone", str(remote)).open()
    rel = conversation_path("01ABC", datetime(2026, 3, 9, tzinfo=UTC))
    assert rel == "conversations/2026/03/09/01ABC.json"
    repo.write(rel, {"id": "01ABC", "messages": [{"role": "user", "content": "héllo"}]})
    commit = repo.commit([rel], "Publish 1 conversation")
    assert commit is not None and repo.commit([rel], "again") is None  # nothing changed
    assert repo.push()
    assert git(remote, "show", f"main:{rel}") == dump(repo.read(rel)).strip()
    assert repo.read(rel, at=commit.sha)["messages"][0]["content"] == "héllo"
    assert not list(repo.path.rglob(".*.tmp"))


def test_push_failure_keeps_the_commit_and_recovers(tmp_path: Path, remote: Path) -> None:
    repo = DatasetRepo(tmp_path / "clone", str(remote)).open()
    assert repo.push()
    moved = tmp_path / "elsewhere.git"
    remote.rename(moved)  # the remote is down
    repo.write("conversations/2026/01/X.json", {"id": "X"})
    repo.commit(["conversations/2026/01/X.json"], "Publish X")
    assert repo.push() is False and repo.unpushed() == 1
    moved.rename(remote)  # and back
    assert repo.push() and repo.unpushed() == 0
    assert "conversations/2026/01/X.json" in git(remote, "ls-tree", "-r", "--name-only", "main")


def test_someone_else_pushed_first(tmp_path: Path, remote: Path) -> None:
    ours = DatasetRepo(tmp_path / "ours", str(remote)).open()
    assert ours.push()
    theirs = tmp_path / "theirs"
    subprocess.run(["git", "clone", "-q", str(remote), str(theirs)], check=True)
    (theirs / "reviews" / "X").mkdir(parents=True)
    (theirs / "reviews" / "X" / "ann.json").write_text('{"verdict": "approve"}\n')
    git(theirs, "add", ".")
    git(theirs, "-c", "user.name=Ann", "-c", "user.email=ann@example.org", "commit", "-qm", "Review X")
    git(theirs, "push", "-q", "origin", "main")
    ours.write("conversations/2026/01/Y.json", {"id": "Y"})
    ours.commit(["conversations/2026/01/Y.json"], "Publish Y")
    assert ours.push()  # rebased onto the review, then pushed
    files = git(remote, "ls-tree", "-r", "--name-only", "main")
    assert "reviews/X/ann.json" in files and "conversations/2026/01/Y.json" in files
    assert (ours.path / "reviews" / "X" / "ann.json").exists()


def test_local_only_repository(tmp_path: Path) -> None:
    repo = DatasetRepo(tmp_path / "local").open()
    assert repo.has_commits() and repo.push() is False


def test_a_conflicting_pull_leaves_the_clone_as_it_was(tmp_path: Path, remote: Path) -> None:
    ours = DatasetRepo(tmp_path / "ours", str(remote)).open()
    assert ours.push()
    theirs = DatasetRepo(tmp_path / "theirs", str(remote)).open()
    theirs.write("reviews/X/ann.json", {"verdict": "approve"})
    theirs.commit(["reviews/X/ann.json"], "theirs")
    assert theirs.push()
    ours.write("reviews/X/ann.json", {"verdict": "reject"})
    mine = ours.commit(["reviews/X/ann.json"], "ours")
    assert mine is not None
    with pytest.raises(GitError, match="conflict with the remote"):
        ours.pull()
    assert ours.head() == mine.sha and git(ours.path, "status", "--porcelain") == ""
    assert not (ours.path / ".git" / "rebase-merge").exists() and not (ours.path / ".git" / "rebase-apply").exists()
    assert ours.push() is False and ours.unpushed() == 1  # refused, and nothing lost


def test_commit_on_someones_behalf(tmp_path: Path) -> None:
    repo = DatasetRepo(tmp_path / "clone").open()
    repo.write("reviews/X/ada-example.org.json", {"verdict": "approve"})
    assert repo.commit(["reviews/X/ada-example.org.json"], "Approve X", author="Ada Lovelace <ada@example.org>")
    own = f"{git(repo.path, 'config', 'user.name')} <{git(repo.path, 'config', 'user.email')}>"
    assert git(repo.path, "log", "-1", "--format=%an <%ae>|%cn <%ce>") == f"Ada Lovelace <ada@example.org>|{own}"


def test_a_commit_leaves_the_clone_as_git_commit_does(tmp_path: Path) -> None:
    """Commits are made with git's plumbing (no re-stat of the whole working tree): the index, the working tree, the
    message and the reflog end as `git commit` leaves them, in the first commit of a repository too."""
    repo, plain = DatasetRepo(tmp_path / "clone"), tmp_path / "plain"
    for where in (repo.path, plain):
        where.mkdir()
        git(where, "init", "-q", "-b", "main")
        git(where, "config", "user.email", "t@example.org")
        git(where, "config", "user.name", "T")
    message = "Publish 2 conversation(s)  \n\n\n\nfrom judge@1\t\n\n"
    for name in ("conversations/2026/01/A.json", "conversations/2026/02/B.json"):
        repo.write(name, {"id": name})
    first = repo.commit(["conversations/2026/01/A.json", "conversations/2026/02/B.json"], message)
    (plain / "x").write_text("x\n")
    git(plain, "add", "x")
    git(plain, "commit", "-q", "-m", message)
    assert first is not None and first.sha == git(repo.path, "rev-parse", "HEAD")
    assert git(repo.path, "log", "-1", "--format=%B") == git(plain, "log", "-1", "--format=%B")
    assert git(repo.path, "reflog", "-1", "--format=%gs") == git(plain, "reflog", "-1", "--format=%gs")
    assert git(repo.path, "status", "--porcelain") == ""
    assert repo.commit(["conversations/2026/01/A.json"], "again") is None  # nothing changed

    repo.write("conversations/2026/01/A.json", {"id": "A", "edited": True})
    (repo.path / "conversations/2026/02/B.json").unlink()
    second = repo.commit(["conversations/2026/01/A.json", "conversations/2026/02/B.json"], "Edit A, drop B")
    assert second is not None and git(repo.path, "rev-parse", "HEAD~1") == first.sha
    assert git(repo.path, "ls-tree", "-r", "--name-only", "HEAD") == "conversations/2026/01/A.json"
    assert repo.read("conversations/2026/01/A.json", at="HEAD")["edited"] is True
    assert git(repo.path, "reflog", "-1", "--format=%gs") == "commit: Edit A, drop B"
    assert git(repo.path, "status", "--porcelain") == "" and git(repo.path, "fsck", "--full") == ""


def test_commit_hooks_and_signing_get_git_commit_itself(tmp_path: Path) -> None:
    repo = DatasetRepo(tmp_path / "clone").open()
    hooks = repo.path / ".git" / "hooks"
    hooks.mkdir(exist_ok=True)
    (hooks / "pre-commit").write_text("#!/bin/sh\necho ran >> \"$(git rev-parse --git-dir)/pre-commit-ran\"\n")
    (hooks / "pre-commit").chmod(0o755)
    repo.write("reviews/X/ann.json", {"verdict": "approve"})
    assert repo.commit(["reviews/X/ann.json"], "Approve X") is not None
    assert (repo.path / ".git" / "pre-commit-ran").read_text() == "ran\n"
    (hooks / "commit-msg").write_text("#!/bin/sh\necho 'no, thank you' >&2\nexit 1\n")
    (hooks / "commit-msg").chmod(0o755)
    repo.write("reviews/Y/ann.json", {"verdict": "reject"})
    with pytest.raises(GitError, match="no, thank you"):
        repo.commit(["reviews/Y/ann.json"], "Reject Y")
    for hook in ("pre-commit", "commit-msg"):
        (hooks / hook).unlink()
    git(repo.path, "config", "commit.gpgSign", "true")
    git(repo.path, "config", "gpg.program", "false")  # a signer that always fails: git commit must have asked it
    with pytest.raises(GitError):
        repo.commit(["reviews/Y/ann.json"], "Reject Y")


def test_pull_fast_forwards_or_does_nothing(tmp_path: Path, remote: Path) -> None:
    ours = DatasetRepo(tmp_path / "ours", str(remote)).open()
    assert ours.push()
    before = ours.head()
    ours.pull()  # nothing new on either side
    assert ours.head() == before
    theirs = DatasetRepo(tmp_path / "theirs", str(remote)).open()
    theirs.write("reviews/X/ann.json", {"verdict": "approve"})
    theirs.commit(["reviews/X/ann.json"], "Approve X")
    assert theirs.push()
    ours.pull()  # nothing new here: a fast-forward
    assert ours.head() == theirs.head() and ours.read("reviews/X/ann.json") == {"verdict": "approve"}
    assert git(ours.path, "status", "--porcelain") == "" and ours.unpushed() == 0


def test_the_lock_excludes_other_threads_and_is_reentrant(tmp_path: Path) -> None:
    repo = DatasetRepo(tmp_path / "clone").open()
    other = DatasetRepo(tmp_path / "clone")  # a second object on the same clone, as the page and the loop have
    order: list[str] = []
    inside = threading.Event()

    def hold() -> None:
        with repo.lock(), repo.lock():  # re-entrant in one thread
            inside.set()
            time.sleep(0.3)
            order.append("first out")

    t = threading.Thread(target=hold)
    t.start()
    inside.wait(5)
    with pytest.raises(RepoBusy, match="busy"), other.lock(timeout=0.05):
        pass
    with other.lock(timeout=5):
        order.append("second in")
    t.join()
    assert order == ["first out", "second in"]
    with pytest.raises(GitError, match="no git clone"), DatasetRepo(tmp_path / "nowhere").lock():
        pass


def test_the_lock_excludes_another_process(tmp_path: Path) -> None:
    repo = DatasetRepo(tmp_path / "clone").open()
    script = ("import sys, time; from pathlib import Path; from thresher.dataset_repo import DatasetRepo\n"
              "with DatasetRepo(Path(sys.argv[1])).lock():\n    print('held', flush=True); time.sleep(30)\n")
    with subprocess.Popen([sys.executable, "-c", script, str(repo.path)], stdout=subprocess.PIPE, text=True) as proc:
        try:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
            with pytest.raises(RepoBusy), repo.lock(timeout=0.1):
                pass
        finally:
            proc.kill()  # a holder that dies lets go
    with repo.lock(timeout=5):
        pass
