"""The public dataset as a git repository: layout, writing conversation files, committing, pushing and pulling.

Everything goes through the git command line, so reviewers' hooks, signing and credentials behave as in their own
git. The layout (also described in the dataset card this module writes):

    README.md                           dataset card with Hugging Face YAML front matter
    REVIEWING.md                        how to review: approve, reject, edit
    conversations/YYYY/MM/DD/<id>.json  one published conversation (YYYY/MM/<id>.json in older datasets)
    reviews/<id>/<reviewer>.json        one reviewer's verdict
    rounds/<n>.json                     what training round n used
    rounds/<n>-pairs.jsonl              its on-policy preference pairs, each naming its conversation

Several writers share one clone: the server's publishing loop, verdicts made on the review page, and `thresher
publish` run by hand. Each holds `lock()` (an exclusive `flock` on `.git/thresher.lock`) around its whole sequence of
writes, so no one's `git add` lands in another's commit and no rebase runs under another's feet.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from thresher.conversation import Record

BRANCH = "main"
# The layout: conversations/YYYY/MM/DD/<id>.json, reviews/<id>/<reviewer>.json, takedowns/<id>.json (tombstones).
CONVERSATIONS_DIR, REVIEWS_DIR, TAKEDOWNS_DIR = "conversations", "reviews", "takedowns"


class GitError(RuntimeError):
    """A git command failed; the message carries git's own words."""


class RepoBusy(GitError):
    """Another writer held the clone's lock for longer than we were willing to wait."""


# Lock files this thread holds, with how many times: a function that holds the lock may call one that takes it too.
_held = threading.local()


CARD = """\
---
license: {licence_id}
language:
- en
pretty_name: thresher conversations
tags:
- conversational
- synthetic-judgments
configs:
- config_name: default
  data_files:
  - split: train
    path: conversations/**/*.json
---

# thresher conversations

Conversations between people and a free language model, published by [thresher](https://pypi.org/project/thresher/)
after the model rated each one "out of 10" as fine-tuning data. Only conversations whose owners allowed publication,
that scored at or above the threshold, and that passed personal-data scrubbing and de-duplication are here.

- **Licence:** {licence}. Each file also names its licence.
- **Personal data** (e-mail addresses, phone numbers, card numbers, IP addresses, IBANs, secrets, postal addresses)
  was replaced by typed placeholders such as `<EMAIL>` before publication. If you find any that slipped through,
  please report it: the conversation will be taken down.
- **Layout:** `conversations/YYYY/MM/DD/<id>.json`, one conversation each, schema version 1 (field `schema`):
  `id`, `messages` (role, content), `feedback` (the user's thumbs up or down on replies, with their scrubbed
  reasons), `pairs` (preference pairs between versions of a reply, where there are any), `score`, `distribution`,
  `rationale`, `threshold` (the acceptance threshold it was published at), `flags`, `judge`, `rubric`, `model`,
  `licence`, `source`, `created_at`, `published_at`; `reviews/<id>/<reviewer>.json` (verdicts);
  `rounds/<n>.json` (training rounds) and `rounds/<n>-pairs.jsonl` (a round's preference pairs: the better and the
  worse of the model's own replies to a conversation's question, as the judge saw them).

```python
import datasets
ds = datasets.load_dataset("json", data_files="conversations/**/*.json")
```

See REVIEWING.md to review.
"""

REVIEWING = """\
# Reviewing

Every conversation here was chosen by a model. People decide whether it trains the next one.

- **Approve or reject:** add `reviews/<conversation id>/<your name>.json` containing
  `{"verdict": "approve" | "reject", "reason": "...", "score": 1-10 (optional), "time": "ISO 8601"}`
  and commit it under your own git identity (`thresher review` in a clone does this for you).
- **Correct:** edit the conversation file itself and commit; the edit is recorded and the conversation re-judged.
- A conversation trains the next round once it has enough approvals and no rejection. Rejected conversations stay
  visible with their reasons and never train.
"""


@dataclass
class Commit:
    sha: str
    message: str


