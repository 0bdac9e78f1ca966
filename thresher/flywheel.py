"""The worker that turns the loop. So far: judge every ended conversation once per judge version, and publish the
accepted ones to the dataset repository.

Each conversation's judgment is committed on its own, so a worker killed mid-batch loses at most the conversation it
was judging, and running it again continues with the rest.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from thresher.conversation import Conversation, InvalidRecord, Judgment, Record, utcnow
from thresher.curate import Deduplicator, rejection, scrub, scrub_text
from thresher.dataset_repo import REVIEWS_DIR, TAKEDOWNS_DIR, DatasetRepo, GitError, conversation_path
from thresher.judge import Judge
from thresher.pairs import drop_pairs_of, record_pairs
from thresher.store import Feedback, Publication, Store

log = logging.getLogger("thresher.flywheel")


def judge_pending(
    store: Store,
    judge: Judge,
    limit: int | None = None,
    on_judged: Callable[[str, object], None] | None = None,
    batch: int = 16,
    progress: Callable[[int, int], None] | None = None,
) -> int:
    """Judge ended, not-opted-out conversations this judge version has not judged yet; returns how many.
    `on_judged(id, judgment)` and `progress(done, total)` are called after each."""
    done = 0
    total = len(store.pending_judgment(judge.judge_id, judge.rubric_hash, limit or 1_000_000)) if progress else 0
    failed: set[str] = set()  # engine failures are stored and retried on the next run, not again in this one
    while limit is None or done < limit:
        todo = store.pending_judgment(judge.judge_id, judge.rubric_hash,
                                      len(failed) + (batch if limit is None else min(batch, limit - done)))
        todo = [c for c in todo if c.id not in failed]
        if not todo:
            break
        many = getattr(judge, "judge_many", None)  # a head judge reads a few at a time, saved before the next few
        chunks = [todo[i:i + 4] for i in range(0, len(todo), 4)] if many else [[c] for c in todo]
        judged = ((c, j) for chunk in chunks for c, j in zip(
            chunk, many([c.to_openai() for c in chunk]) if many else [judge.judge(chunk[0].to_openai())],
            strict=True))
        for conv, judgment in judged:
            store.save_judgment(conv.id, judgment)
            done += 1
            if judgment.status == "failed":
                failed.add(conv.id)
            log.info("judged %s: %s %s", conv.id, judgment.status,
                     "-" if judgment.score is None else f"{judgment.score:.2f}")
            if on_judged is not None:
                on_judged(conv.id, judgment)
            if progress is not None:
                progress(done, total)
    return done


@dataclass
class PublishReport:
    published: list[str] = field(default_factory=list)
    rejected: dict[str, str] = field(default_factory=dict)  # conversation id -> why
    deferred: int = 0  # over the daily cap: decided on a later run
    commit: str | None = None
    pushed: bool = False
    pii: Counter[str] = field(default_factory=Counter)  # placeholders by type; never the values

    def lines(self, where: Path, remote: str | None) -> list[str]:
        """What `thresher publish` did, in words: `where` the dataset clone, `remote` the one it pushes to."""
        out = [f"published {len(self.published)}, rejected {len(self.rejected)}, deferred {self.deferred}"]
        out += [f"  rejected {cid}: {why}" for cid, why in self.rejected.items()]
        if self.pii:
            out.append("personal data replaced: " + ", ".join(f"{k} {v}" for k, v in sorted(self.pii.items())))
        if self.commit:
            out.append(f"commit {self.commit[:12]} in {where}")
        if remote:
            out.append("pushed" if self.pushed else "not pushed yet (the remote did not answer): will retry")
        return out


def _feedback(items: Sequence[Feedback]) -> list[dict[str, Any]]:
    """The owner's thumbs on replies of the published branch, with each reason scrubbed like the messages."""
    out: list[dict[str, Any]] = []
    for f in items:
        if f.position is None:  # on a reply of another branch: not what is published
            continue
        item: dict[str, Any] = {"message": f.position, "rating": f.rating}
        if f.reason:
            item["reason"] = scrub_text(f.reason)[0]
        out.append(item)
    return out


