"""Peer review in git: the verdict protocol, the quorum policy, reading verdicts and corrections into the store.

A verdict is the file `reviews/<conversation id>/<reviewer>.json` in the dataset repository:

    {"verdict": "approve" | "reject", "reason": "...", "score": 1-10 (optional), "time": "ISO 8601"}

committed under the reviewer's own git identity: the clone's `user.email`/`user.name`, or, on the server's review
page, the identity the operator gave with the reviewer's token (as the commit's author). The file name is the
reviewer: a slug of that identity. Each reviewer writes only their own files, so two reviewers never conflict, and a
push that loses a race is rebased and pushed again: no verdict is lost. Deleting one's verdict file withdraws it.

Editing a published conversation file is a correction. `sync` finds files whose content at HEAD differs from what
was published, keeps the diff in the store and leaves the conversation to be judged again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from thresher.conversation import InvalidRecord, Record
from thresher.dataset_repo import REVIEWS_DIR, DatasetRepo, GitError, dump
from thresher.store import Correction, NotFound, Review, Store

log = logging.getLogger("thresher.review")

VERDICTS = ("approve", "reject")
_SLUG = re.compile(r"^[a-z0-9](?:[a-z0-9._-]{0,62}[a-z0-9])?$")
_CONV_ID = re.compile(r"^[0-9A-Za-z]{1,26}$")

__all__ = ["Review", "Correction", "InvalidVerdict", "quorum", "reviewer_slug", "reviewer_author", "reviewer_identity",
           "read_verdicts", "verdicts_on", "write_verdict", "pending", "find_corrections", "sync", "SyncReport"]


class InvalidVerdict(ValueError):
    """A verdict file or value that does not follow the protocol; the message says why."""


# -- the protocol ----------------------------------------------------------------------------------------------


def reviewer_slug(identity: str) -> str:
    """A safe file stem from a git identity: `Ada Lovelace <ada@example.org>` or `ada@example.org` gives
    `ada-example.org`; `Ada Lovelace` gives `ada-lovelace`."""
    m = re.search(r"<([^>]*)>", identity)
    text = (m.group(1) if m else identity).strip().lower()
    slug = re.sub(r"[^a-z0-9._]+", "-", text).replace("..", ".")
    slug = slug.strip("-._")[:64].strip("-._")
    return check_reviewer(slug)


def check_reviewer(name: str) -> str:
    if not _SLUG.match(name) or ".." in name:
        raise InvalidVerdict(f"reviewer name {name!r} is not a safe slug (lower-case letters, digits, '.', '_', '-')")
    return name


def reviewer_author(identity: str) -> str:
    """A git author ("Name <email>") for an identity given as `Name <email>`, an e-mail address, or a bare name."""
    identity = " ".join(identity.split())
    if re.fullmatch(r"[^<>]+ <[^<>\s]*>", identity):
        return identity
    if re.fullmatch(r"[^<>\s]+@[^<>\s]+", identity):
        return f"{identity.split('@')[0]} <{identity}>"
    return f"{identity.replace('<', '').replace('>', '')} <>"


def reviewer_identity(repo: DatasetRepo) -> str:
    """The reviewer name of whoever commits in this clone: a slug of git's user.email, else user.name."""
    for key in ("user.email", "user.name"):
        value = repo.config(key)
        if value:
            return reviewer_slug(value)
    raise InvalidVerdict("this clone has no git identity: set `git config user.email you@example.org` "
                         "(verdicts are committed under your own name)")


def verdict_path(conv_id: str, reviewer: str) -> str:
    return f"{REVIEWS_DIR}/{conv_id}/{reviewer}.json"


def parse_verdict(conv_id: str, reviewer: str, obj: Any, commit_sha: str | None = None) -> Review:
    """Validate one verdict file's content; raises InvalidVerdict saying what is wrong."""
    if not _CONV_ID.match(conv_id):
        raise InvalidVerdict(f"{conv_id!r} is not a conversation id")
    check_reviewer(reviewer)
    if not isinstance(obj, dict):
        raise InvalidVerdict("not a JSON object")
    verdict = obj.get("verdict")
    if verdict not in VERDICTS:
        raise InvalidVerdict(f"verdict must be 'approve' or 'reject', not {verdict!r}")
    reason = obj.get("reason", "")
    if not isinstance(reason, str):
        raise InvalidVerdict("reason must be a string")
    if verdict == "reject" and not reason.strip():
        raise InvalidVerdict("a rejection needs a reason")
    score = obj.get("score")
    if score is not None and (isinstance(score, bool) or not isinstance(score, int) or not 1 <= score <= 10):
        raise InvalidVerdict(f"score must be a whole number from 1 to 10, not {score!r}")
    when = obj.get("time")
    try:
        time = datetime.fromisoformat(when)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise InvalidVerdict(f"time must be an ISO 8601 date and time, not {when!r}") from None
    time = time.replace(tzinfo=UTC) if time.tzinfo is None else time.astimezone(UTC)
    return Review(conv_id, reviewer, verdict, reason, time, score, commit_sha)