def conversation_path(conv_id: str, created_at: datetime) -> str:
    """Where a conversation lives in the repository: sharded by day, so no directory grows past a day's
    conversations and a commit rewrites only today's small tree (with month directories, each commit rewrote a tree
    that grew with everything published that month: the cost of publishing grew with the dataset). Files published
    under the earlier month layout keep their paths; readers take `conversations/**/*.json`."""
    return f"conversations/{created_at:%Y}/{created_at:%m}/{created_at:%d}/{conv_id}.json"


def dump(record: dict[str, Any]) -> str:
    """The one byte-for-byte format of every JSON file in the dataset (stable keys, UTF-8, trailing newline)."""
    return json.dumps(record, ensure_ascii=False, indent=1, sort_keys=True) + "\n"


EMPTY_TREE = "4b825dc642cb6eb9a060e54bf8d69288fbee4904"  # git's tree of no files
_AUTHOR = re.compile(r"(.*?) <([^<>]*)>")
_SHA = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")


def _clean_message(message: str) -> str:
    """A commit message as `git commit -m` stores it: trailing spaces and leading, trailing and repeated blank
    lines dropped (git's "whitespace" clean-up), one newline at the end."""
    lines: list[str] = []
    for line in message.splitlines():
        line = line.rstrip()
        if line or (lines and lines[-1]):
            lines.append(line)
    while lines and not lines[-1]:
        lines.pop()
    return "\n".join(lines) + "\n"


