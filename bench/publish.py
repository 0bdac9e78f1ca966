"""Publishing into a dataset repository that already holds many conversations: thresher against raw git, at one size
or several.

What it measures, in one process on one machine, with real git and a real SQLite store in a temporary directory:

* set-up (not timed against anything): N existing conversations (`--existing`, default 100,000; or each of
  `--sizes`, smallest first, the store and repository growing from one size to the next), generated in chunks. The
  first `--git-max` of them (default 100,000) are also written as `conversations/YYYY/MM/DD/<id>.json` files shaped like
  `Conversation.to_record` output (via `thresher.dataset_repo.dump`), spread over the past two years, committed
  and pushed to a local bare remote (`git init --bare -b main`); the clone is then given the remote's pack (as a fresh
  clone would hold it) and `gc.auto=0`, so that no side pays for a repack the other triggered. Every existing
  conversation has its store rows (conversations, messages, judgments, publications: published and pushed, with the
  dedup keys thresher keeps, and its band rows in the near-duplicate index, computed by thresher's own
  `Deduplicator` and `band_keys` in `--jobs` processes) inserted with SQLAlchemy Core bulk inserts after
  `Store.migrate()`. Then, at each size, M new ended conversations judged 9 (`--new`, default 2,000; distinct random
  texts, one in ten carrying an e-mail address for the scrubber) go in the same way, and 50 more later.
* bulk: `thresher.flywheel.publish(store, repo, threshold=8.0, daily_cap=10**9)` called until the M new
  conversations are published (one call decides at most `Store.undecided`'s limit, 1,000, so M=2,000 takes two
  calls); conversations/second = M / total seconds of those calls.
* batch: 50 more conversations, one `publish` call, seconds: what `thresher serve` publishes each minute.
* baseline (the floor cost of the same git work without thresher), run just before each thresher measure in the same
  repository and remote: write the same number of JSON files of the same size (each the very record thresher writes,
  with a different id so git stores new blobs), `git add -- <paths>`, `git commit -q`, `git push -q origin
  HEAD:main`, as the same number of commits as thresher makes. Ratio printed: thresher's rate / raw git's rate.
  (thresher commits through git's plumbing, `DatasetRepo.commit`, which skips `git commit`'s re-stat of every file
  in the tree: it can beat this floor, and more so the bigger the tree.)
* stage breakdown of every thresher call, by wrapping (in this bench only) the functions `publish` calls: the dedup
  index's SQL look-ups, MinHashing the new conversations, loading candidates, scrubbing, store writes (with the band
  rows), writing files, git commit (index, tree, commit), git push, git pull, and the rest. Each stage's time excludes
  the stages it calls.

Goals printed beside the results: >= 500 conversations/s in bulk; a batch within 2x raw git's time; the batch time at
the largest size within 1.5x of that at the smallest.

A size above `--git-max` has its store and index at that size but a git tree of `--git-max` files (plus what the
measures add): thresher's own work is measured at full size, git's (thresher's and raw git's alike) at the smaller
tree. The output says so wherever it applies: the batch time there is a measured extrapolation, not a measurement of
a repository that size.

Run:
    python bench/publish.py [--existing N | --sizes N1,N2,...] [--new M] [--git-max G] [--jobs J] [--json PATH]
                            [--keep DIR]
    python bench/publish.py --sizes 10000,100000,1000000
The defaults take a few minutes on a 2-core machine, most of it set-up, which grows linearly with the largest size
(MinHash signatures and bulk inserts), so 1,000,000 takes tens of minutes; the set-up rate is printed.
--keep DIR builds everything in DIR (which must not exist) and leaves it there for inspection.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from cpu_load import OtherLoad
from rich.console import Console
from rich.table import Table
from ulid import ULID

import thresher.flywheel as flywheel
from thresher.conversation import Conversation, Message, messages_hash
from thresher.curate import Deduplicator, band_keys, scrub, scrub_text
from thresher.dataset_repo import DatasetRepo, conversation_path, dump
from thresher.judge import Judgment
from thresher.store import Store
from thresher.store.tables import ConversationRow, DedupBandRow, JudgmentRow, MessageRow, PublicationRow

GOAL_PER_S = 500.0
GOAL_BATCH_VS_RAW = 2.0  # a batch within 2x raw git's time
GOAL_FLAT = 1.5  # the batch at the largest size within 1.5x of the smallest
DEFAULT_EXISTING = 100_000
DEFAULT_GIT_MAX = 100_000
DEFAULT_NEW = 2_000
BATCH = 50
JUDGE_ID, RUBRIC = "judge@bench", "rubric-bench"
RATIONALE = "A clear, correct and complete answer to what the user asked."
DISTRIBUTION = {str(i): p for i, p in zip(range(1, 11), [0, 0, 0, 0, 0, 0, 0.02, 0.18, 0.6, 0.2], strict=True)}
CHUNK_ROWS = 5_000  # rows a bulk-insert statement
GROW_CHUNK = 20_000  # existing conversations generated, hashed and inserted at a time (memory stays bounded)


# ---------------------------------------------------------------------------------------------------- data


class Texts:
    """Distinct, English-looking random texts: pseudo-words from syllables, so no two conversations share more than
    a stray word 3-gram and none is a near duplicate of another."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        syll = [c + v for c in "bcdfghjklmnprstvwz" for v in ("a", "e", "i", "o", "u", "ai", "ou")]
        words: set[str] = set()
        while len(words) < 6000:
            words.add("".join(self.rng.choice(syll) for _ in range(self.rng.choice((1, 2, 2, 3)))))
        self.words = sorted(words)

    def sentence_run(self, n_words: int) -> str:
        out, i = [], 0
        while i < n_words:
            k = min(n_words - i, self.rng.randint(6, 18))
            s = " ".join(self.rng.choices(self.words, k=k))
            out.append(s[0].upper() + s[1:] + self.rng.choice(".....?!"))
            i += k
        return " ".join(out)

    def conversation(self, created_at: datetime, pii: bool = True) -> Conversation:
        user = self.sentence_run(self.rng.randint(12, 60))
        if pii and self.rng.random() < 0.1:
            user += f" Write to me at {self.rng.choice(self.words)}@example.org."
        answer = self.sentence_run(self.rng.randint(80, 320))
        cid = str(ULID.from_datetime(created_at))
        return Conversation(id=cid, messages=[Message("user", user, created_at=created_at),
                                              Message("assistant", answer, created_at=created_at)],
                            created_at=created_at, updated_at=created_at, ended_at=created_at, end_reason="button",
                            status="judged", publish_allowed=True, client_hash="c" * 32, owner_hash="o" * 32,
                            model_version="bench@1")