def verdict_record(review: Review) -> dict[str, Any]:
    """What a verdict file holds (the REVIEWING.md format)."""
    rec: dict[str, Any] = {"verdict": review.verdict, "reason": review.reason,
                           "time": review.time.isoformat(timespec="seconds")}
    if review.score is not None:
        rec["score"] = review.score
    return rec


def quorum(verdicts: Iterable[Review | str], min_approvals: int = 1) -> str:
    """'rejected' if anyone rejected; 'approved' with at least `min_approvals` approvals; else 'pending'."""
    kinds = [v if isinstance(v, str) else v.verdict for v in verdicts]
    if "reject" in kinds:
        return "rejected"
    return "approved" if kinds.count("approve") >= min_approvals else "pending"


# -- reading and writing in a clone -------------------------------------------------------------------------------


@dataclass
class VerdictsRead:
    verdicts: list[Review] = field(default_factory=list)
    problems: list[tuple[str, str]] = field(default_factory=list)  # (path, why) of files skipped


def read_verdicts(repo: DatasetRepo, at: str = "HEAD") -> VerdictsRead:
    """Every verdict in the repository at a commit (HEAD by default). Malformed files are reported in `problems`
    and skipped, never raised."""
    result = VerdictsRead()
    paths = repo.files(REVIEWS_DIR, at)
    commits = repo.last_commits(REVIEWS_DIR, at) if paths else {}
    for path in paths:
        parts = path.split("/")
        if len(parts) != 3 or not parts[2].endswith(".json"):
            result.problems.append((path, "not reviews/<conversation id>/<reviewer>.json"))
            continue
        try:
            result.verdicts.append(parse_verdict(parts[1], parts[2].removesuffix(".json"), repo.read(path, at),
                                                 commits.get(path)))
        except (ValueError, GitError) as e:  # InvalidVerdict and JSONDecodeError are ValueErrors
            result.problems.append((path, str(e)))
    for path, why in result.problems:
        log.warning("skipped verdict %s: %s", path, why)
    return result


def verdicts_on(repo: DatasetRepo, conv_id: str, at: str = "HEAD") -> list[Review]:
    """Every well-formed verdict on one conversation at a commit (what a reviewer sees others said)."""
    if not _CONV_ID.match(conv_id):
        return []
    found = []
    for path in repo.files(f"{REVIEWS_DIR}/{conv_id}", at):
        parts = path.split("/")
        if len(parts) == 3 and parts[2].endswith(".json"):
            try:
                found.append(parse_verdict(conv_id, parts[2].removesuffix(".json"), repo.read(path, at=at)))
            except (ValueError, GitError):
                continue  # reported by sync; nothing to show here
    return found


@dataclass
class Written:
    review: Review
    commit: str | None  # None: the same verdict was already committed
    pushed: bool


def write_verdict(repo: DatasetRepo, conv_id: str, verdict: str, reason: str = "", score: int | None = None,
                  reviewer: str | None = None, push: bool = True, author: str | None = None) -> Written:
    """Write this clone's reviewer's verdict (or `reviewer`'s, committed with `author` as the commit's author),
    commit it, and push, holding the clone's lock. A push that loses a race is rebased and pushed again; one that
    still fails leaves the commit for the next push."""
    reviewer = check_reviewer(reviewer) if reviewer else reviewer_identity(repo)
    review = parse_verdict(conv_id, reviewer, {"verdict": verdict, "reason": reason, "score": score,
                                               "time": datetime.now(UTC).isoformat(timespec="seconds")})
    path = verdict_path(conv_id, reviewer)
    word = "Approve" if verdict == "approve" else "Reject"
    first_line = reason.strip().splitlines()[0][:60] if reason.strip() else ""
    with repo.lock():
        repo.write(path, verdict_record(review))
        commit = repo.commit([path], f"{word} {conv_id}" + (f": {first_line}" if first_line else ""), author=author)
        pushed = False
        if push and repo.remote:
            for _ in range(3):  # others may push between our rebase and our push
                if pushed := repo.push():
                    break
    return Written(review, commit.sha if commit else None, pushed)


