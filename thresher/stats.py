"""The flywheel's figures, for `/dashboard` and `thresher status`: conversations by status, the curator's acceptance
rate per day, score histograms per judge version, how well each judge version agrees with the reviewers, and the
training rounds with their gates and the models' lineage.

`collect` reads the store, `DATA_DIR/rounds/<n>/` and the registry into one `Figures`; `plot` draws one of them as a
PNG with matplotlib's Agg backend (imported only there, so the server starts without it). A figure without data
says so ("no data yet") instead of drawing empty axes.
"""

from __future__ import annotations

import io
import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date
from pathlib import Path
from typing import Any

from thresher.conversation import Judgment, Status
from thresher.evaluate import auc, spearman
from thresher.evidence import is_noise
from thresher.registry import Registry, RegistryError, Version
from thresher.review import quorum
from thresher.store import CONSENT_REJECTIONS, Store
from thresher.train.state import RoundState

# Conversation statuses in the order a conversation passes through them, with what each means here.
STATUSES = {
    Status.OPEN: "open (being chatted in)",
    Status.ENDED: "ended, not judged (yet)",
    Status.JUDGED: "judged, not curated yet",
    Status.ACCEPTED: "accepted, not published yet",
    Status.PUBLISHING: "being published",
    Status.PUBLISHED: "published",
    Status.REJECTED: "rejected by the judge or curator",
    Status.TAKEN_DOWN: "taken down",
}
# Published conversations by the reviewers' quorum.
REVIEWS = {"approved": "approved by reviewers", "rejected": "rejected by reviewers", "pending": "awaiting review"}
PLOTS = ("statuses", "acceptance", "scores", "agreement", "rounds")
NO_DATA = "no data yet"


@dataclass
class Day:
    """The curator's decisions on one day (UTC): accepted (published, or to be) against rejected."""

    day: date
    accepted: int
    rejected: int

    @property
    def rate(self) -> float:
        return self.accepted / (self.accepted + self.rejected)


@dataclass
class Agreement:
    """One judge version against the reviewers, over the published conversations that it judged and that have a
    quorum verdict. `agree`: the judge's accept (score at the threshold, no blocking flag) matched the reviewers'
    approve. Spearman: the judge's score against the mean of the reviewers' scores, where any were given."""

    judge: str
    verdicts: int
    agree: int
    judge_accept_reviewers_reject: int
    judge_reject_reviewers_approve: int
    auc: float | None  # judge score separating approved from rejected
    spearman: float | None
    scored: int  # conversations with a reviewer score, for the Spearman figure

    @property
    def rate(self) -> float | None:
        return self.agree / self.verdicts if self.verdicts else None


@dataclass
class Round:
    """One training round as `DATA_DIR/rounds/<n>/` records it, finished or not."""

    n: int
    stages: list[str]
    finished: bool
    commit: str | None = None
    approved: int | None = None
    chat_version: str | None = None
    judge_version: str | None = None
    chat_gate: bool | None = None  # None: not gated yet
    judge_gate: bool | None = None
    reasons: list[str] = field(default_factory=list)  # failed checks, "chat: ..." / "judge: ..."
    promoted: list[str] = field(default_factory=list)
    win_rate: float | None = None
    lc_win_rate: float | None = None  # with the length difference taken out
    prompts: int | None = None  # held-out prompts the win rate was measured on
    loop_rate: float | None = None  # the candidate's replies to those prompts that loop ...
    cutoff_rate: float | None = None  # ... and that were cut off at the reply length
    serving_loop_rate: float | None = None
    serving_cutoff_rate: float | None = None
    mean_words: float | None = None  # the candidate's mean reply length, in words, and the serving model's
    serving_mean_words: float | None = None
    pairs: int | None = None  # preference pairs the candidate was trained on (DPO), 0: SFT only
    loss_ratio: float | None = None
    judge_auc: float | None = None
    judge_gain: float | None = None
    # the judge's held-out AUC by failure family ("relevance", ...) and against reviewers' verdicts ("reviewers")
    judge_families: dict[str, float | None] = field(default_factory=dict)