def publish(store: Store, repo: DatasetRepo, *, threshold: float, daily_cap: int = 1000) -> PublishReport:
    """Curate judged conversations and publish the accepted ones in one commit, then push.

    Order matters for crash safety: a decision is stored before its file is written; a file is committed before
    the store calls it published; a push that fails leaves the commit for the next run. Running again after a
    crash finishes what was started. The owner's choice is read once more just before the file is written. Holds
    the clone's lock throughout: the review page and a `thresher publish` by hand write to the same clone."""
    with repo.lock():
        return _publish(store, repo, threshold, daily_cap)


def _publish(store: Store, repo: DatasetRepo, threshold: float, daily_cap: int) -> PublishReport:
    report = PublishReport()
    try:
        repo.pull()
    except GitError as e:
        log.warning("could not pull the dataset (publishing locally, pushing later): %s", e)

    # Duplicates are looked up in the store's index of what is published, a batch at a time: no run reads all of it.
    _backfill_dedup_keys(store, repo)
    dedup = Deduplicator(index=store)

    room = max(0, daily_cap - store.published_since(utcnow() - timedelta(days=1)))
    screened = []
    for conv, judgment in store.undecided():
        clean, counts = scrub(conv)
        screened.append((conv, judgment, rejection(conv, judgment, threshold), clean, counts))
    dedup.prefetch([clean for _c, _j, reason, clean, _n in screened if reason is None])
    batch: list[tuple[Conversation, Judgment, Conversation, str | None, Counter[str]]] = []
    rejected: list[Publication] = []
    keys: dict[str, tuple[str, bytes]] = {}
    for conv, judgment, reason, clean, counts in screened:
        if reason is None:
            reason = dedup.duplicate_of(clean)
        if reason is not None:
            rejected.append(Publication(conv.id, "rejected", reason, score=judgment.score,
                                        judge_id=judgment.judge_id, threshold=threshold))
            report.rejected[conv.id] = reason
            continue
        if len(batch) >= room:
            report.deferred += 1
            continue
        dedup.add(clean)
        keys[conv.id] = dedup.keys(clean)
        rationale, more = scrub_text(judgment.rationale) if judgment.rationale else (None, Counter())
        batch.append((conv, judgment, clean, rationale, counts + more))
    store.set_publications(rejected)
    store.set_publications([
        Publication(conv.id, "accepted", path=conversation_path(conv.id, conv.created_at), score=judgment.score,
                    judge_id=judgment.judge_id, pii_counts=dict(counts), dedup_hash=keys[conv.id][0],
                    minhash=keys[conv.id][1], threshold=threshold)
        for conv, judgment, _clean, _r, counts in batch
    ])
    for *_, counts in batch:
        report.pii += counts

    # Write and commit everything accepted and not yet committed (this run's and any a crash left behind).
    pending = {c.id: (j, clean, r) for c, j, clean, r, _ in batch}
    accepted = store.publications(state="accepted")
    loaded = {c.id: c for c, *_ in batch}  # only what a crash left behind is read again
    convs = {p.conversation_id: loaded[p.conversation_id] for p in accepted if p.conversation_id in loaded}
    convs.update(store.get_many([p.conversation_id for p in accepted if p.conversation_id not in loaded]))
    # The owner's last word: claimed under a row lock, after which their switch is locked until publication.
    claimed = store.claim_for_publishing(list(convs))
    done: list[Publication] = []
    withdrawn: list[Publication] = []
    judges: set[str] = set()
    thumbs = store.feedback(list(claimed))
    versions = store.reply_versions(list(claimed))  # regenerated replies: preference pairs in the file
    for p in accepted:
        conv = convs.get(p.conversation_id)
        if conv is None:  # deleted by its owner meanwhile
            continue
        if conv.id not in claimed:  # withdrawn since it was chosen
            withdrawn.append(Publication(conv.id, "rejected", "owner withdrew consent", score=p.score,
                                         judge_id=p.judge_id))
            report.rejected[conv.id] = "owner withdrew consent"
            continue
        if conv.id in pending:
            judgment, clean, rationale = pending[conv.id]
        else:  # left behind by a crash: redo its scrubbing
            judgment = next(j for j in reversed(store.judgments(conv.id)) if j.judge_id == p.judge_id)
            clean, _ = scrub(conv)
            rationale = scrub_text(judgment.rationale)[0] if judgment.rationale else None
        p.path = p.path or conversation_path(conv.id, conv.created_at)
        pairs = record_pairs(versions[conv.id], clean=lambda t: scrub_text(t)[0]) if conv.id in versions else []
        record = clean.to_record(judgment, rationale=rationale, threshold=threshold,
                                 feedback=_feedback(thumbs.get(conv.id, [])), pairs=pairs)
        repo.write(p.path, record.to_json())
        done.append(p)
        judges.add(judgment.judge_id)
    store.set_publications(withdrawn)
    if done:
        commit = repo.commit([p.path for p in done if p.path],
                             f"Publish {len(done)} conversation(s) judged by {', '.join(sorted(judges))} "
                             f"at threshold {threshold:g}")
        sha = commit.sha if commit else repo.head()
        for p in done:
            p.state, p.commit_sha = "published", sha
        store.set_publications(done)
        report.published = [p.conversation_id for p in done]
        report.commit = sha

    unpushed = store.publications(state="published", pushed=False)
    if (unpushed or repo.unpushed()) and repo.push():
        for p in unpushed:
            p.pushed = True
        store.set_publications(unpushed)
        report.pushed = True
    if report.pii:
        log.info("scrubbed personal data: %s", ", ".join(f"{k} {v}" for k, v in sorted(report.pii.items())))
    return report