def pending(repo: DatasetRepo, reviewer: str) -> list[str]:
    """Paths of the conversations this reviewer has not given a verdict on yet, oldest first (ids are ULIDs)."""
    mine = {p.split("/")[1] for p in repo.files(REVIEWS_DIR) if p.endswith(f"/{reviewer}.json")}
    return [path for cid, path in sorted(repo.conversations().items()) if cid not in mine]


def commit_correction(repo: DatasetRepo, path: str, push: bool = True) -> str | None:
    """Commit an edited conversation file as a correction (the edited file must still be valid JSON with the same
    id). Returns the commit, or None if nothing changed."""
    conv_id = path.rsplit("/", 1)[-1].removesuffix(".json")
    try:
        rec = repo.read(path)
    except ValueError as e:
        raise InvalidVerdict(f"{path} is no longer valid JSON: {e}") from None
    if not isinstance(rec, dict) or rec.get("id") != conv_id:
        raise InvalidVerdict(f"{path} must stay a JSON object with \"id\": \"{conv_id}\"")
    try:
        Record.from_json(rec)
    except InvalidRecord as e:
        raise InvalidVerdict(f"{path} is no longer a conversation record: {e}") from None
    with repo.lock():
        commit = repo.commit([path], f"Correct {conv_id}")
        if commit and push and repo.remote:
            for _ in range(3):
                if repo.push():
                    break
    return commit.sha if commit else None


def show_record(out: Any, rec: Record, where: str) -> None:
    """One published conversation for a reviewer, on the rich console `out`: score, the judge's rationale and
    flags, then the messages with the user's thumbs on them."""
    from rich.panel import Panel
    from rich.text import Text

    thumbs = {f["message"]: f for f in rec.feedback if isinstance(f, dict) and
              isinstance(f.get("message"), int) and f.get("rating") in ("up", "down")}
    out.rule(f"{where}  {rec.id}  score {'-' if rec.score is None else f'{rec.score:.2f}'}")
    if rec.rationale:
        out.print(Text(f"judge: {rec.rationale}", style="italic"))
    if rec.flags:
        out.print(Text("flags: " + ", ".join(map(str, rec.flags)), style="yellow"))
    for i, m in enumerate(rec.messages):
        f = thumbs.get(i)
        note = None if f is None else f"user: thumbs {f['rating']}" + (f" ({f['reason']})" if f.get("reason") else "")
        out.print(Panel(Text(m["content"]), title=m["role"], title_align="left",
                        subtitle=None if note is None else Text(note), subtitle_align="right"))


class ReviewSession:
    """One reviewer's pass over their clone of the dataset, as `thresher review` runs it: what is left for them to
    review (oldest first), each conversation's record, and what they can do to one: approve or reject it (a verdict
    committed under their identity and pushed), or correct its file (an edit committed as a correction). Counts
    what they did. Raises GitError or InvalidVerdict (a path that is no clone, a reviewer name that is no slug)."""

    def __init__(self, path: Path, reviewer: str | None = None) -> None:
        if not (path / ".git").exists():
            raise GitError(f"{path} is not a git clone of the dataset (`git clone URL` first)")
        remote = DatasetRepo(path).git("remote", "get-url", "origin", check=False) or None
        self.repo = DatasetRepo(path, remote)
        self.reviewer = reviewer_identity(self.repo) if reviewer is None else check_reviewer(reviewer)
        self.repo.pull()
        self.todo = pending(self.repo, self.reviewer)
        self.counts = {"approved": 0, "rejected": 0, "skipped": 0, "corrected": 0}

    def record(self, path: str) -> Record:
        """The conversation as its file holds it now (InvalidRecord if an edit pushed by someone broke it)."""
        return self.repo.record(path)

    def file(self, path: str) -> Path:
        """The file to open in an editor for a correction."""
        return self.repo.path / path

    def verdict(self, path: str, approve: bool, reason: str = "") -> str:
        """Approve or reject; says what became of the verdict (pushed, or committed and waiting for a push)."""
        written = write_verdict(self.repo, path.rsplit("/", 1)[-1].removesuffix(".json"),
                                "approve" if approve else "reject", reason, reviewer=self.reviewer)
        word = "approved" if approve else "rejected"
        self.counts[word] += 1
        return word + (", pushed" if written.pushed else
                       ", committed (not pushed yet: it goes with your next push)" if self.repo.remote else
                       ", committed (no remote)")

    def correct(self, path: str) -> str | None:
        """Commit the edited file as a correction (None when nothing changed). An edit that breaks the record is
        undone (the file is as it was) and refused with InvalidVerdict saying why."""
        try:
            sha = commit_correction(self.repo, path)
        except InvalidVerdict:
            self.repo.git("checkout", "--", path)
            raise
        if sha:
            self.counts["corrected"] += 1
        return sha

    def skip(self) -> None:
        self.counts["skipped"] += 1

    def summary(self) -> str:
        return ", ".join(f"{k} {v}" for k, v in self.counts.items())

    def run(self, show: Callable[[str, str], None], ask: Callable[[str, str | None], str],
            edit: Callable[[Path], None], say: Callable[[str], None]) -> str:
        """The review, one conversation at a time, oldest first: `show(path, "i/n")` it, then `ask` for approve,
        reject (and a reason), skip, edit or quit until the answer is one of those. An edit opens the file in
        `edit`, commits the change as a correction, shows the corrected conversation and asks again; an edit that
        breaks the record is undone and said so. Returns the summary. Raises GitError or InvalidVerdict from a
        verdict that cannot be written."""
        for i, path in enumerate(self.todo, 1):
            where = f"{i}/{len(self.todo)}"
            show(path, where)
            while True:
                choice = ask("[a]pprove, [r]eject, [s]kip, [e]dit, [q]uit", "s").strip().lower()[:1]
                if choice == "q":
                    return self.summary()
                if choice == "s":
                    self.skip()
                    break
                if choice in ("a", "r"):
                    say(self.verdict(path, choice == "a", ask("Reason", None) if choice == "r" else ""))
                    break
                if choice != "e":
                    say("answer a, r, s, e or q")
                    continue
                edit(self.file(path))
                try:
                    sha = self.correct(path)
                except InvalidVerdict as e:
                    say(f"edit not kept: {e}")
                    continue
                if sha:
                    say(f"correction committed ({sha[:12]})")
                    show(path, where)
        return self.summary()