@dataclass
class Figures:
    threshold: float
    min_approvals: int
    statuses: dict[str, int]  # conversation status -> count, in STATUSES order (then any others)
    reviews: dict[str, int]  # published conversations by quorum: approved / rejected / pending
    acceptance: list[Day]
    # judge version -> counts of scores in nine bins over 1..10 (bin k: k <= score < k+1; the last takes 10 too)
    histograms: dict[str, list[int]]
    agreement: list[Agreement]
    rounds: list[Round]
    versions: list[Version]
    problems: list[str] = field(default_factory=list)  # records that could not be read, and why
    # the thresholds curation actually decided at (as recorded with each decision) -> how many decisions
    decided_at: dict[float, int] = field(default_factory=dict)

    def threshold_note(self) -> str:
        """The threshold in force, and the others decisions were made at, when there were any."""
        others = {t: n for t, n in self.decided_at.items() if t != self.threshold}
        said = f"threshold in force {self.threshold:g}"
        if others:
            said += "; decisions so far were made at " + ", ".join(
                f"{t:g} ({n} conversation{'s' if n != 1 else ''})" for t, n in sorted(others.items()))
        return said

    @property
    def total(self) -> int:
        return sum(self.statuses.values())

    def empty(self, name: str) -> bool:
        """Whether the plot `name` has nothing to show."""
        if name not in PLOTS:
            raise ValueError(f"no plot named {name!r}; the plots are {', '.join(PLOTS)}")
        return {"statuses": not self.total, "acceptance": not self.acceptance, "scores": not self.histograms,
                "agreement": not any(a.verdicts for a in self.agreement),
                "rounds": not any(r.win_rate is not None or r.judge_auc is not None for r in self.rounds)}[name]


def judge_label(j: Judgment, rubrics: dict[str, set[str]], names: dict[str, str] | None = None) -> str:
    """A judge version's name: the registry's name for it when it has one (the same name as the Models table),
    else its judge id; with the rubric hash when that judge id was used with several."""
    name = (names or {}).get(j.judge_id, j.judge_id)
    return name if len(rubrics[j.judge_id]) == 1 else f"{name} (rubric {j.rubric_hash[:8]})"


def registry_names(versions: list[Version]) -> dict[str, str]:
    """Judge id (what a judgment records) -> registry version id, for the judge versions rounds trained."""
    names = {}
    for v in versions:
        if v.kind != "judge":
            continue
        if v.metrics.get("judge_id"):
            names[str(v.metrics["judge_id"])] = v.id
    return names


def _registry_name(judge_id: str, versions: list[Version]) -> str | None:
    """For records written before versions kept their judge id: a head judge's digest is in both names."""
    if not judge_id.startswith("head-"):
        return None
    digest = judge_id.removeprefix("head-").split("@")[0]
    return next((v.id for v in versions if v.kind == "judge" and v.id.endswith("-" + digest)), None)


def collect(store: Store, data_dir: Path, threshold: float, min_approvals: int = 1) -> Figures:
    """Every figure, from the store, the round records under `data_dir/rounds` and the registry."""
    problems: list[str] = []
    counts = store.counts()
    statuses = {str(s): counts[s] for s in STATUSES if counts.get(s)}
    statuses.update(sorted((s, n) for s, n in counts.items() if s not in STATUSES and n))

    decisions = store.decisions()
    published = {p.conversation_id for p, _ in decisions if p.state == "published"}
    decided_thresholds = {p.conversation_id: p.threshold for p, _ in decisions if p.threshold is not None}
    decided_at = dict(Counter(p.threshold for p, _ in decisions
                              if p.threshold is not None and p.reason not in CONSENT_REJECTIONS))
    verdicts: dict[str, list] = defaultdict(list)
    for r in store.reviews():
        verdicts[r.conversation_id].append(r)
    quorums = {cid: quorum(verdicts.get(cid, []), min_approvals) for cid in published}
    reviews = dict(Counter(quorums.values()))
    reviews = {k: reviews[k] for k in REVIEWS if reviews.get(k)}

    days: dict[date, list[int]] = defaultdict(lambda: [0, 0])
    for p, at in decisions:
        if p.state == "rejected" and p.reason in CONSENT_REJECTIONS:
            continue  # the owner's choice, not the conversation's quality
        days[at.astimezone(UTC).date()][p.state == "rejected"] += 1
    acceptance = [Day(d, a, r) for d, (a, r) in sorted(days.items())]

    try:
        versions = Registry(data_dir / "models").versions()
    except RegistryError as e:
        versions = []
        problems.append(str(e))
    judgments = store.all_judgments()
    rubrics: dict[str, set[str]] = defaultdict(set)
    names = registry_names(versions)
    for _, j in judgments:
        rubrics[j.judge_id].add(j.rubric_hash)
        if j.judge_id not in names and (known := _registry_name(j.judge_id, versions)):
            names[j.judge_id] = known
    histograms: dict[str, list[int]] = {}
    latest: dict[str, dict[str, Judgment]] = defaultdict(dict)  # judge version -> conversation -> its judgment
    for cid, j in judgments:
        if j.status == "failed":
            continue
        label = judge_label(j, rubrics, names)
        latest[label][cid] = j
        if j.score is not None:
            histograms.setdefault(label, [0] * 9)[min(8, max(0, int(j.score) - 1))] += 1

    agreement = []
    for label, by_conv in latest.items():
        decided = [cid for cid, q in quorums.items() if q != "pending" and cid in by_conv]
        rows = [(by_conv[cid], quorums[cid] == "approved", verdicts[cid]) for cid in decided]
        if not rows:
            continue
        # (judge accepts, reviewers approve): accepting at the threshold the decision was really made at
        pairs = [(j.accepted(decided_thresholds.get(cid, threshold)), ok) for cid, (j, ok, _) in zip(decided, rows,
                                                                                                    strict=True)]
        scored = [(j.score, sum(given) / len(given)) for j, _, vs in rows
                  if j.score is not None and (given := [v.score for v in vs if v.score is not None])]
        agreement.append(Agreement(
            judge=label, verdicts=len(rows), agree=sum(a == ok for a, ok in pairs),
            judge_accept_reviewers_reject=sum(a and not ok for a, ok in pairs),
            judge_reject_reviewers_approve=sum(ok and not a for a, ok in pairs),
            auc=auc([j.score for j, ok, _ in rows if ok and j.score is not None],
                    [j.score for j, ok, _ in rows if not ok and j.score is not None]),
            spearman=spearman([s for s, _ in scored], [h for _, h in scored]), scored=len(scored)))
    agreement.sort(key=lambda a: a.judge)

    return Figures(threshold, min_approvals, statuses, reviews, acceptance, histograms, agreement,
                   read_rounds(data_dir / "rounds", problems), versions, problems, decided_at)