def _backfill_dedup_keys(store: Store, repo: DatasetRepo) -> None:
    """Store the dedup keys of publications made before keys were kept (and so index them), reading each one's file
    once, a page at a time (a run killed midway keeps the pages done): the first run after the upgrade does it; later
    runs find none in one index lookup. A file gone from the clone is skipped."""
    after = ""
    while rows := store.missing_dedup_keys(after):
        dedup = Deduplicator()  # a fresh one per page: it keeps what it hashed
        keys: list[tuple[str, str, bytes]] = []
        for cid, path in rows:
            if path and (repo.path / path).exists():
                try:
                    old = Record.from_json(repo.read(path)).conversation()
                except InvalidRecord as e:  # a reviewer's edit broke it: nothing to compare with
                    log.warning("%s: %s (no duplicate keys kept for it)", path, e)
                    continue
                keys.append((cid, *dedup.keys(old)))
        store.set_dedup_keys(keys)
        after = rows[-1][0]


@dataclass
class TakedownReport:
    conversation_id: str
    removed_path: str | None  # the file removed from HEAD, if it was published
    commit: str | None  # the tombstone commit
    pushed: bool
    history: list[str] = field(default_factory=list)  # earlier commits that still hold the file

    def lines(self) -> list[str]:
        """The takedown in words, with what it takes to erase the file from history too."""
        out = [f"{self.conversation_id} is marked never-train and will not be published again."]
        if not self.removed_path:
            return out + ["it was not in the dataset's HEAD; a tombstone keeps it out of every build."]
        out.append(f"removed {self.removed_path} from HEAD in commit {self.commit[:12] if self.commit else '-'}"
                   + (" and pushed" if self.pushed else " (not pushed yet: run thresher publish to retry)"))
        out.append(f"Git history still holds the file in {len(self.history)} earlier commit(s), and so does every "
                   "clone and fork made before now. To erase it: in a fresh clone run\n"
                   f"  git filter-repo --invert-paths --path {self.removed_path}\n"
                   "then force-push every branch, ask the git host to purge cached views and pull requests, and ask "
                   "the people who cloned the dataset to re-clone.")
        return out