class DatasetRepo:
    """A local clone of the dataset repository at `path`, with `remote` (any git URL) as origin."""

    def __init__(self, path: Path, remote: str | None = None) -> None:
        self.path = Path(path)
        self.remote = remote

    def git(self, *args: str, check: bool = True, env: dict[str, str] | None = None, input: str | None = None) -> str:
        proc = subprocess.run(
            ["git", *args], cwd=self.path, capture_output=True, text=True, input=input,
            env=os.environ | {"GIT_TERMINAL_PROMPT": "0"} | (env or {}),
        )
        if check and proc.returncode != 0:
            raise GitError(f"git {' '.join(args)}: {(proc.stderr or proc.stdout).strip()}")
        return proc.stdout.strip()

    # -- setting up ------------------------------------------------------------------------------------------

    def open(self, licence: str = "CC-BY-4.0") -> DatasetRepo:
        """Clone the remote (or start a repository) if there is no clone yet; make sure the card and the reviewing
        guide exist. Safe to call every time."""
        if not (self.path / ".git").exists():
            self._create()
        with self.lock():
            if not self.git("config", "user.email", check=False):
                # The publisher's own identity; reviewers commit under theirs.
                self.git("config", "user.email", "thresher@localhost")
                self.git("config", "user.name", "thresher")
            if not self.git("config", "core.splitIndex", check=False):
                # Each commit then rewrites the index's recent changes only, not all of a million entries.
                self.git("config", "core.splitIndex", "true")
            if self.has_commits() and self.git("rev-parse", "--abbrev-ref", "HEAD") != BRANCH:
                self.git("checkout", "-q", "-B", BRANCH)
            wrote = False
            for name, text in (("README.md", CARD.format(licence=licence, licence_id=licence.lower())),
                               ("REVIEWING.md", REVIEWING)):
                if not (self.path / name).exists():
                    (self.path / name).write_text(text, encoding="utf-8")
                    wrote = True
            if wrote:
                self.git("add", "README.md", "REVIEWING.md")
                self.git("commit", "-q", "-m", "Start the dataset: card and reviewing guide")
        return self

    def _create(self) -> None:
        """Clone the remote (or start a repository where there is none to clone) in a directory beside the clone's
        place and move it there once whole: a process killed half-way through leaves no half-made repository
        where the next run would take it for the clone, only a leftover that the next run clears."""
        import shutil
        import tempfile

        parent, name = self.path.parent, self.path.name
        parent.mkdir(parents=True, exist_ok=True)
        for left in parent.glob(f".{name}.making-*"):
            shutil.rmtree(left, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.making-", dir=parent))
        made = tmp / "repo"
        if self.remote:
            subprocess.run(["git", "clone", "-q", self.remote, str(made)], capture_output=True, text=True, check=False)
        if not (made / ".git").exists():
            made.mkdir(exist_ok=True)
            DatasetRepo(made).git("init", "-q", "-b", BRANCH)
            if self.remote:
                DatasetRepo(made).git("remote", "add", "origin", self.remote)
        if self.path.is_dir() and not any(self.path.iterdir()):
            self.path.rmdir()  # an empty directory made for it (by a user, or an older version)
        try:
            os.rename(made, self.path)
        except OSError as e:
            raise GitError(f"{self.path} exists and is not a git clone of the dataset: move it away ({e})") from None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def has_commits(self) -> bool:
        return bool(self.git("rev-parse", "--verify", "-q", "HEAD", check=False))

    # -- writing ---------------------------------------------------------------------------------------------

    def write(self, relpath: str, record: dict[str, Any]) -> Path:
        """Write one JSON file atomically (a temporary file renamed into place)."""
        target = self.path / relpath
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp")
        tmp.write_text(dump(record), encoding="utf-8")
        tmp.replace(target)
        return target

    def read(self, relpath: str, at: str | None = None) -> dict[str, Any]:
        if at is None:
            return json.loads((self.path / relpath).read_text(encoding="utf-8"))
        return json.loads(self.git("show", f"{at}:{relpath}"))

    # -- the layout, read at a commit (HEAD unless said) --------------------------------------------------------

    def config(self, key: str) -> str:
        """A git setting as this clone sees it ("" when unset)."""
        return self.git("config", key, check=False)

    def resolve(self, at: str) -> str:
        """The commit `at` names, in full; GitError saying so when it names none."""
        try:
            return self.git("rev-parse", "--verify", f"{at}^{{commit}}")
        except GitError:
            raise GitError(f"{at!r} is not a commit of the clone at {self.path} (pull first, or check the id)"
                           ) from None

    def files(self, under: str, at: str = "HEAD") -> list[str]:
        """Paths of every file under a directory at a commit (none in a clone without commits)."""
        if not self.has_commits():
            return []
        return [p for p in self.git("ls-tree", "-r", "--name-only", at, "--", under).splitlines() if p]

    def conversations(self, at: str = "HEAD") -> dict[str, str]:
        """conversation id -> path of every published conversation file at a commit."""
        return {p.rsplit("/", 1)[-1].removesuffix(".json"): p for p in self.files(CONVERSATIONS_DIR, at)
                if p.endswith(".json")}

    def record(self, path: str, at: str | None = None) -> Record:
        """The conversation record in a file (of the working tree, or at a commit); InvalidRecord (a ValueError,
        like broken JSON) when it holds none."""
        return Record.from_json(self.read(path, at))

    def takedowns(self, at: str = "HEAD") -> set[str]:
        """Ids with a tombstone in `takedowns/` at a commit."""
        return {p.rsplit("/", 1)[-1].removesuffix(".json") for p in self.files(TAKEDOWNS_DIR, at)
                if p.endswith(".json")}

    def last_commits(self, under: str, at: str = "HEAD") -> dict[str, str]:
        """path -> the newest commit (reachable from `at`) that touched it, for every path under `under`, in one
        call."""
        last: dict[str, str] = {}
        sha = ""
        for line in self.git("log", "--format=%x00%H", "--name-only", at, "--", under).splitlines():
            if line.startswith("\0"):
                sha = line[1:]
            elif line and line not in last:
                last[line] = sha
        return last

    def edited_since(self, sha: str, under: str = CONVERSATIONS_DIR) -> list[str]:
        """Files under `under` changed (not added or removed) between a commit and HEAD."""
        return self.git("diff", "--name-only", "--diff-filter=M", sha, "HEAD", "--", under).splitlines()

    def diff(self, sha: str, path: str) -> str:
        return self.git("diff", sha, "HEAD", "--", path)

    def last_change(self, path: str) -> tuple[str, str, datetime]:
        """The newest commit to touch a file at HEAD: its id, its author ("Name <email>") and time."""
        sha, author, when = self.git("log", "-1", "--format=%H%x00%an <%ae>%x00%aI", "HEAD", "--", path).split("\0")
        return sha, author, datetime.fromisoformat(when)

    def edited(self, under: str = CONVERSATIONS_DIR, at: str = "HEAD") -> list[str]:
        """Files under `under` that some commit up to `at` modified after adding them."""
        out = self.git("log", "--diff-filter=M", "--name-only", "--format=", at, "--", under)
        return sorted({p for p in out.splitlines() if p})

    def added_by(self, path: str, at: str = "HEAD") -> str:
        """The commit that first added a file (IndexError if none did)."""
        return self.git("log", "--diff-filter=A", "--format=%H", at, "--", path).split()[-1]

    def history(self, path: str) -> list[str]:
        """Every commit that touched a path, newest first."""
        return self.git("log", "--format=%H", "--", path).splitlines()

    def remove(self, path: str, recursive: bool = False) -> None:
        """Stage a file's (or a directory's) removal for the next commit."""
        self.git("rm", "-q", *(["-r"] if recursive else []), "--", path)

    def commit(self, paths: list[str], message: str, author: str | None = None) -> Commit | None:
        """Commit these paths (a path whose file is gone is removed), with whatever `git rm` staged; None when that
        holds no change. `author` ("Name <email>") is who made the change, when that is not the clone's own identity
        (which stays the committer).

        The index takes the paths (`update-index`), its cached trees give the new tree (`write-tree` writes only the
        directories that changed) and `commit-tree` + `update-ref` make the commit: what `git commit` does, less its
        re-stat of every file in the working tree, which in a dataset of a million files costs more than all the
        rest. The index and the working tree end as `git commit` leaves them. A clone with commit hooks or signing
        configured gets `git commit` itself, so those run."""
        if not paths:
            return None
        name_email = _AUTHOR.fullmatch(author) if author else None
        if (author and not name_email) or any((self.path / p).is_dir() for p in paths) or self._porcelain_only():
            return self._porcelain_commit(paths, message, author)
        parent, parent_tree = (self.git("rev-parse", "HEAD", "HEAD^{tree}", "--", check=False).split()
                               + ["", ""])[:2]
        if not _SHA.fullmatch(parent):  # no commits yet
            parent = parent_tree = ""
        self.git("update-index", "--add", "--remove", "--", *paths)
        # Every entry's object exists (HEAD's, or just written by update-index): checking each again, in a directory
        # of thousands, is a third of the tree's cost.
        tree = self.git("write-tree", "--missing-ok")
        if tree == (parent_tree or EMPTY_TREE):
            return None
        text = _clean_message(message)
        env = {"GIT_AUTHOR_NAME": name_email[1], "GIT_AUTHOR_EMAIL": name_email[2]} if name_email else None
        sha = self.git("commit-tree", tree, *(["-p", parent] if parent else []), input=text, env=env)
        subject = text.split("\n", 1)[0]
        self.git("update-ref", "-m", f"commit: {subject}" if parent else f"commit (initial): {subject}", "HEAD", sha,
                 parent)
        self.git("gc", "--auto", "--quiet")  # as `git commit` does: loose objects are packed now and then
        return Commit(sha, message)

    def _porcelain_only(self) -> bool:
        """Whether committing here must go through `git commit`: hooks it runs, or signing, are configured."""
        config = dict(line.partition(" ")[::2] for line in self.git(
            "config", "--get-regexp", r"^(commit\.gpgsign|core\.hookspath)$", check=False).splitlines())
        if config.get("commit.gpgsign", "false").lower() not in ("false", "no", "off", "0", ""):
            return True
        # A relative hooks path is the working tree's.
        hooks = self.path / os.path.expanduser(config.get("core.hookspath", ".git/hooks"))
        return any(os.access(hooks / h, os.X_OK)
                   for h in ("pre-commit", "prepare-commit-msg", "commit-msg", "post-commit"))

    def _porcelain_commit(self, paths: list[str], message: str, author: str | None) -> Commit | None:
        self.git("add", "--", *paths)
        if not self.git("diff", "--cached", "--name-only"):
            return None
        self.git("commit", "-q", "-m", message, *([f"--author={author}"] if author else []))
        return Commit(self.head(), message)

    @contextlib.contextmanager
    def lock(self, timeout: float | None = None) -> Iterator[None]:
        """Hold the clone's write lock: shared by threads and processes (an OS file lock, released if the holder
        dies), re-entrant within a thread. Waits without limit unless `timeout` (seconds) is given, then raises
        RepoBusy."""
        git_dir = self.path / ".git"
        if not git_dir.is_dir():
            raise GitError(f"no git clone at {self.path} (open() makes one)")
        key = str((git_dir / "thresher.lock").resolve())
        held: dict[str, int] = _held.__dict__.setdefault("files", {})
        if held.get(key):
            held[key] += 1
            try:
                yield
            finally:
                held[key] -= 1
            return
        with open(key, "a") as f:
            deadline = None if timeout is None else time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(f, fcntl.LOCK_EX | (fcntl.LOCK_NB if deadline is not None else 0))
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:  # type: ignore[operator]
                        raise RepoBusy(f"the dataset clone at {self.path} is busy (another publish or review "
                                       f"holds {key}); try again in a moment") from None
                    time.sleep(0.02)
            held[key] = 1
            try:
                yield
            finally:
                held.pop(key, None)
                fcntl.flock(f, fcntl.LOCK_UN)

    def head(self) -> str:
        return self.git("rev-parse", "HEAD")

    # -- sharing ---------------------------------------------------------------------------------------------

    def push(self) -> bool:
        """Push to origin; False (with the repository untouched) when the remote is down or refuses. A refusal
        because others pushed first is resolved by pulling (rebase) and pushing once more."""
        if not self.remote:
            return False
        # A push that succeeds moves origin/main too (the clone's fetch refspec maps it), so unpushed() stays right.
        if self._ok("push", "-q", "origin", f"HEAD:{BRANCH}"):
            return True
        try:
            self.pull()
        except GitError:
            return False
        return self._ok("push", "-q", "origin", f"HEAD:{BRANCH}")

    def _ok(self, *args: str) -> bool:
        proc = subprocess.run(["git", *args], cwd=self.path, capture_output=True, text=True,
                              env=os.environ | {"GIT_TERMINAL_PROMPT": "0"})
        return proc.returncode == 0

    def pull(self) -> None:
        """Bring in what reviewers pushed (rebasing our unpushed commits on top)."""
        if not self.remote:
            return
        self.git("fetch", "-q", "origin")
        # How far each side moved: nothing new there needs no rebase (which would re-stat every file to find that
        # out), and nothing new here needs only a fast-forward.
        theirs, _, ours = self.git("rev-list", "--left-right", "--count", f"origin/{BRANCH}...HEAD",
                                   check=False).partition("\t")
        if theirs == "0":
            return
        if ours == "0":
            self.git("merge", "-q", "--ff-only", f"origin/{BRANCH}")
            return
        if self.git("rev-parse", "--verify", "-q", f"origin/{BRANCH}", check=False):
            if self.has_commits():
                try:
                    self.git("rebase", "-q", f"origin/{BRANCH}")
                except GitError as e:  # a conflict: leave the clone as it was, not stuck mid-rebase
                    self.git("rebase", "--abort", check=False)
                    raise GitError(f"our unpushed commits conflict with the remote's; nothing was changed "
                                   f"({e})") from None
            else:
                self.git("checkout", "-q", "-B", BRANCH, f"origin/{BRANCH}")

    def unpushed(self) -> int:
        """How many local commits the remote does not have yet."""
        if not self.remote or not self.git("rev-parse", "--verify", "-q", f"origin/{BRANCH}", check=False):
            return int(self.git("rev-list", "--count", "HEAD")) if self.has_commits() else 0
        return int(self.git("rev-list", "--count", f"origin/{BRANCH}..HEAD"))