def _read_json(path: Path, problems: list[str]) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        problems.append(f"{path} could not be read: {e}")
        return None
    if not isinstance(data, dict):
        problems.append(f"{path} is not a JSON object")
        return None
    return data


def read_rounds(root: Path, problems: list[str] | None = None) -> list[Round]:
    """The rounds recorded under `root` (DATA_DIR/rounds), oldest first; unreadable records go to `problems`."""
    problems = [] if problems is None else problems
    out = []
    dirs = sorted((p for p in root.glob("*") if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))
    for d in dirs:
        r = _read_round(d, problems)
        if r is not None:
            out.append(r)
    return out


def _read_round(d: Path, problems: list[str]) -> Round | None:
    """One round's directory: its state's stages, or for a round copied from elsewhere its record
    (`round.json`)."""
    try:
        state: RoundState | None = RoundState(d)
    except (OSError, ValueError) as e:
        problems.append(f"{d / 'state.json'} could not be read: {e}")
        state = None
    record = _read_json(d / "round.json", problems) or {}
    stages = list(state.data["stages"]) if state else []
    if not stages and not record:
        return None

    def stage(name: str, key: str | None = None) -> dict[str, Any]:
        got = state.raw(name) if state else {}
        return got or (record.get(key) if key and isinstance(record.get(key), dict) else None) or {}

    pinned, data, judge, chat = stage("pinned"), stage("data", "counts"), stage("judge", "judge"), stage("chat", "chat")
    ev, gated = stage("evaluated", "evaluation"), stage("gated", "gate")
    r = Round(n=int(d.name), stages=stages or ["published"], finished="published" in stages or bool(record),
              commit=pinned.get("commit", record.get("commit")), approved=data.get("approved"),
              chat_version=chat.get("version"), judge_version=judge.get("version"),
              win_rate=ev.get("win_rate"), lc_win_rate=ev.get("lc_win_rate"), prompts=ev.get("prompts"),
              loop_rate=(ev.get("replies_new") or {}).get("loop_rate"),
              cutoff_rate=(ev.get("replies_new") or {}).get("cutoff_rate"),
              serving_loop_rate=(ev.get("replies_serving") or {}).get("loop_rate"),
              serving_cutoff_rate=(ev.get("replies_serving") or {}).get("cutoff_rate"),
              mean_words=(ev.get("replies_new") or {}).get("mean_words"),
              serving_mean_words=(ev.get("replies_serving") or {}).get("mean_words"),
              pairs=chat.get("pairs"),
              loss_ratio=ev.get("loss_ratio"),
              judge_auc=judge.get("after_auc"), judge_gain=judge.get("gain"),
              promoted=list(record.get("promoted") or []),
              judge_families={k.removeprefix("family:"): v for k, v in (judge.get("by_family") or {}).items()
                              if k.startswith("family:") or k == "reviewers"})
    for kind in ("chat", "judge"):
        g = gated.get(kind)
        if isinstance(g, dict):
            setattr(r, f"{kind}_gate", bool(g.get("passed")))
            r.reasons += [f"{kind}: {why}" for why in g.get("reasons") or []]
    return r


