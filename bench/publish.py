"""Publishing into a dataset repository that already holds many conversations: thresher against raw git.

What it measures, in one process on one machine, with real git and a real SQLite store in a temporary directory:

* set-up (not timed against anything): N existing conversations (`--existing`, default 100,000) written as
  `conversations/YYYY/MM/<id>.json` files shaped like `thresher.flywheel._record` output (via
  `thresher.dataset_repo.dump`), spread over the past two years, committed in one commit and pushed to a local bare
  remote (`git init --bare -b main`); the clone is then given the remote's pack (as a fresh clone would hold it) and
  `gc.auto=0`, so that no side pays for a repack the other triggered. The matching store rows (conversations,
  messages, judgments, publications: published and pushed) go in with SQLAlchemy Core bulk inserts after
  `Store.migrate()`. Then M new ended conversations judged 9 (`--new`, default 2,000; distinct random texts, one in
  ten carrying an e-mail address for the scrubber) go in the same way, and 50 more later.
* bulk: `thresher.flywheel.publish(store, repo, threshold=8.0, daily_cap=10**9)` called until the M new
  conversations are published (one call decides at most `Store.undecided`'s limit, 1,000, so M=2,000 takes two
  calls); conversations/second = M / total seconds of those calls.
* batch: 50 more conversations, one `publish` call, seconds.
* baseline (the floor cost of the same git work without thresher), run just before each thresher measure in the same
  repository and remote: write the same number of JSON files of the same size (each the very record thresher writes,
  with a different id so git stores new blobs), `git add -- <paths>`, `git commit -q`, `git push -q origin
  HEAD:main`, as the same number of commits as thresher makes. Ratio printed: thresher's rate / raw git's rate.
* stage breakdown of every thresher call, by wrapping (in this bench only) the functions `publish` calls: seeding
  the de-duplicator with what is published (reading the files, MinHashing them), loading candidates, scrubbing,
  duplicate checks, store writes, writing files, git add+commit, git push (with its fetch), git pull, and the rest.
  Each stage's time excludes the stages it calls.

Goal printed beside the result: >= 500 conversations/s in bulk.

Run:
    python bench/publish.py [--existing N] [--new M] [--json PATH] [--keep DIR]
The defaults take about 4 minutes on a 2-core machine (set-up about 70 s of it); 100,000 existing conversations is
the size the issue asks for, and it fits. Whatever --existing, the seeding cost per published conversation is printed,
so the time of a bigger repository can be read off.
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
from contextlib import contextmanager
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
from thresher.curate import Deduplicator, scrub, scrub_text
from thresher.dataset_repo import DatasetRepo, conversation_path, dump
from thresher.judge import Judgment
from thresher.store import ConversationRow, JudgmentRow, MessageRow, PublicationRow, Store

GOAL_PER_S = 500.0
DEFAULT_EXISTING = 100_000
DEFAULT_NEW = 2_000
BATCH = 50
JUDGE_ID, RUBRIC = "judge@bench", "rubric-bench"
RATIONALE = "A clear, correct and complete answer to what the user asked."
DISTRIBUTION = {str(i): p for i, p in zip(range(1, 11), [0, 0, 0, 0, 0, 0, 0.02, 0.18, 0.6, 0.2], strict=True)}
CHUNK_ROWS = 5_000  # rows a bulk-insert statement


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
    """What thresher writes for this conversation, via its own `_record` (`scrubbed=False`: the texts are known to
    hold nothing to scrub, so skip the scrubber's cost)."""
    if not scrubbed:
        return flywheel._record(conv, j, conv.to_openai(), j.rationale)
    clean, _ = scrub(conv)
    return flywheel._record(conv, j, clean.to_openai(), scrub_text(j.rationale or "")[0])


def insert_rows(store: Store, convs: list[Conversation], published: dict[str, tuple[str, str]] | None) -> None:
    """Bulk-insert conversations, their messages and judgments, and (when `published` maps id -> (path, sha))
    publication rows: published and pushed. A few big transactions, not one Store call per row."""
    c_rows, m_rows, j_rows, p_rows = [], [], [], []
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
            p_rows.append(dict(conversation_id=conv.id, state="published", reason=None, path=path, commit_sha=sha,
                               pushed=True, score=j.score, judge_id=j.judge_id, pii_counts={},
                               created_at=conv.created_at, updated_at=conv.created_at))
    for table, rows in ((ConversationRow.__table__, c_rows), (MessageRow.__table__, m_rows),
                        (JudgmentRow.__table__, j_rows), (PublicationRow.__table__, p_rows)):
        with store.engine.begin() as conn:
            for start in range(0, len(rows), CHUNK_ROWS):
                conn.execute(sa.insert(table), rows[start:start + CHUNK_ROWS])


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()


def set_up(root: Path, n_existing: int, texts: Texts, console: Console) -> tuple[Store, DatasetRepo, dict[str, float]]:
    times: dict[str, float] = {}
    remote, clone = root / "remote.git", root / "clone"
    git(root, "init", "-q", "--bare", "-b", "main", str(remote))
    repo = DatasetRepo(clone, str(remote)).open()
    git(clone, "config", "gc.auto", "0")
    git(clone, "push", "-q", "origin", "HEAD:main")

    t = time.perf_counter()
    now = datetime.now(UTC)
    span = timedelta(days=730).total_seconds()
    when = sorted(now - timedelta(days=2, seconds=texts.rng.random() * span) for _ in range(n_existing))
    convs = [texts.conversation(w, pii=False) for w in when]
    paths: dict[str, str] = {}
    for conv in convs:
        path = conversation_path(conv.id, conv.created_at)
        rec = record(conv, judgment(conv.created_at), scrubbed=False)
        rec["published_at"] = (conv.created_at + timedelta(hours=1)).isoformat(timespec="seconds")
        target = clone / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(dump(rec), encoding="utf-8")
        paths[conv.id] = path
    times["generate and write files"] = time.perf_counter() - t

    t = time.perf_counter()
    git(clone, "add", "conversations")
    git(clone, "commit", "-q", "-m", f"Publish {n_existing} conversation(s) (bench set-up)")
    sha = git(clone, "rev-parse", "HEAD")
    times["git add + commit"] = time.perf_counter() - t
    t = time.perf_counter()
    git(clone, "-c", "pack.window=0", "push", "-q", "origin", "HEAD:main")  # no delta search: set-up only
    git(clone, "fetch", "-q", "origin")
    # Give the clone the remote's pack and drop its loose objects: what a fresh clone of the remote holds.
    pack_dir = clone / ".git" / "objects" / "pack"
    for f in (remote / "objects" / "pack").iterdir():
        if not (pack_dir / f.name).exists():
            shutil.copy2(f, pack_dir / f.name)
    git(clone, "prune-packed")
    times["git push + pack"] = time.perf_counter() - t

    t = time.perf_counter()
    store = Store(f"sqlite:///{root / 'thresher.db'}")
    store.migrate()
    insert_rows(store, convs, {c.id: (paths[c.id], sha) for c in convs})
    times["store rows"] = time.perf_counter() - t
    return store, repo, times


# ---------------------------------------------------------------------------------------------------- stages


class Stages:
    """Exclusive time by stage: wrap callables; a stage's time leaves out the wrapped stages it calls."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self._stack: list[float] = []  # time spent in children of each open stage
        self.seeding = False

    def wrap(self, fn: Callable[..., Any], name: str | Callable[[], str]) -> Callable[..., Any]:
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            label = name if isinstance(name, str) else name()
            self._stack.append(0.0)
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent = time.perf_counter() - t
                children = self._stack.pop()
                self.seconds[label] += spent - children
                self.calls[label] += 1
                if self._stack:
                    self._stack[-1] += spent
        return wrapped

    def reset(self) -> None:
        self.seconds.clear()
        self.calls.clear()


@contextmanager
def instrumented(store: Store, repo: DatasetRepo, stages: Stages) -> Iterator[None]:
    """Wrap what `publish` calls; restore everything afterwards."""
    def seed_or(seed: str, name: str) -> Callable[[], str]:
        return lambda: f"seed dedup: {seed}" if stages.seeding else name

    def undecided(*a: Any, **k: Any) -> Any:
        stages.seeding = False
        return orig_undecided(*a, **k)

    orig_undecided = store.undecided
    patches: list[tuple[Any, str, Any]] = [
        (store, "undecided", stages.wrap(undecided, "store: load candidates")),
        (store, "publications", stages.wrap(store.publications, seed_or("store: read publications",
                                                                        "store: read publications"))),
        (store, "set_publications", stages.wrap(store.set_publications, "store: write decisions")),
        (store, "get_many", stages.wrap(store.get_many, "store: load accepted")),
        (store, "published_since", stages.wrap(store.published_since, "store: read publications")),
        (store, "judgments", stages.wrap(store.judgments, "store: read publications")),
        (repo, "pull", stages.wrap(repo.pull, "git pull (fetch + rebase)")),
        (repo, "read", stages.wrap(repo.read, seed_or("read files", "read file"))),
        (repo, "write", stages.wrap(repo.write, "write files")),
        (repo, "commit", stages.wrap(repo.commit, "git add + commit")),
        (repo, "head", stages.wrap(repo.head, "git add + commit")),
        (repo, "push", stages.wrap(repo.push, "git push (+ fetch)")),
        (repo, "unpushed", stages.wrap(repo.unpushed, "git push (+ fetch)")),
        (flywheel, "scrub", stages.wrap(flywheel.scrub, "scrub")),
        (flywheel, "scrub_text", stages.wrap(flywheel.scrub_text, "scrub")),
        (flywheel, "_record", stages.wrap(flywheel._record, "build records")),
        (flywheel, "Conversation", stages.wrap(flywheel.Conversation, seed_or("build objects", "build objects"))),
        (flywheel, "Message", stages.wrap(flywheel.Message, seed_or("build objects", "build objects"))),
        (Deduplicator, "__init__", stages.wrap(Deduplicator.__init__, "seed dedup: new Deduplicator")),
        (Deduplicator, "add", stages.wrap(Deduplicator.add, seed_or("MinHash + LSH insert", "dedup: add"))),
        (Deduplicator, "duplicate_of", stages.wrap(Deduplicator.duplicate_of, "dedup: check")),
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
            stages.seeding = True
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


# ---------------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--existing", type=int, default=DEFAULT_EXISTING,
                    help=f"conversations already published (default: {DEFAULT_EXISTING:,})")
    ap.add_argument("--new", type=int, default=DEFAULT_NEW,
                    help=f"new conversations for the bulk measure (default: {DEFAULT_NEW:,})")
    ap.add_argument("--seed", type=int, default=0, help="seed of the generated texts (default: 0)")
    ap.add_argument("--json", type=Path, help="also write the results to this file")
    ap.add_argument("--keep", type=Path, help="build in this directory (must not exist) and keep it")
    args = ap.parse_args(argv)
    console = Console(width=None if sys.stdout.isatty() else 120)
    git_version = git(Path.cwd(), "--version")
    console.print(f"[bold]thresher publish bench[/]  existing={args.existing:,} new={args.new:,} batch={BATCH}; "
                  f"cpus={os.cpu_count()}; {git_version}; python {platform.python_version()} on "
                  f"{platform.machine()}")
    t_all = time.perf_counter()
    load = OtherLoad()
    if args.keep:
        args.keep.mkdir(parents=True)
        root = args.keep
    else:
        root = Path(tempfile.mkdtemp(prefix="thresher-publish-bench-"))
    try:
        texts = Texts(args.seed)
        store, repo, setup = set_up(root, args.existing, texts, console)
        sizes = [f.stat().st_size for f in list((repo.path / "conversations").rglob("*.json"))[:2000]]
        console.print("set-up: " + ", ".join(f"{k} {v:.1f}s" for k, v in setup.items())
                      + f"; files {statistics.median(sizes):,.0f} bytes median")

        stages = Stages()
        results: dict[str, Any] = {}
        for label, n in (("bulk", args.new), ("batch", BATCH)):
            convs = new_conversations(store, texts, n)
            calls_needed = -(-n // 1000)
            raw_s = raw_git(repo, baseline_records(convs), calls_needed)
            seconds, calls, stage = run_publish(store, repo, stages, n)
            results[label] = {"n": n, "seconds": seconds, "per_s": n / seconds, "calls": calls,
                              "raw_seconds": raw_s, "raw_per_s": n / raw_s, "ratio": raw_s / seconds,
                              "stages": stage}
        total_s = time.perf_counter() - t_all
        other = load.share()
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)

    tab = Table(title=f"Publishing into a repository of {args.existing:,} conversations", title_justify="left")
    for col in ("measure", "conversations", "publish calls", "thresher s", "thresher conv/s", "raw git s",
                "raw git conv/s", "thresher / raw git"):
        tab.add_column(col, justify="left" if col == "measure" else "right")
    for label, r in results.items():
        tab.add_row(label, f"{r['n']:,}", str(r["calls"]), f"{r['seconds']:.2f}", f"{r['per_s']:.1f}",
                    f"{r['raw_seconds']:.2f}", f"{r['raw_per_s']:.1f}", f"{r['ratio']:.3f}x")
    console.print(tab)
    console.print("raw git: the same records (new ids) written, `git add -- paths`, `git commit`, `git push` to the "
                  "same bare remote, in as many commits as publish made; thresher / raw git = rate ratio")

    bulk = results["bulk"]
    met = bulk["per_s"] >= GOAL_PER_S
    goal = Table(title=f"Goal: >= {GOAL_PER_S:g} conversations/s in bulk", title_justify="left")
    for col in ("measure", "result", "goal", "met"):
        goal.add_column(col, justify="left" if col == "measure" else "right")
    goal.add_row(f"bulk ({bulk['n']:,} new into {args.existing:,})", f"{bulk['per_s']:.1f} conv/s",
                 f">= {GOAL_PER_S:g} conv/s", "[bold green]MET[/]" if met else "[bold red]NOT MET[/]")
    goal.add_row(f"one batch of {BATCH}", f"{results['batch']['seconds']:.2f} s", "(reference)", "")
    console.print(goal)

    names = sorted({k for r in results.values() for k in r["stages"]["seconds"]},
                   key=lambda k: -results["bulk"]["stages"]["seconds"].get(k, 0.0))
    st = Table(title="Where publish spends its time (exclusive seconds; 'seed dedup' = re-reading and MinHashing "
                     "what is already published, once per call)", title_justify="left")
    st.add_column("stage")
    for label in results:
        st.add_column(f"{label} s", justify="right")
        st.add_column(f"{label} %", justify="right")
        st.add_column(f"{label} calls", justify="right")
    for k in names:
        row = [k]
        for r in results.values():
            s = r["stages"]["seconds"].get(k, 0.0)
            row += [f"{s:.2f}", f"{s / r['seconds']:.1%}", str(r["stages"]["calls"].get(k, ""))]
        st.add_row(*row)
    console.print(st)
    seed = {label: sum(v for k, v in r["stages"]["seconds"].items() if k.startswith("seed dedup"))
            for label, r in results.items()}
    seeded = {label: r["stages"]["calls"].get("seed dedup: read files", 0) for label, r in results.items()}
    console.print("seeding the de-duplicator: " + "; ".join(
        f"{label} {s:.1f}s of {results[label]['seconds']:.1f}s ({s / results[label]['seconds']:.0%}), "
        f"{seeded[label]:,} files read and MinHashed over {results[label]['calls']} call(s), "
        f"{s / max(1, seeded[label]) * 1e6:.0f} µs each" for label, s in seed.items()))
    for label, r in results.items():
        rest = r["seconds"] - seed[label]
        console.print(f"{label} without seeding: {rest:.2f}s, {r['n'] / rest:.1f} conv/s")

    console.print(f"total {total_s:.0f}s; other processes used "
                  + ("n/a" if other is None else f"{other:.0%}") + " of the CPUs while the bench ran"
                  + (" [yellow](noisy: run again on an idle machine)[/]" if (other or 0) > 0.10 else ""))
    if args.json:
        out = {"existing": args.existing, "new": args.new, "batch": BATCH, "cpus": os.cpu_count(),
               "git": git_version, "goal": {"per_s": GOAL_PER_S, "met": met}, "setup_seconds": setup,
               "results": results, "seed_seconds": seed, "other_cpu_share": other, "total_s": total_s}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2), encoding="utf-8")
        console.print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