def judgment(at: datetime) -> Judgment:
    return Judgment(score=9.0, status="ok", judge_id=JUDGE_ID, rubric_hash=RUBRIC, distribution=DISTRIBUTION,
                    rationale=RATIONALE, created_at=at)


def record(conv: Conversation, j: Judgment, scrubbed: bool = True) -> dict[str, Any]:
    """What thresher writes for this conversation, via its own `Conversation.to_record` (`scrubbed=False`: the
    texts are known to hold nothing to scrub, so skip the scrubber's cost)."""
    if not scrubbed:
        return conv.to_record(j, rationale=j.rationale).to_json()
    clean, _ = scrub(conv)
    return clean.to_record(j, rationale=scrub_text(j.rationale or "")[0]).to_json()


def insert_rows(store: Store, convs: list[Conversation], published: dict[str, tuple[str | None, str | None]] | None,
                keys: dict[str, tuple[str, bytes]] | None = None) -> None:
    """Bulk-insert conversations, their messages and judgments, and (when `published` maps id -> (path, sha))
    publication rows: published and pushed, with their dedup keys (`keys`: id -> (hash, signature)) and band rows, as
    thresher keeps them. A few big transactions, not one Store call per row."""
    c_rows, m_rows, j_rows, p_rows, b_rows = [], [], [], [], []
    with store.engine.connect() as conn:  # messages form a tree: ids are given here so parents and heads can be
        next_id = (conn.execute(sa.select(sa.func.max(MessageRow.id))).scalar() or 0) + 1
    for conv in convs:
        msgs = conv.to_openai()
        ids = list(range(next_id, next_id + len(conv.messages)))
        next_id += len(ids)
        c_rows.append(dict(id=conv.id, created_at=conv.created_at, updated_at=conv.updated_at,
                           ended_at=conv.ended_at, end_reason=conv.end_reason,
                           status="published" if published else "judged", publish_allowed=True,
                           licence=conv.licence, model_version=conv.model_version, client_hash=conv.client_hash,
                           owner_hash=conv.owner_hash, source=conv.source, tail_hash=messages_hash(msgs),
                           head_id=ids[-1] if ids else None))
        for i, m in enumerate(conv.messages):
            m_rows.append(dict(id=ids[i], conversation_id=conv.id, parent_id=ids[i - 1] if i else None, position=i,
                               role=m.role, content=m.content, status=m.status,
                               finish_reason="stop" if m.role == "assistant" else None,
                               prompt_tokens=None, completion_tokens=None, created_at=m.created_at))
        j = judgment(conv.created_at)
        j_rows.append(dict(conversation_id=conv.id, judge_id=j.judge_id, rubric_hash=j.rubric_hash, status=j.status,
                           method=j.method, score=j.score, distribution=j.distribution, rationale=j.rationale,
                           flags=[], error=None, created_at=j.created_at))
        if published:
            path, sha = published[conv.id]
            h, sig = keys[conv.id] if keys else (None, None)
            p_rows.append(dict(conversation_id=conv.id, state="published", reason=None, path=path, commit_sha=sha,
                               pushed=True, score=j.score, judge_id=j.judge_id, pii_counts={}, dedup_hash=h,
                               minhash=sig, created_at=conv.created_at, updated_at=conv.created_at))
            if sig is not None:
                b_rows.extend(dict(band_hash=k, conversation_id=conv.id) for k in set(band_keys(sig)))
    b_rows.sort(key=lambda r: r["band_hash"])  # in key order: each insert lands next to the last, not anywhere
    for table, rows in ((ConversationRow.__table__, c_rows), (MessageRow.__table__, m_rows),
                        (JudgmentRow.__table__, j_rows), (PublicationRow.__table__, p_rows),
                        (DedupBandRow.__table__, b_rows)):
        with store.engine.begin() as conn:
            for start in range(0, len(rows), CHUNK_ROWS):
                conn.execute(sa.insert(table), rows[start:start + CHUNK_ROWS])


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()