def lineage(version: Version, versions: list[Version]) -> list[str]:
    """The version's ancestry, newest first: its id, its parent's, ... back to the base model."""
    by_id = {v.id: v for v in versions}
    chain, at = [version.id], version.parent
    while at is not None and at not in chain:
        chain.append(at)
        at = by_id[at].parent if at in by_id else None
    return chain + ["base"]


# -- plots ----------------------------------------------------------------------------------------------------------

COLOURS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#71717a"]


def plot(figures: Figures, name: str) -> bytes:
    """One figure as PNG bytes: statuses, acceptance, scores, agreement or rounds."""
    empty = figures.empty(name)  # raises ValueError for an unknown name
    from thresher.plots import figure

    buf = io.BytesIO()
    with figure(buf, size=(7, 3.6)) as ax:
        if empty:
            ax.set_axis_off()
            ax.text(0.5, 0.5, NO_DATA, ha="center", va="center", fontsize=16, color="#71717a")
        else:
            {"statuses": _statuses, "acceptance": _acceptance, "scores": _scores, "agreement": _agreement,
             "rounds": _rounds}[name](figures, ax)
    return buf.getvalue()


def _statuses(f: Figures, ax: Any) -> None:
    from matplotlib.ticker import MaxNLocator

    labels = list(f.statuses) + [REVIEWS[k] for k in f.reviews]
    values = list(f.statuses.values()) + list(f.reviews.values())
    colours = [COLOURS[0]] * len(f.statuses) + [COLOURS[2]] * len(f.reviews)
    bars = ax.barh(labels[::-1], values[::-1], color=colours[::-1])
    ax.bar_label(bars, padding=3)
    ax.set_xlabel("conversations")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title("Conversations by status; green: the published by reviewers' verdict", fontsize=10)
    ax.margins(x=0.12)


def _acceptance(f: Figures, ax: Any) -> None:
    days = [d.day.isoformat() for d in f.acceptance]
    bars = ax.bar(days, [100 * d.rate for d in f.acceptance], color=COLOURS[0])
    ax.bar_label(bars, labels=[f"{d.accepted}/{d.accepted + d.rejected}" for d in f.acceptance], padding=2)
    ax.set_ylim(0, 110)
    ax.set_ylabel("accepted, %")
    ax.set_title("Curator's acceptance rate per day (accepted / decided)")
    ax.tick_params(axis="x", labelrotation=30 if len(days) > 4 else 0)


def _scores(f: Figures, ax: Any) -> None:
    from matplotlib.ticker import MaxNLocator

    width = 0.8 / len(f.histograms)
    for i, (label, counts) in enumerate(sorted(f.histograms.items())):  # bin k is drawn between k and k+1
        xs = [k + 1.1 + width * i for k in range(len(counts))]
        ax.bar(xs, counts, width=width, align="edge", color=COLOURS[i % len(COLOURS)],
               label=f"{label} ({sum(counts)})")
    for t in sorted(set(f.decided_at) - {f.threshold}):
        ax.axvline(t, color="#71717a", linestyle=":", linewidth=1, label=f"decided at {t:g}")
    ax.axvline(f.threshold, color="black", linestyle="--", linewidth=1, label=f"threshold in force {f.threshold:g}")
    ax.set_xticks(range(1, 11))
    ax.set_xlim(0.7, 10.3)  # a threshold of 1 or 10 stays in sight, off the frame
    ax.set_xlabel("score")
    ax.set_ylabel("judgments")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title("Judge scores by judge version")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)  # beside the bars


def _agreement(f: Figures, ax: Any) -> None:
    rows = [a for a in f.agreement if a.verdicts]
    bars = ax.bar([a.judge for a in rows], [100 * (a.rate or 0) for a in rows], color=COLOURS[2])
    ax.bar_label(bars, labels=[f"{a.agree}/{a.verdicts}" + (f", ρ {a.spearman:.2f}" if a.spearman is not None else "")
                               for a in rows], padding=2)
    ax.set_ylim(0, 110)
    ax.set_ylabel("agreement, %")
    ax.set_title("Judge accept vs reviewers' approve, per judge version")