def takedown(store: Store, repo: DatasetRepo, conv_id: str, reason: str) -> TakedownReport:
    """Remove a conversation from the dataset's HEAD with a tombstone commit and mark it never-train.

    The tombstone `takedowns/<id>.json` holds only the id, the reason and the time, so every later dataset build
    leaves the conversation out. Git history still holds the file: the report lists the commits, and the caller tells
    the operator how to rewrite history."""
    if not reason.strip():
        raise ValueError("a takedown needs a reason")
    with repo.lock():
        return _takedown(store, repo, conv_id, reason)


def _takedown(store: Store, repo: DatasetRepo, conv_id: str, reason: str) -> TakedownReport:
    conv = store.get(conv_id)  # NotFound for an unknown id
    try:
        repo.pull()
    except GitError as e:
        log.warning("could not pull the dataset before the takedown: %s", e)
    pub = store.publication(conv_id)
    path = pub.path if pub and pub.path else conversation_path(conv_id, conv.created_at)
    changed = []
    if (repo.path / path).exists():
        repo.remove(path)
        changed.append(path)
    reviews = f"{REVIEWS_DIR}/{conv_id}"
    if (repo.path / reviews).exists():
        repo.remove(reviews, recursive=True)
        changed.append(reviews)
    # Its on-policy preference pairs (published beside the round records) go with it.
    pair_files = [str(f.relative_to(repo.path)) for f in sorted((repo.path / "rounds").glob("*-pairs.jsonl"))
                  if drop_pairs_of(f, conv_id)]
    tomb = f"{TAKEDOWNS_DIR}/{conv_id}.json"
    repo.write(tomb, {"id": conv_id, "reason": reason, "time": utcnow().isoformat(timespec="seconds")})
    commit = repo.commit([tomb, *pair_files], f"Take down {conv_id}: {reason}")  # the removals: staged by git rm
    history = repo.history(path) if changed else []
    store.set_publish(conv_id, False)
    store.set_publication(Publication(conv_id, "taken_down", reason, path=path if changed else None,
                                      commit_sha=commit.sha if commit else None,
                                      score=pub.score if pub else None, judge_id=pub.judge_id if pub else None))
    pushed = repo.push() if repo.remote else False
    return TakedownReport(conv_id, path if changed else None, commit.sha if commit else None, pushed,
                          [h for h in history if not commit or h != commit.sha])


def rejudge_corrections(store: Store, repo: DatasetRepo, judge: Judge) -> int:
    """Judge again every conversation a reviewer corrected, on its text as corrected (the file at HEAD); the new
    judgment replaces this judge version's earlier one. Returns how many were judged."""
    done = 0
    for c in store.corrections(to_rejudge=True):
        pub = store.publication(c.conversation_id)
        if pub is None or not pub.path or not (repo.path / pub.path).exists():
            store.mark_rejudged(c.conversation_id, c.commit_sha)  # gone (taken down): nothing to judge
            continue
        try:
            record = Record.from_json(repo.read(pub.path))
        except InvalidRecord as e:  # the correction broke the file: nothing to judge until it is mended
            log.warning("corrected %s: %s (not judged again)", pub.path, e)
            store.mark_rejudged(c.conversation_id, c.commit_sha)
            continue
        judgment = judge.judge(record.messages)
        store.save_judgment(c.conversation_id, judgment)
        store.mark_rejudged(c.conversation_id, c.commit_sha)
        done += 1
        log.info("re-judged corrected %s: %s", c.conversation_id,
                 "-" if judgment.score is None else f"{judgment.score:.2f}")
    return done


# -- rounds -------------------------------------------------------------------------------------------------------