def _signatures(items: list[tuple[str, list[tuple[str, str]]]]) -> list[tuple[str, bytes]]:
    """Dedup keys (normalised hash, MinHash signature) of conversations given as (id, [(role, content)]), computed
    by thresher's own Deduplicator; run in worker processes."""
    dedup = Deduplicator()  # one per chunk: it caches each conversation's keys
    return [dedup.keys(Conversation(id=cid, messages=[Message(r, c) for r, c in msgs])) for cid, msgs in items]


@dataclass
class World:
    """The store and repository the bench grows: `existing` publications in the store and index, of which `in_git`
    also have files in the git tree (set-up's; the measures add more)."""

    root: Path
    store: Store
    repo: DatasetRepo
    texts: Texts
    existing: int = 0
    in_git: int = 0
    measured_files: int = 0  # files the measures added (thresher's and raw git's)


def open_world(root: Path, texts: Texts) -> World:
    remote, clone = root / "remote.git", root / "clone"
    git(root, "init", "-q", "--bare", "-b", "main", str(remote))
    repo = DatasetRepo(clone, str(remote)).open()
    git(clone, "config", "gc.auto", "0")
    git(clone, "push", "-q", "origin", "HEAD:main")
    store = Store(f"sqlite:///{root / 'thresher.db'}")
    store.migrate()
    return World(root, store, repo, texts)