def _rounds(f: Figures, ax: Any) -> None:
    rounds = [r for r in f.rounds if r.win_rate is not None or r.judge_auc is not None]
    for attr, gate, colour, label in (("win_rate", "chat_gate", COLOURS[0], "chat win rate"),
                                      ("lc_win_rate", "chat_gate", COLOURS[5], "length-controlled win rate"),
                                      ("loop_rate", "chat_gate", COLOURS[4], "replies that loop"),
                                      ("judge_auc", "judge_gate", COLOURS[3], "judge AUC")):
        pts = [(r.n, getattr(r, attr), getattr(r, gate)) for r in rounds if getattr(r, attr) is not None]
        if not pts:
            continue
        ax.plot([n for n, _, _ in pts], [v for _, v, _ in pts], color=colour, label=label, marker="o")
        failed = [(n, v) for n, v, ok in pts if ok is False]
        if failed:
            ax.scatter([n for n, _ in failed], [v for _, v in failed], color=COLOURS[1], marker="x", s=80,
                       zorder=3, label=f"{label}: gate failed")
    ax.set_xticks([r.n for r in rounds])
    ax.set_xlabel("round")
    ax.set_ylim(0, 1.05)
    ax.set_title("Rounds: the candidate's figures (x: gate failed, not promoted)")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)


# -- the terminal ---------------------------------------------------------------------------------------------------


SCORE_BINS = [f"{k}-{k + 1}" for k in range(1, 10)]  # the histograms' columns


def rates_words(r: Round) -> str:
    """'12% -> 4%, 30% -> 10%; 120 -> 98 words': the serving model's loop and cut-off rates and mean length, then
    the candidate's."""
    if r.loop_rate is None or r.cutoff_rate is None:
        return "–"
    words = ("" if r.mean_words is None or r.serving_mean_words is None
             else f"; {r.serving_mean_words:.0f} -> {r.mean_words:.0f} words")
    return (f"{_pct(r.serving_loop_rate)} -> {_pct(r.loop_rate)}, "
            f"{_pct(r.serving_cutoff_rate)} -> {_pct(r.cutoff_rate)}{words}")


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.0f}%"


def _fmt(x: float | None, spec: str = ".3f") -> str:
    return "–" if x is None else format(x, spec)