def approved_since_last_round(data_dir: Path, approved_now: int) -> int:
    """Approved conversations beyond what the newest finished round trained on."""
    from thresher.train.state import RoundState

    last = 0
    for state in sorted((data_dir / "rounds").glob("*/state.json"), key=lambda p: int(p.parent.name)):
        rs = RoundState(state.parent)
        if rs.done("published"):
            last = rs.get("data").approved if rs.done("data") else last
    return approved_now - last


class RoundRunner:
    """Starts `thresher round` as its own process when enough newly approved conversations exist: training needs
    gigabytes and both cores for minutes, so it never runs inside the server's process; one at a time (the round
    also holds a lock in the data dir); an unfinished round is continued by the next start."""

    def __init__(self, data_dir: Path, min_new_approved: int, env: dict[str, str] | None = None) -> None:
        self.data_dir, self.min_new = data_dir, min_new_approved
        self.env = env
        self.proc: subprocess.Popen | None = None
        self.log_path = data_dir / "rounds" / "worker.log"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def due(self, approved_now: int) -> bool:
        unfinished = any(not _finished(p) for p in (self.data_dir / "rounds").glob("*/state.json"))
        return self.min_new > 0 and (unfinished or approved_since_last_round(self.data_dir, approved_now)
                                     >= self.min_new)

    def maybe_start(self, approved_now: int) -> bool:
        if self.running or not self.due(approved_now):
            return False
        if self.proc is not None:
            log.info("the last round exited with %s", self.proc.returncode)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "thresher", "round", "--data-dir", str(self.data_dir)],
                                         stdout=out, stderr=subprocess.STDOUT, env=self.env)
        log.info("started a training round (pid %d); its output goes to %s", self.proc.pid, self.log_path)
        return True


def _finished(state_file: Path) -> bool:
    from thresher.train.state import RoundState

    try:
        return RoundState(state_file.parent).done("published")
    except (OSError, ValueError):
        return False


# -- the loop -----------------------------------------------------------------------------------------------------


@dataclass
class TickReport:
    """What one turn of the loop did; a stage that was not due is None."""

    switched: list[str] = field(default_factory=list)  # registry versions now serving or judging
    judged: int | None = None
    published: PublishReport | None = None
    synced: Any = None  # thresher.review.SyncReport
    rejudged: int = 0  # corrected conversations judged again
    round_started: bool = False
    problems: list[str] = field(default_factory=list)  # stages that failed this turn (tried again on the next)

    def lines(self, quiet: bool = True) -> list[str]:
        """The turn in words, one line per thing that happened (nothing when nothing did); not `quiet`: a
        publishing stage that ran is said even when it published nothing, with what the dataset holds approved."""
        out = [f"now serving: {what}" for what in self.switched]
        if self.judged:
            out.append(f"judged {self.judged} conversation(s)")
        p = self.published
        if p is not None and not quiet:
            out.append(f"published {len(p.published)}, rejected {len(p.rejected)}"
                       + (f"; {self.synced.approved} approved in the dataset" if self.synced else ""))
        elif p is not None and (p.published or p.rejected):
            out.append(f"published {len(p.published)}, rejected {len(p.rejected)} conversation(s)")
        s = self.synced
        if s is not None and (s.new or s.updated or s.corrections):
            out.append(f"reviews: {s.new} new, {s.updated} updated verdict(s), {s.corrections} correction(s); "
                       f"{s.approved} approved in the dataset")
        if self.rejudged:
            out.append(f"judged {self.rejudged} corrected conversation(s) again")
        if self.round_started:
            out.append("started a training round")
        return out + self.problems