def grow(world: World, target: int, git_max: int, jobs: int) -> dict[str, float]:
    """Add existing (published) conversations until the store holds `target`; the first `git_max` of all of them
    also go into the git tree. Returns seconds by set-up step."""
    times: dict[str, float] = defaultdict(float)
    texts, clone = world.texts, world.repo.path
    now = datetime.now(UTC)
    span = timedelta(days=730).total_seconds()
    new_files = 0
    with ProcessPoolExecutor(max_workers=jobs) if jobs > 1 else _Inline() as pool:
        while world.existing < target:
            k = min(GROW_CHUNK, target - world.existing)
            t = time.perf_counter()
            convs = [texts.conversation(now - timedelta(days=2, seconds=texts.rng.random() * span), pii=False)
                     for _ in range(k)]
            times["generate texts"] += time.perf_counter() - t

            t = time.perf_counter()
            to_git = max(0, min(k, git_max - world.in_git))
            paths: dict[str, tuple[str | None, str | None]] = {}
            for i, conv in enumerate(convs):
                path = conversation_path(conv.id, conv.created_at)
                paths[conv.id] = (path if i < to_git else None, None)
                if i < to_git:
                    rec = record(conv, judgment(conv.created_at), scrubbed=False)
                    rec["published_at"] = (conv.created_at + timedelta(hours=1)).isoformat(timespec="seconds")
                    target_file = clone / path
                    target_file.parent.mkdir(parents=True, exist_ok=True)
                    target_file.write_text(dump(rec), encoding="utf-8")
            times["write files"] += time.perf_counter() - t

            t = time.perf_counter()
            items = [(c.id, [(m.role, m.content) for m in c.messages]) for c in convs]
            per = 1000
            keys = dict(zip([c.id for c in convs],
                            [kv for part in pool.map(_signatures, [items[i:i + per] for i in range(0, k, per)])
                             for kv in part], strict=True))
            times[f"MinHash signatures ({jobs} process{'es' if jobs > 1 else ''})"] += time.perf_counter() - t

            t = time.perf_counter()
            insert_rows(world.store, convs, paths, keys)
            times["store rows + dedup index"] += time.perf_counter() - t
            world.existing += k
            world.in_git += to_git
            new_files += to_git

    if new_files:
        t = time.perf_counter()
        git(clone, "add", "conversations")
        git(clone, "commit", "-q", "-m", f"Publish {new_files} conversation(s) (bench set-up)")
        sha = git(clone, "rev-parse", "HEAD")
        with world.store.engine.begin() as conn:
            p = PublicationRow.__table__
            conn.execute(sa.update(p).where(p.c.commit_sha.is_(None), p.c.path.is_not(None)).values(commit_sha=sha))
        times["git add + commit"] += time.perf_counter() - t
        t = time.perf_counter()
        git(clone, "-c", "pack.window=0", "push", "-q", "origin", "HEAD:main")  # no delta search: set-up only
        git(clone, "fetch", "-q", "origin")
        # Give the clone the remote's pack and drop its loose objects: what a fresh clone of the remote holds.
        remote = world.root / "remote.git"
        pack_dir = clone / ".git" / "objects" / "pack"
        for f in (remote / "objects" / "pack").iterdir():
            if not (pack_dir / f.name).exists():
                shutil.copy2(f, pack_dir / f.name)
        git(clone, "prune-packed")
        times["git push + pack"] += time.perf_counter() - t
    return dict(times)


class _Inline:
    """A stand-in for a process pool with one job: map in this process."""

    def __enter__(self) -> _Inline:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def map(self, fn: Callable[[Any], Any], items: list[Any]) -> Iterator[Any]:
        return map(fn, items)


# ---------------------------------------------------------------------------------------------------- stages