# -- corrections and sync into the store ---------------------------------------------------------------------------


def find_corrections(store: Store, repo: DatasetRepo) -> list[Correction]:
    """Published conversation files whose content at HEAD differs from what was published, each with its diff.
    Files removed at HEAD are not corrections (takedowns are handled elsewhere)."""
    found: list[Correction] = []
    by_commit: dict[str, dict[str, str]] = {}
    for p in store.publications(state="published"):
        if p.path and p.commit_sha:
            by_commit.setdefault(p.commit_sha, {})[p.path] = p.conversation_id
    for sha, paths in by_commit.items():
        try:  # one diff per publishing commit, not one per file
            changed = repo.edited_since(sha)
        except GitError as e:
            log.warning("cannot compare with publishing commit %s: %s", sha[:12], e)
            continue
        for path in changed:
            if path not in paths:
                continue
            last, author, when = repo.last_change(path)
            found.append(Correction(paths[path], last, repo.diff(sha, path), when.astimezone(UTC), author))
    return found


@dataclass
class SyncReport:
    commit: str | None = None  # HEAD that was read
    new: int = 0  # verdicts not in the store before
    updated: int = 0  # verdicts changed since the last sync
    removed: int = 0  # verdicts withdrawn (their files deleted) since the last sync
    approved: int = 0  # published conversations by quorum
    rejected: int = 0
    pending: int = 0
    corrections: int = 0  # newly recorded edits (each leaves its conversation to be judged again)
    problems: list[tuple[str, str]] = field(default_factory=list)  # (path, why) skipped

    def lines(self, min_approvals: int) -> list[str]:
        """What `thresher sync` says it read (the files it skipped are in `problems`)."""
        return [
            f"verdicts: {self.new} new, {self.updated} updated; corrections: {self.corrections} new",
            f"published conversations: {self.approved} approved, {self.rejected} rejected, {self.pending} pending "
            f"(quorum {min_approvals})"]