class Worker:
    """The loop that turns the flywheel. One `tick()` runs each stage once: follow the model registry (with a
    `follower`), judge ended conversations, and publish: curate and commit the accepted ones, read reviewers'
    verdicts back, judge corrected conversations again, and start a training round once enough new ones are
    approved (with `rounds`).

    The server runs it in a background thread (`run`), `thresher worker` in the foreground and the demo stage by
    stage. All state lives in the store and the dataset repository, so every stage resumes after a crash; a stage
    that fails is logged, said in the report, and tried again on the next turn."""

    def __init__(self, settings: Any, store: Store, judge: Any, *, follower: Any = None,
                 repo: DatasetRepo | None = None, rounds: RoundRunner | None = None) -> None:
        self.settings, self.store, self.judge, self.follower = settings, store, judge, follower
        self.repo = repo or DatasetRepo(settings.dataset_path, settings.dataset_remote)
        self.rounds = rounds

    def follow(self) -> list[str]:
        """Switch to whatever the registry promoted since the last look."""
        return self.follower.check() if self.follower is not None else []

    def judge_ended(self) -> int:
        return judge_pending(self.store, self.judge)

    def publish(self) -> PublishReport:
        """Curate judged conversations and commit the accepted ones, at the judge's threshold."""
        self.repo.open(self.settings.licence)
        return publish(self.store, self.repo, threshold=self.judge.threshold,
                       daily_cap=self.settings.publish_daily_cap)

    def read_reviews(self) -> tuple[Any, int, bool]:
        """Reviewers' verdicts and corrections into the store; corrected conversations judged again; a round
        started when due. Returns the sync report, how many were judged again and whether a round started."""
        from thresher.review import sync

        synced = sync(self.store, self.repo, self.settings.quorum_approvals)
        rejudged = rejudge_corrections(self.store, self.repo, self.judge)
        started = self.rounds.maybe_start(synced.approved) if self.rounds is not None else False
        return synced, rejudged, started

    def tick(self, *, follow: bool = True, judge: bool = True, publish: bool = True) -> TickReport:
        report = TickReport()
        if follow:
            report.switched = self._stage(report, "following the registry", self.follow) or []
        if judge and self.judge is not None:
            report.judged = self._stage(report, "judging", self.judge_ended) or 0
        if publish and self.judge is not None:
            def publishing() -> None:
                report.published = self.publish()
                report.synced, report.rejudged, report.round_started = self.read_reviews()

            self._stage(report, "publishing", publishing)
        return report

    @staticmethod
    def _stage(report: TickReport, what: str, step: Callable[[], Any]) -> Any:
        try:
            return step()
        except GitError as e:  # the remote is down or refused: the next turn pushes what is committed
            report.problems.append(f"dataset: {e} (retrying next time)")
            log.warning("%s failed: %s", what, e)
        except Exception as e:  # keep the loop alive; the next turn retries
            report.problems.append(f"{what} failed: {e} (retrying next time)")
            log.exception("%s failed", what)
        return None

    def once(self, say: Callable[[str], None]) -> None:
        """Every stage once (`thresher worker --once`, for cron), each line of the report said; a round it started
        is waited for."""
        for line in self.tick().lines(quiet=False):
            say(line)
        if self.rounds is not None and self.rounds.proc is not None:
            say(f"the round's output goes to {self.rounds.log_path}")
            self.rounds.proc.wait()

    def run(self, stop: Any, *, say: Callable[[str], None] | None = None, publish_first: bool = True,
            follow_seconds: float = 5.0) -> None:
        """Turn until `stop` (a threading.Event) is set, each stage at its own pace: the registry every
        `follow_seconds`, judging every `judge_interval_seconds`, publishing every `publish_interval_seconds`
        (at once when `publish_first`, else after one interval). Each line of a turn's report goes to `say`."""
        import time

        s, now = self.settings, time.monotonic()
        due = {"follow": now, "judge": now, "publish": now if publish_first else now + s.publish_interval_seconds}
        every = {"follow": follow_seconds, "judge": s.judge_interval_seconds, "publish": s.publish_interval_seconds}
        while not stop.is_set():
            now = time.monotonic()
            todo = {k: due[k] <= now for k in due}
            report = self.tick(**todo)
            for k, ran in todo.items():
                if ran:
                    due[k] = time.monotonic() + every[k]
            for line in report.lines():
                (say or log.info)(line)
            stop.wait(max(0.01, min(due.values()) - time.monotonic()))