class Stages:
    """Exclusive time by stage: wrap callables; a stage's time leaves out the wrapped stages it calls."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self._stack: list[float] = []  # time spent in children of each open stage

    def wrap(self, fn: Callable[..., Any], name: str) -> Callable[..., Any]:
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            self._stack.append(0.0)
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent = time.perf_counter() - t
                children = self._stack.pop()
                self.seconds[name] += spent - children
                self.calls[name] += 1
                if self._stack:
                    self._stack[-1] += spent
        return wrapped

    def reset(self) -> None:
        self.seconds.clear()
        self.calls.clear()


@contextmanager
def instrumented(store: Store, repo: DatasetRepo, stages: Stages) -> Iterator[None]:
    """Wrap what `publish` calls; restore everything afterwards."""
    patches: list[tuple[Any, str, Any]] = [
        (store, "undecided", stages.wrap(store.undecided, "store: load candidates")),
        (store, "publications", stages.wrap(store.publications, "store: read publications")),
        (store, "set_publications", stages.wrap(store.set_publications, "store: write decisions (+ band rows)")),
        (store, "get_many", stages.wrap(store.get_many, "store: load accepted")),
        (store, "claim_for_publishing", stages.wrap(store.claim_for_publishing, "store: claim, read feedback")),
        (store, "feedback", stages.wrap(store.feedback, "store: claim, read feedback")),
        (store, "published_since", stages.wrap(store.published_since, "store: read publications")),
        (store, "judgments", stages.wrap(store.judgments, "store: read publications")),
        (store, "dedup_by_hash", stages.wrap(store.dedup_by_hash, "dedup: index look-ups (SQL)")),
        (store, "dedup_by_band", stages.wrap(store.dedup_by_band, "dedup: index look-ups (SQL)")),
        (store, "missing_dedup_keys", stages.wrap(store.missing_dedup_keys, "dedup: backfill (keys missing)")),
        (store, "set_dedup_keys", stages.wrap(store.set_dedup_keys, "dedup: backfill (keys missing)")),
        (repo, "pull", stages.wrap(repo.pull, "git pull (fetch; rebase if both moved)")),
        (repo, "read", stages.wrap(repo.read, "dedup: backfill (keys missing)")),
        (repo, "write", stages.wrap(repo.write, "write files")),
        (repo, "commit", stages.wrap(repo.commit, "git commit (index, tree, commit)")),
        (repo, "head", stages.wrap(repo.head, "git commit (index, tree, commit)")),
        (repo, "push", stages.wrap(repo.push, "git push")),
        (repo, "unpushed", stages.wrap(repo.unpushed, "git push")),
        (flywheel, "scrub", stages.wrap(flywheel.scrub, "scrub")),
        (flywheel, "scrub_text", stages.wrap(flywheel.scrub_text, "scrub")),
        (Conversation, "to_record", stages.wrap(Conversation.to_record, "build records")),
        (Deduplicator, "_keys_of", stages.wrap(Deduplicator._keys_of, "dedup: MinHash")),
        (Deduplicator, "prefetch", stages.wrap(Deduplicator.prefetch, "dedup: check")),
        (Deduplicator, "duplicate_of", stages.wrap(Deduplicator.duplicate_of, "dedup: check")),
        (Deduplicator, "add", stages.wrap(Deduplicator.add, "dedup: check")),
    ]
    saved = [(obj, attr, obj.__dict__.get(attr, _MISSING)) for obj, attr, _ in patches]
    for obj, attr, new in patches:
        setattr(obj, attr, new)
    try:
        yield
    finally:
        for obj, attr, old in saved:
            if old is _MISSING:
                delattr(obj, attr)
            else:
                setattr(obj, attr, old)


_MISSING = object()


def run_publish(store: Store, repo: DatasetRepo, stages: Stages, expect: int) -> tuple[float, int, dict[str, Any]]:
    """Call publish until `expect` conversations are published; returns seconds, calls, stage seconds."""
    stages.reset()
    published = calls = 0
    total = 0.0
    with instrumented(store, repo, stages):
        while published < expect:
            t = time.perf_counter()
            report = flywheel.publish(store, repo, threshold=8.0, daily_cap=10**9)
            total += time.perf_counter() - t
            calls += 1
            if not report.published or report.rejected or not report.pushed:
                raise SystemExit(f"publish call {calls}: published {len(report.published)}, rejected "
                                 f"{len(report.rejected)} (e.g. {next(iter(report.rejected.values()), '-')}), "
                                 f"pushed {report.pushed}: the bench's set-up is wrong")
            published += len(report.published)
    if published != expect:
        raise SystemExit(f"published {published}, expected {expect}")
    stage = dict(stages.seconds)
    stage["other (publish's own code)"] = total - sum(stage.values())
    return total, calls, {"seconds": stage, "calls": dict(stages.calls)}


def raw_git(repo: DatasetRepo, records: list[tuple[str, str]], commits: int) -> float:
    """The floor: write these files, git add + commit them in `commits` commits, push after each; seconds."""
    t = time.perf_counter()
    per = -(-len(records) // commits)
    for start in range(0, len(records), per):
        chunk = records[start:start + per]
        for path, text in chunk:
            target = repo.path / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text, encoding="utf-8")
        paths = [p for p, _ in chunk]
        git(repo.path, "add", "--", *paths)
        git(repo.path, "commit", "-q", "-m", f"Raw commit of {len(paths)} files")
        git(repo.path, "push", "-q", "origin", "HEAD:main")
    return time.perf_counter() - t


def baseline_records(convs: list[Conversation]) -> list[tuple[str, str]]:
    """Thresher's own record for each conversation, under a new id (so git sees new blobs of the same size)."""
    out = []
    for conv in convs:
        rec = record(conv, judgment(conv.created_at))
        rec["id"] = new = str(ULID.from_datetime(conv.created_at))
        out.append((conversation_path(new, conv.created_at), dump(rec)))
    return out