def tables(f: Figures) -> list[Any]:
    """The figures as rich tables for `thresher status` (the dashboard's tables, without the plots); a section with
    nothing to show is one line saying so."""
    from rich.table import Table
    from rich.text import Text

    out: list[Any] = [Text(p, style="red") for p in f.problems]

    def table(title: str, *columns: str, caption: str | None = None) -> Table:
        t = Table(title=title, title_justify="left", caption=caption, caption_justify="left")
        for c in columns:
            t.add_column(c, justify="left" if c in ("status", "day", "judge", "version", "kind", "state", "gates",
                                                    "lineage", "why", "commit", "promoted") else "right",
                         no_wrap=c in ("day", "commit", "version"))
        return t

    def none(title: str, why: str) -> Text:
        return Text(f"{title}: {NO_DATA} ({why})")

    if f.total:
        t = table("Conversations", "status", "n", caption=f"reviewers' quorum: {f.min_approvals} approval(s), "
                                                           "any rejection rejects")
        for s, n in f.statuses.items():
            t.add_row(STATUSES.get(s, s), str(n))
        for s, n in f.reviews.items():
            t.add_row(f"  published, {REVIEWS[s]}", str(n))
        t.add_row("all", str(f.total), style="bold")
        out.append(t)
    else:
        out.append(none("Conversations", "none stored"))

    if f.acceptance:
        t = table("Acceptance per day (UTC)", "day", "accepted", "rejected", "rate")
        for d in f.acceptance:
            t.add_row(d.day.isoformat(), str(d.accepted), str(d.rejected), f"{100 * d.rate:.0f}%")
        out.append(t)
    else:
        out.append(none("Acceptance per day", "the curator has decided on nothing"))

    if f.histograms:
        t = table("Scores by judge version", "judge", *SCORE_BINS, "all",
                  caption=f"column k-l: scores from k up to l (10 in the last); {f.threshold_note()}")
        for judge, counts in sorted(f.histograms.items()):
            t.add_row(judge, *map(str, counts), str(sum(counts)))
        out.append(t)
    else:
        out.append(none("Scores by judge version", "nothing judged"))

    if f.agreement:
        t = table("Judge vs reviewers", "judge", "verdicts", "agree", "judge yes, reviewers no",
                  "judge no, reviewers yes", "AUC", "Spearman (n)")
        for a in f.agreement:
            t.add_row(a.judge, str(a.verdicts), f"{a.agree} ({100 * (a.rate or 0):.0f}%)",
                      str(a.judge_accept_reviewers_reject), str(a.judge_reject_reviewers_approve), _fmt(a.auc, ".2f"),
                      f"{_fmt(a.spearman, '.2f')} ({a.scored})")
        out.append(t)
    else:
        out.append(none("Judge vs reviewers", "no published conversation has a reviewers' verdict"))

    if f.rounds:
        why = [f"round {r.n}, {reason}" for r in f.rounds for reason in r.reasons]
        t = table("Rounds", "round", "state", "commit", "approved", "pairs", "win rate (LC)",
                  "loops, cut off; length", "loss ratio", "judge AUC (gain)", "gates", "promoted",
                  caption="\n".join(why) or None)
        for r in f.rounds:
            gates = "\n".join(f"{k} {'passed' if g else 'failed' if g is False else 'not gated'}"
                              for k, g in (("chat", r.chat_gate), ("judge", r.judge_gate)))
            gain = "" if r.judge_gain is None else f" ({r.judge_gain:+.3f})"
            t.add_row(str(r.n), "finished" if r.finished else f"after {', '.join(r.stages) or 'nothing'}",
                      (r.commit or "–")[:12], "–" if r.approved is None else str(r.approved),
                      "–" if r.pairs is None else str(r.pairs),
                      _fmt(r.win_rate) + ("" if r.lc_win_rate is None else f" ({r.lc_win_rate:.3f})")
                      + (f" (noise: {r.prompts} prompts)" if r.win_rate is not None and r.prompts is not None
                         and is_noise(r.prompts) else ""),
                      rates_words(r), _fmt(r.loss_ratio), _fmt(r.judge_auc) + gain,
                      gates, ", ".join(r.promoted) or "nothing")
        out.append(t)
    else:
        out.append(none("Rounds", "no training round has run"))

    if f.versions:
        t = table("Models", "version", "kind", "round", "status", "lineage", "why")
        for v in f.versions:
            t.add_row(v.id, v.kind, str(v.round), v.status, " <- ".join(lineage(v, f.versions)), v.reason)
        out.append(t)
    else:
        out.append(none("Models", "none registered; the configured models serve"))
    return out


def status(store: Store, settings: Any) -> list[Any]:
    """`thresher status`, its parts in order: summary lines (conversations, judgments, the dataset, the threshold
    in force), the dashboard's figures as rich tables, and lines for the newest judged conversations not curated
    yet with their last judgment."""
    counts = store.counts()
    judgment_stats = store.judgment_stats()
    lines = ["conversations: " + (", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none")]
    by: dict[str, int] = judgment_stats["by_status"]  # type: ignore[assignment]
    lines.append("judgments: " + (", ".join(f"{k} {v}" for k, v in sorted(by.items())) or "none"))
    pubs = store.publications()
    if pubs:
        states = Counter(p.state for p in pubs)
        unpushed = sum(1 for p in pubs if p.state == "published" and not p.pushed)
        lines.append("dataset: " + ", ".join(f"{k} {v}" for k, v in sorted(states.items()))
                     + (f" ({unpushed} not pushed yet)" if unpushed and settings.dataset_remote else
                        f" (in {settings.dataset_path}; no dataset_remote set, so nothing is pushed)" if unpushed
                        else ""))
    if judgment_stats["mean_score"] is not None:
        lines.append(f"mean score: {judgment_stats['mean_score']:.2f}")
    figures = collect(store, settings.data_dir, settings.threshold(), settings.quorum_approvals)
    lines.append(f"publishing: {figures.threshold_note()} (judge_threshold = {settings.judge_threshold})")
    recent = store.list(status=Status.JUDGED, limit=5)
    waiting = ["Judged, not curated yet (newest):"] if recent else []
    for conv in recent:
        last = store.judgments(conv.id)[-1]
        waiting.append(f"  {conv.id}  score {'-' if last.score is None else f'{last.score:.2f}'}  {last.status}  "
                       + " ".join(last.flags))
    return lines + tables(figures) + waiting