def sync(store: Store, repo: DatasetRepo, min_approvals: int = 1) -> SyncReport:
    """Pull the remote, read every verdict and every edit of a published conversation into the store, and count
    the published conversations by quorum. A verdict whose file is gone at HEAD (withdrawn, or taken down with its
    conversation) leaves the store; a file that is there but malformed keeps its last good verdict. Running it
    again with nothing new changes nothing."""
    with repo.lock():
        repo.pull()
        report = SyncReport(commit=repo.head() if repo.has_commits() else None)
        read = read_verdicts(repo)
    report.problems.extend(read.problems)
    report.new, report.updated, unknown = store.save_reviews(read.verdicts)
    if report.commit is not None:  # an empty clone says nothing about what was withdrawn
        present = {(r.conversation_id, r.reviewer) for r in read.verdicts}
        for path, _why in read.problems:
            parts = path.split("/")
            if len(parts) == 3:
                present.add((parts[1], parts[2].removesuffix(".json")))
        report.removed = store.remove_reviews([(r.conversation_id, r.reviewer) for r in store.reviews()
                                               if (r.conversation_id, r.reviewer) not in present])
    for r in unknown:
        report.problems.append((verdict_path(r.conversation_id, r.reviewer), "no such conversation in the store"))
    for c in find_corrections(store, repo):
        try:
            report.corrections += store.save_correction(c)
        except NotFound:
            report.problems.append((c.conversation_id, "corrected conversation is not in the store"))
    by_conv: dict[str, list[Review]] = {}
    for r in store.reviews():
        by_conv.setdefault(r.conversation_id, []).append(r)
    for p in store.publications(state="published"):
        state = quorum(by_conv.get(p.conversation_id, []), min_approvals)
        setattr(report, state, getattr(report, state) + 1)
    return report


# -- the reviewed dataset at a commit -----------------------------------------------------------------------------


@dataclass
class Manifest:
    commit: str
    min_approvals: int
    conversations: int  # files at the commit
    approved: int  # written to data.jsonl
    rejected: int
    pending: int
    taken_down: int  # excluded by a tombstone, whenever it was made
    sha256: str  # of data.jsonl

    def to_json(self) -> str:
        return dump(asdict(self))

    def lines(self, out: Path) -> list[str]:
        """What `thresher dataset build` says about what it wrote to `out`."""
        return [f"commit {self.commit}: {self.approved} approved of {self.conversations} ({self.rejected} rejected, "
                f"{self.pending} pending, {self.taken_down} taken down)",
                f"wrote {out / 'data.jsonl'} (sha256 {self.sha256[:16]}…) and {out / 'manifest.json'}"]


@dataclass
class Reviewed:
    """A published conversation at a commit, its verdicts there, and what they decide (`quorum`)."""

    id: str
    path: str
    verdicts: list[Review]
    state: str  # approved | rejected | pending


def reviewed(repo: DatasetRepo, at: str = "HEAD", min_approvals: int = 1) -> tuple[str, list[Reviewed], int]:
    """The reviewed data at a commit: every conversation published at `at` and not taken down (at `at` or at HEAD,
    so that one taken down later never trains), by id, with its verdicts and their outcome by the one verdict
    policy, `quorum`. Returns the commit in full, them, and how many were left out as taken down. The chat model's
    data (`build_dataset`) and the judge's (`thresher.train.data.rows_from_verdicts`) both come from here."""
    sha = repo.resolve(at)
    paths = repo.conversations(sha)
    by_conv: dict[str, list[Review]] = {}
    for v in read_verdicts(repo, sha).verdicts:
        by_conv.setdefault(v.conversation_id, []).append(v)
    gone = repo.takedowns(sha) | repo.takedowns("HEAD")
    items = [Reviewed(cid, paths[cid], by_conv.get(cid, []), quorum(by_conv.get(cid, []), min_approvals))
             for cid in sorted(paths) if cid not in gone]
    return sha, items, len(paths) - len(items)


def build_dataset(repo: DatasetRepo, at: str, out: Path, min_approvals: int = 1) -> Manifest:
    """The approved conversations at commit `at` (`reviewed`) as training-ready JSONL (`Record.training_json`: id,
    messages, and pairs where the conversation carries preference pairs; a line each, by id) plus `manifest.json`.
    Byte-for-byte reproducible: nothing depends on the time, the machine or the store; the one thing read beyond
    `at` is the takedown tombstones at HEAD, so a conversation taken down later never trains."""
    sha, items, removed = reviewed(repo, at, min_approvals)
    counts = {state: sum(i.state == state for i in items) for state in ("approved", "rejected", "pending")}
    lines = [json.dumps(repo.record(i.path, sha).training_json(), ensure_ascii=False, sort_keys=True)
             for i in items if i.state == "approved"]
    data = "".join(line + "\n" for line in lines).encode("utf-8")
    out.mkdir(parents=True, exist_ok=True)
    (out / "data.jsonl").write_bytes(data)
    manifest = Manifest(sha, min_approvals, len(items) + removed, counts["approved"], counts["rejected"],
                        counts["pending"], removed, hashlib.sha256(data).hexdigest())
    (out / "manifest.json").write_text(manifest.to_json(), encoding="utf-8")
    return manifest