def new_conversations(store: Store, texts: Texts, n: int) -> list[Conversation]:
    now = datetime.now(UTC)
    convs = [texts.conversation(now - timedelta(minutes=5, milliseconds=n - i)) for i in range(n)]
    insert_rows(store, convs, None)
    return convs


def measure(world: World, stages: Stages, n_new: int) -> dict[str, Any]:
    """Bulk (n_new) and batch (BATCH) publishing at the world's present size, each after its raw-git baseline."""
    results: dict[str, Any] = {}
    for label, n in (("bulk", n_new), ("batch", BATCH)):
        if n <= 0:
            continue
        convs = new_conversations(world.store, world.texts, n)
        calls_needed = -(-n // 1000)
        raw_s = raw_git(world.repo, baseline_records(convs), calls_needed)
        seconds, calls, stage = run_publish(world.store, world.repo, stages, n)
        results[label] = {"n": n, "seconds": seconds, "per_s": n / seconds, "calls": calls,
                          "raw_seconds": raw_s, "raw_per_s": n / raw_s, "ratio": raw_s / seconds,
                          "vs_raw": seconds / raw_s, "stages": stage}
        world.existing += n
        world.measured_files += 2 * n
    return results


# ---------------------------------------------------------------------------------------------------- main


def _sizes(text: str) -> list[int]:
    try:
        sizes = sorted({int(x.replace("_", "")) for x in text.split(",") if x.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of numbers: {text!r}") from None
    if not sizes or sizes[0] < 0:
        raise argparse.ArgumentTypeError("give one size or more, none negative")
    return sizes


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--existing", type=int, default=DEFAULT_EXISTING,
                    help=f"conversations already published (default: {DEFAULT_EXISTING:,})")
    ap.add_argument("--sizes", type=_sizes,
                    help="several numbers of existing conversations, comma-separated (e.g. 10000,100000,1000000): "
                         "measured smallest first, the store and repository growing between; replaces --existing")
    ap.add_argument("--new", type=int, default=DEFAULT_NEW,
                    help=f"new conversations for the bulk measure at each size (default: {DEFAULT_NEW:,}; 0: none)")
    ap.add_argument("--git-max", type=int, default=DEFAULT_GIT_MAX,
                    help=f"existing conversations that also get files in the git tree (default: {DEFAULT_GIT_MAX:,}); "
                         "the rest are in the store and index only, and the output says so")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                    help="processes computing the existing conversations' MinHash signatures at set-up "
                         "(default: the CPU count)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the generated texts (default: 0)")
    ap.add_argument("--json", type=Path, help="also write the results to this file")
    ap.add_argument("--keep", type=Path, help="build in this directory (must not exist) and keep it")
    args = ap.parse_args(argv)
    sizes = args.sizes or [args.existing]
    console = Console(width=None if sys.stdout.isatty() else 120)
    git_version = git(Path.cwd(), "--version")
    console.print(f"[bold]thresher publish bench[/]  existing={', '.join(f'{n:,}' for n in sizes)} new={args.new:,} "
                  f"batch={BATCH} git-max={args.git_max:,}; cpus={os.cpu_count()}; {git_version}; python "
                  f"{platform.python_version()} on {platform.machine()}")
    t_all = time.perf_counter()
    load = OtherLoad()
    if args.keep:
        args.keep.mkdir(parents=True)
        root = args.keep
    else:
        root = Path(tempfile.mkdtemp(prefix="thresher-publish-bench-"))
    stages = Stages()
    runs: list[dict[str, Any]] = []
    try:
        world = open_world(root, Texts(args.seed))
        for size in sizes:
            if world.existing > size:  # the measures of the size before already passed this one
                console.print(f"[yellow]size {size:,} skipped: the store already holds {world.existing:,}[/]")
                continue
            t = time.perf_counter()
            setup = grow(world, size, args.git_max, max(1, args.jobs))
            setup_s = time.perf_counter() - t
            files = world.in_git + world.measured_files
            median = "-"
            if world.in_git:
                sample = list((world.repo.path / "conversations").rglob("*.json"))[:2000]
                median = f"{statistics.median(f.stat().st_size for f in sample):,.0f}"
            console.print(f"[bold]{size:,}[/] existing: set-up {setup_s:.0f}s (" + ", ".join(
                f"{k} {v:.1f}s" for k, v in setup.items()) + f"); git tree {files:,} conversation files, "
                f"{median} bytes median")
            results = measure(world, stages, args.new)
            runs.append({"existing": size, "git_files": files, "partial_git": size > args.git_max,
                         "setup_seconds": setup, "results": results})
            for label, r in results.items():
                console.print(f"  {label}: {r['n']:,} in {r['seconds']:.2f}s ({r['per_s']:.1f}/s); raw git "
                              f"{r['raw_seconds']:.2f}s ({r['raw_per_s']:.1f}/s)")
        total_s = time.perf_counter() - t_all
        other = load.share()
        world.store.close()
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    report(console, runs, args)
    console.print(f"total {total_s:.0f}s; other processes used "
                  + ("n/a" if other is None else f"{other:.0%}") + " of the CPUs while the bench ran"
                  + (" [yellow](noisy: run again on an idle machine)[/]" if (other or 0) > 0.10 else ""))
    if args.json:
        out = {"sizes": sizes, "new": args.new, "batch": BATCH, "git_max": args.git_max, "cpus": os.cpu_count(),
               "git": git_version, "goals": {"bulk_per_s": GOAL_PER_S, "batch_vs_raw": GOAL_BATCH_VS_RAW,
                                             "flat": GOAL_FLAT},
               "runs": runs, "other_cpu_share": other, "total_s": total_s}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2), encoding="utf-8")
        console.print(f"wrote {args.json}")
    return 0


def _met(ok: bool) -> str:
    return "[bold green]MET[/]" if ok else "[bold red]NOT MET[/]"


def report(console: Console, runs: list[dict[str, Any]], args: argparse.Namespace) -> None:
    if not runs:
        return
    tab = Table(title="Publishing into a repository of existing conversations: thresher vs raw git",
                title_justify="left")
    for col in ("existing", "git tree files", "measure", "conversations", "publish calls", "thresher s",
                "thresher conv/s", "raw git s", "raw git conv/s", "thresher / raw git"):
        tab.add_column(col, justify="left" if col in ("existing", "measure") else "right")
    for run in runs:
        mark = "*" if run["partial_git"] else ""
        for label, r in run["results"].items():
            tab.add_row(f"{run['existing']:,}{mark}", f"{run['git_files']:,}", label, f"{r['n']:,}", str(r["calls"]),
                        f"{r['seconds']:.2f}", f"{r['per_s']:.1f}", f"{r['raw_seconds']:.2f}",
                        f"{r['raw_per_s']:.1f}", f"{r['ratio']:.3f}x")
    console.print(tab)
    console.print("raw git: the same records (new ids) written, `git add -- paths`, `git commit`, `git push` to the "
                  "same bare remote, in as many commits as publish made; thresher / raw git = rate ratio")
    partial = [run for run in runs if run["partial_git"]]
    if partial:
        console.print(f"[yellow]* store and near-duplicate index at the size shown, git tree at "
                      f"{args.git_max:,} files (--git-max) plus what the measures added: thresher's own work is "
                      "measured at full size, git's (thresher's and raw git's alike) at the smaller tree, so the "
                      "times at these sizes are a measured extrapolation, not a repository that size.[/]")

    goal = Table(title="Goals", title_justify="left")
    for col in ("measure", "result", "goal", "met"):
        goal.add_column(col, justify="left" if col == "measure" else "right")
    for run in runs:
        mark = "*" if run["partial_git"] else ""
        bulk, batch = run["results"].get("bulk"), run["results"].get("batch")
        if bulk:
            goal.add_row(f"bulk ({bulk['n']:,} new into {run['existing']:,}{mark})", f"{bulk['per_s']:.1f} conv/s",
                         f">= {GOAL_PER_S:g} conv/s", _met(bulk["per_s"] >= GOAL_PER_S))
        if batch:
            goal.add_row(f"batch of {BATCH} into {run['existing']:,}{mark}: vs raw git "
                         f"({batch['seconds']:.2f}s vs {batch['raw_seconds']:.2f}s)", f"{batch['vs_raw']:.2f}x",
                         f"<= {GOAL_BATCH_VS_RAW:g}x", _met(batch["vs_raw"] <= GOAL_BATCH_VS_RAW))
    with_batch = [run for run in runs if "batch" in run["results"]]
    if len(with_batch) > 1:
        lo, hi = with_batch[0], with_batch[-1]
        ratio = hi["results"]["batch"]["seconds"] / lo["results"]["batch"]["seconds"]
        goal.add_row(f"batch at {hi['existing']:,}{'*' if hi['partial_git'] else ''} / at {lo['existing']:,} "
                     f"({hi['results']['batch']['seconds']:.2f}s / {lo['results']['batch']['seconds']:.2f}s)",
                     f"{ratio:.2f}x", f"<= {GOAL_FLAT:g}x", _met(ratio <= GOAL_FLAT))
        raw = hi["results"]["batch"]["raw_seconds"] / lo["results"]["batch"]["raw_seconds"]
        console.print(f"batch of {BATCH}: thresher {ratio:.2f}x from {lo['existing']:,} to {hi['existing']:,} "
                      f"existing; raw git {raw:.2f}x over the same runs")
    console.print(goal)

    names = sorted({k for run in runs for r in run["results"].values() for k in r["stages"]["seconds"]},
                   key=lambda k: -sum(r["stages"]["seconds"].get(k, 0.0) for run in runs
                                      for r in run["results"].values()))
    st = Table(title="Where publish spends its time (exclusive seconds by stage; calls in brackets)",
               title_justify="left")
    st.add_column("stage")
    for run in runs:
        for label in run["results"]:
            st.add_column(f"{label} @ {run['existing']:,}", justify="right")
    for k in names:
        row = [k]
        for run in runs:
            for r in run["results"].values():
                s = r["stages"]["seconds"].get(k, 0.0)
                calls = r["stages"]["calls"].get(k)
                row.append(f"{s:.3f}" + (f" ({calls})" if calls else ""))
        st.add_row(*row)
    console.print(st)


if __name__ == "__main__":
    raise SystemExit(main())
