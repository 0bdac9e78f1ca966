"""Measuring judges and chat models, and the promotion gate.

Judges: AUC, accuracy at a threshold, rank correlation with reviewers, and a plot of score distributions by label.
Chat models: replies to held-out questions and rates that need no judge (loops, cut-off, empty, off-language,
length); a win rate against the serving model by a frozen evaluation judge that scores each reply alone, and its
length-controlled form. The gate promotes a candidate only if every measured
check passes its configured limit, and says which failed."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def auc(good: Sequence[float], bad: Sequence[float]) -> float | None:
    """Probability that a random good item outscores a random bad one (ties count half); None without both."""
    if not good or not bad:
        return None
    ranked = sorted([(s, 1) for s in good] + [(s, 0) for s in bad])
    # Mann-Whitney U from average ranks, so ties are handled exactly.
    rank_sum, i = 0.0, 0
    while i < len(ranked):
        j = i
        while j < len(ranked) and ranked[j][0] == ranked[i][0]:
            j += 1
        avg = (i + 1 + j) / 2
        rank_sum += avg * sum(1 for k in range(i, j) if ranked[k][1] == 1)
        i = j
    u = rank_sum - len(good) * (len(good) + 1) / 2
    return u / (len(good) * len(bad))


def _ranks(xs: Sequence[float]) -> list[float]:
    order = sorted(range(len(xs)), key=lambda k: xs[k])
    ranks = [0.0] * len(xs)
    i = 0
    while i < len(order):
        j = i
        while j < len(order) and xs[order[j]] == xs[order[i]]:
            j += 1
        for k in range(i, j):
            ranks[order[k]] = (i + j + 1) / 2
        i = j
    return ranks


def spearman(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Spearman's rank correlation (Pearson on average ranks); None when undefined."""
    if len(a) != len(b) or len(a) < 2:
        return None
    ra, rb = _ranks(a), _ranks(b)
    ma, mb = sum(ra) / len(ra), sum(rb) / len(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb, strict=True))
    va = sum((x - ma) ** 2 for x in ra)
    vb = sum((y - mb) ** 2 for y in rb)
    return None if va == 0 or vb == 0 else cov / (va * vb) ** 0.5


@dataclass
class JudgeReport:
    n_good: int
    n_bad: int
    auc: float | None
    accuracy: float | None  # accepted == good, at the threshold
    accept_good: float | None
    accept_bad: float | None
    spearman: float | None  # against human scores, where given
    n_human: int
    threshold: float


def judge_report(rows: Sequence[dict], threshold: float) -> JudgeReport:
    """rows: dicts with `score` (or None), `accepted`, and `label` ('good'/'bad') and/or `human_score`."""
    scored = [r for r in rows if r.get("score") is not None]
    good = [r["score"] for r in scored if r.get("label") == "good"]
    bad = [r["score"] for r in scored if r.get("label") == "bad"]
    labelled = [r for r in scored if r.get("label") in ("good", "bad")]
    correct = [bool(r["accepted"]) == (r["label"] == "good") for r in labelled]
    human = [r for r in scored if isinstance(r.get("human_score"), int | float)]

    def rate(xs: list[dict]) -> float | None:
        return sum(bool(r["accepted"]) for r in xs) / len(xs) if xs else None

    return JudgeReport(
        n_good=len(good), n_bad=len(bad), auc=auc(good, bad),
        accuracy=sum(correct) / len(correct) if correct else None,
        accept_good=rate([r for r in labelled if r["label"] == "good"]),
        accept_bad=rate([r for r in labelled if r["label"] == "bad"]),
        spearman=spearman([r["score"] for r in human], [float(r["human_score"]) for r in human]),
        n_human=len(human), threshold=threshold,
    )


def plot_scores(rows: Sequence[dict], threshold: float, path: Path, title: str = "Judge scores by label") -> Path:
    """A PNG histogram of scores, one colour per label, with the threshold marked."""
    from thresher.plots import figure

    with figure(path) as ax:
        bins = [1 + 0.5 * i for i in range(19)]
        for label, colour in (("good", "#2563eb"), ("bad", "#dc2626"), (None, "#71717a")):
            xs = [r["score"] for r in rows if r.get("score") is not None and r.get("label") == label]
            if xs:
                ax.hist(xs, bins=bins, alpha=0.6, color=colour, label=f"{label or 'unlabelled'} ({len(xs)})")
        ax.axvline(threshold, color="black", linestyle="--", linewidth=1, label=f"threshold {threshold:g}")
        ax.set_xlabel("score (1-10)")
        ax.set_ylabel("conversations")
        ax.set_title(title)
        ax.legend()
    return path


# ---------------------------------------------------------------------------------------------- chat models

@dataclass
class WinRate:
    win_rate: float  # mean probability that the new answer is preferred
    prompts: int
    ties: int  # identical answers, counted as 0.5
    position_bias: float  # a preference for the answer shown first: 0.5 (none) for a judge that scores alone
    examples: list[dict]


class FrozenJudge:
    """The judge a round is evaluated by: one pinned judge version, never the one trained in the round it measures,
    so a round cannot grade itself. By default (`shipped()`) the head shipped with thresher over the embedded
    model's own states: the same weights and the same head every round. It scores each reply on its own, so there is
    no answer order to be biased by; a pair's preference is the Bradley-Terry reading of the two scores,
    P(new better) = sigmoid(logit_new - logit_old)."""

    def __init__(self, judge: Any) -> None:
        self.judge = judge

    @classmethod
    def shipped(cls, n_ctx: int = 2048, n_threads: int | None = None) -> FrozenJudge:
        from thresher.engines import load
        from thresher.judge import head_engine
        from thresher.reward import Head, HeadJudge, default_head_path

        head = Head.load(default_head_path())
        engine = head_engine(head, load("embedded", n_ctx=n_ctx, n_threads=n_threads), n_ctx, n_threads)
        return cls(HeadJudge(engine, head, rationale="never"))

    @classmethod
    def from_spec(cls, spec: str, n_ctx: int = 2048, n_threads: int | None = None) -> FrozenJudge:
        """`shipped` (the default `eval_judge` setting) or any judge spec `make_judge` reads (a head directory,
        `rating:SPEC`, an engine spec)."""
        if spec == "shipped":
            return cls.shipped(n_ctx, n_threads)
        from thresher.judge import make_judge

        return cls(make_judge(spec, None, rationale="never", n_ctx=n_ctx, n_threads=n_threads))

    @property
    def judge_id(self) -> str:
        return self.judge.judge_id

    @property
    def threshold(self) -> float:
        return self.judge.threshold

    def scores(self, prompts: Sequence[str], answers: Sequence[str]) -> list[float]:
        """Each answer's score 1-10 as the reply to its prompt (flagged ones score 1, failed ones raise)."""
        convs = [[{"role": "user", "content": p}, {"role": "assistant", "content": a}]
                 for p, a in zip(prompts, answers, strict=True)]
        many = getattr(self.judge, "judge_many", None)
        got = many(convs) if many else [self.judge.judge(c) for c in convs]
        bad = [j for j in got if j.score is None]
        if bad:
            raise RuntimeError(f"the evaluation judge could not score {len(bad)} replies: {bad[0].error}")
        return [float(j.score) for j in got]

    def win_rate(self, prompts: Sequence[str], new: Sequence[str], old: Sequence[str]) -> WinRate:
        import math

        def logit(score: float) -> float:
            p = min(max((score - 1) / 9, 1e-4), 1 - 1e-4)
            return math.log(p / (1 - p))

        s_new, s_old = self.scores(prompts, new), self.scores(prompts, old)
        wins, ties, examples = [], 0, []
        for prompt, a_new, a_old, x, y in zip(prompts, new, old, s_new, s_old, strict=True):
            if a_new.strip() == a_old.strip():
                win = 0.5
                ties += 1
            else:
                win = 1 / (1 + math.exp(logit(y) - logit(x)))
            wins.append(win)
            examples.append({"prompt": prompt, "new": a_new, "old": a_old, "score_new": round(x, 2),
                             "score_old": round(y, 2), "p_new": round(win, 3)})
        return WinRate(sum(wins) / len(wins) if wins else 0.5, len(wins), ties, 0.5, examples)


@dataclass
class Reply:
    text: str
    finish_reason: str | None  # "length": cut off at max_tokens


def replies(engine: Any, prompts: Sequence[str | list[dict[str, str]]], max_tokens: int = 160,
            progress: str | None = None, params: Any = None, seeds: Sequence[int] | None = None) -> list[Reply]:
    """Each prompt's reply (a prompt is a question, or the messages before the reply) with how it ended: greedy
    unless `params` (a ChatParams) says otherwise, seeded by the prompt's place or `seeds` (so a rerun gives the
    same text), as many at once as the engine decodes together."""
    from concurrent.futures import ThreadPoolExecutor
    from dataclasses import replace

    from tqdm import tqdm

    from thresher.engines import ChatParams

    base = params or ChatParams(temperature=0.0)
    base = replace(base, max_tokens=max_tokens)

    def one(i: int) -> Reply:
        text, finish = "", None
        p = prompts[i]
        messages = [{"role": "user", "content": p}] if isinstance(p, str) else p
        for c in engine.stream_chat(messages, replace(base, seed=i if seeds is None else seeds[i])):
            text += c.text
            finish = c.finish_reason or finish
        return Reply(text.strip(), finish)

    with ThreadPoolExecutor(max(1, int(getattr(engine, "n_parallel", 1) or 1))) as pool:
        return list(tqdm(pool.map(one, range(len(prompts))), total=len(prompts), desc=progress or "answering",
                         disable=progress is None, unit="prompt"))


# -- measures that need no judge --------------------------------------------------------------------------------------

_WORDS = re.compile(r"\w+", re.UNICODE)
_RUN = re.compile(r"(.{2,40}?)\1{3,}", re.S)  # a piece of 2-40 characters four or more times in a row: "1.1.1.1."
_LETTER = re.compile(r"[^\W\d_]", re.UNICODE)


def loops(text: str, n: int = 4, share: float = 0.3) -> bool:
    """Whether a reply has fallen into a loop: a short piece repeated four or more times in a row, or at least
    `share` of its word n-grams repeating an earlier one (with 16 words or more)."""
    if _RUN.search(text):
        return True
    from thresher.signals import repeated_share

    words = [w.lower() for w in _WORDS.findall(text)]
    return len(words) >= 16 and repeated_share(words, n) >= share


def latin_share(text: str) -> float | None:
    """The share of letters that are Latin script (None without letters): a reply in another script than its
    question's is off-language."""
    letters = _LETTER.findall(text)
    if not letters:
        return None
    return sum(ch.isascii() or "\u00c0" <= ch <= "\u024f" for ch in letters) / len(letters)


def reply_rates(prompts: Sequence[str], got: Sequence[Reply]) -> dict[str, float]:
    """Rates over replies with no judge at all: looping, cut off at max_tokens, empty, off-language (another
    script than the prompt's), and the mean length in words."""
    n = len(got)
    if not n:
        return {}

    def off(prompt: str, reply: str) -> bool:
        a, b = latin_share(prompt), latin_share(reply)
        return a is not None and b is not None and abs(a - b) > 0.5

    return {
        "loop_rate": sum(loops(r.text) for r in got) / n,
        "cutoff_rate": sum(r.finish_reason == "length" for r in got) / n,
        "empty_rate": sum(not r.text.strip() for r in got) / n,
        "off_language_rate": sum(off(p, r.text) for p, r in zip(prompts, got, strict=True)) / n,
        "mean_words": sum(len(_WORDS.findall(r.text)) for r in got) / n,
    }


def length_controlled(wins: Sequence[float], new_words: Sequence[int], old_words: Sequence[int]) -> float | None:
    """The win rate with the length difference taken out, in the spirit of AlpacaEval's length-controlled win rate:
    fit P(new preferred) = sigmoid(a + b * tanh(log(new/old length))) to the per-prompt preferences (logistic
    regression by Newton's method, a little ridge on b) and report sigmoid(a), the win rate of an answer as long as
    the other. None with fewer than 2 prompts."""
    import numpy as np

    if len(wins) < 2:
        return None
    y = np.clip(np.asarray(wins, dtype=float), 0.0, 1.0)
    d = np.tanh(np.log((np.asarray(new_words, dtype=float) + 1) / (np.asarray(old_words, dtype=float) + 1)))
    x = np.stack([np.ones_like(d), d], axis=1)
    w = np.zeros(2)
    ridge = np.diag([1e-6, 1e-2])
    for _ in range(50):
        p = 1 / (1 + np.exp(-(x @ w)))
        grad = x.T @ (p - y) + ridge @ w
        hess = (x * (p * (1 - p))[:, None]).T @ x + ridge
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    return float(1 / (1 + np.exp(-w[0])))


@dataclass
class Gate:
    """What a candidate must show to be promoted."""

    min_win_rate: float = 0.5  # length-controlled preference over the serving model (frozen judge)
    max_loss_ratio: float = 1.0  # held-out loss, new / serving
    min_judge_auc: float = 0.5  # the new judge on held-out labelled rows
    min_judge_gain: float = 0.0  # new judge AUC minus the serving judge's
    # the new model's share of looping / cut-off replies minus the serving model's, on the same prompts
    max_loop_increase: float = 0.05
    max_cutoff_increase: float = 0.05
    # |new mean reply length / serving's - 1|: DPO on a few dozen pairs can teach "shorter" as readily as "better"
    # (measured: a round's candidate at 0.57x the serving model's length, promoted on its win rate alone)
    max_length_change: float = 0.25
    # The three limits above hold against the base (configured) model too, once a promoted model serves: measured,
    # two rounds each within 25% of the serving model's length left replies at 0.72x the base's.


@dataclass
class GateResult:
    passed: bool
    checks: dict[str, dict[str, Any]]  # name -> {value, limit, passed}
    reasons: list[str]  # the failed checks, in words


def apply_gate(metrics: dict[str, float | None], gate: Gate) -> GateResult:
    """Pass only if every measured check passes; a check whose figure is missing is reported and skipped (a round
    with no approved held-out conversations has no held-out loss), never counted as passed silently."""
    specs = [
        ("win_rate", metrics.get("win_rate"), gate.min_win_rate, ">="),
        ("loss_ratio", metrics.get("loss_ratio"), gate.max_loss_ratio, "<="),
        ("judge_auc", metrics.get("judge_auc"), gate.min_judge_auc, ">="),
        ("judge_gain", metrics.get("judge_gain"), gate.min_judge_gain, ">="),
        ("loop_increase", metrics.get("loop_increase"), gate.max_loop_increase, "<="),
        ("cutoff_increase", metrics.get("cutoff_increase"), gate.max_cutoff_increase, "<="),
        ("length_change", metrics.get("length_change"), gate.max_length_change, "<="),
        # the same limits against the base model, where the serving model is a promoted one
        ("base_loop_increase", metrics.get("base_loop_increase"), gate.max_loop_increase, "<="),
        ("base_cutoff_increase", metrics.get("base_cutoff_increase"), gate.max_cutoff_increase, "<="),
        ("base_length_change", metrics.get("base_length_change"), gate.max_length_change, "<="),
    ]
    checks, reasons = {}, []
    for name, value, limit, op in specs:
        if value is None:
            checks[name] = {"value": None, "limit": limit, "passed": None}
            continue
        ok = value >= limit if op == ">=" else value <= limit
        checks[name] = {"value": round(value, 4), "limit": limit, "passed": ok}
        if not ok:
            reasons.append(f"{name} {value:.3f} is not {op} {limit}")
    measured = [c for c in checks.values() if c["passed"] is not None]
    if not measured:
        reasons.append("nothing was measured")
    return GateResult(bool(measured) and not reasons, checks, reasons)


# -- a judge against labels (`thresher judge-eval`) ---------------------------------------------------------------


def labelled_rows(file: Path | None, sources: Sequence[str], *, limit: int | None = None, seed: int = 0,
                  write: Path | None = None, bad: list[tuple[int, str]] | None = None) -> list[tuple[int, dict]]:
    """What `thresher judge-eval` measures on: the labelled JSONL `file` (its bad lines into `bad`), or a set built
    from `sources` by `spoiled_set` (also written to `write` when given). ValueError when both or neither are
    given or the file is missing; the sources' own errors as `spoiled_set` raises them."""
    from thresher.judge import read_jsonl

    if (file is None) == (not sources):
        raise ValueError("give a labelled FILE, or --source to build one (not both)")
    if file is not None:
        if not file.is_file():
            raise ValueError(f"no such file: {file}")
        return list(read_jsonl(file, [] if bad is None else bad))
    lines = spoiled_set(sources, limit, seed)
    if write is not None:
        write.write_text("".join(json.dumps(obj, ensure_ascii=False) + "\n" for _, obj in lines), encoding="utf-8")
    return lines


def spoiled_set(names: Sequence[str], limit: int | None = None, seed: int = 0) -> list[tuple[int, dict[str, Any]]]:
    """A labelled set built from real good conversations (`thresher.train.sources` names or files): each kept as
    a good row and spoiled in every failure family with wordings training never used. (line number, row) pairs,
    as `thresher.judge.read_jsonl` gives them. Raises the sources' SourceError/ValueError/OSError."""
    import random

    from thresher.train import sources
    from thresher.train.contrast import contrast_rows

    good = sources.load(list(names))
    if limit:
        random.Random(seed).shuffle(good)
        good = good[:limit]
    built = contrast_rows(good, seed, heldout=True)
    return [(i + 1, {"id": f"{r.source}:{r.degradation}:{i}", "messages": r.messages, "label": r.label,
                     "degradation": r.degradation}) for i, r in enumerate(built)]


@dataclass
class JudgeEvaluation:
    """A judge measured against labelled rows: `thresher judge-eval`'s figures."""

    judge: str | None  # None: every row came scored
    threshold: float
    rows: list[dict[str, Any]]  # label, human_score, score, degradation, accepted, flagged
    report: JudgeReport
    by_family: dict[str, float | None]  # AUC overall, by kind and by `family:NAME`
    counts: dict[str, int]  # bad rows of each kind
    plot: Path

    @property
    def flagged(self) -> int:
        return sum(r["flagged"] for r in self.rows)

    @property
    def aimed(self) -> list[dict[str, Any]]:
        """Rows with text aimed at the evaluator."""
        return [r for r in self.rows if str(r["degradation"]).startswith("injection")]

    def to_json(self) -> dict[str, Any]:
        rep = self.report
        return {"judge": self.judge, "threshold": self.threshold, "auc": rep.auc, "by_family": self.by_family,
                "counts": self.counts, "accuracy": rep.accuracy, "accept_good": rep.accept_good,
                "accept_bad": rep.accept_bad, "flagged": self.flagged,
                "flagged_accepted": sum(r["flagged"] and r["accepted"] for r in self.rows),
                "injection_rows": len(self.aimed), "injection_accepted": sum(r["accepted"] for r in self.aimed)}

    def lines(self) -> list[str]:
        def f(x: float | None) -> str:
            return "n/a" if x is None else f"{x:.3f}"

        rep, fam, counts = self.report, self.by_family, self.counts
        out = [f"conversations: {rep.n_good} good, {rep.n_bad} bad, {rep.n_human} with human scores"]
        unscored = sum(r.get("score") is None for r in self.rows)
        if unscored:
            out.append(f"no score (unparseable or failed): {unscored}, left out of the figures below")
        out.append(f"AUC: {f(rep.auc)}")
        kinds = [k for k in fam if k != "all" and not k.startswith("family:")]
        if kinds:
            out.append("AUC by failure family (bad rows): " + ", ".join(
                f"{k.removeprefix('family:')} {f(v)}" for k, v in fam.items() if k.startswith("family:")))
            out.append("AUC by kind: " + ", ".join(f"{k} {f(fam[k])} ({counts[k]})" for k in kinds))
        small = [k for k in kinds if counts[k] < 30]
        if small:
            out.append(f"note: fewer than 30 rows for {', '.join(small)}: those figures are noise")
        if self.aimed:
            out.append(f"rows with text aimed at the evaluator: {len(self.aimed)}, flagged "
                       f"{sum(r['flagged'] for r in self.aimed)}, accepted {sum(r['accepted'] for r in self.aimed)}")
        out.append(f"accuracy at threshold {self.threshold:g}: {f(rep.accuracy)}")
        out.append(f"acceptance rate: good {f(rep.accept_good)}, bad {f(rep.accept_bad)}; flagged for text aimed at "
                   f"the evaluator: {self.flagged}, of them accepted: "
                   f"{sum(r['flagged'] and r['accepted'] for r in self.rows)}")
        out.append(f"Spearman vs human scores: {f(rep.spearman)}")
        out.append(f"plot: {self.plot}")
        return out


def evaluate_judge(lines: Sequence[tuple[int, dict[str, Any]]], judge: Any, threshold: float | None, plot: Path,
                   bad: list[tuple[int, str]], progress: Any = None) -> JudgeEvaluation:
    """Score the rows that carry no `score` with `judge` (16 at a time, through `judge_many` where it has one,
    calling `progress(done, total)` after each batch), and measure. `threshold`: None takes the judge's own. Rows whose
    messages are not a conversation go to `bad` as (line, why). A conversation flagged for text aimed at the
    evaluator counts as not accepted, whatever its score."""
    from thresher.conversation import InvalidConversation, messages_from_openai
    from thresher.judge import BLOCKING
    from thresher.train.judge import per_family

    thr = threshold if threshold is not None else judge.threshold
    valid: list[tuple[int, list[dict[str, str]]]] = []
    for n, obj in lines:
        if obj.get("score") is None:
            try:
                valid.append((n, [m.to_openai() for m in messages_from_openai(obj.get("messages"),
                                                                              user_last=False)]))
            except InvalidConversation as e:
                bad.append((n, str(e)))
    scored: dict[int, tuple[float | None, list[str]]] = {}
    for start in range(0, len(valid), 16):
        chunk = valid[start:start + 16]
        many = getattr(judge, "judge_many", None)
        results = many([m for _, m in chunk]) if many else [judge.judge(m) for _, m in chunk]
        for (n, _), res in zip(chunk, results, strict=True):
            scored[n] = (res.score, res.flags)
        if progress is not None:
            progress(start + len(chunk), len(valid))
    rows: list[dict[str, Any]] = []
    for n, obj in lines:
        if obj.get("score") is not None:
            score, flags = float(obj["score"]), list(obj.get("flags") or [])
        elif n in scored:
            score, flags = scored[n]
        else:
            continue
        rows.append({"label": obj.get("label"), "human_score": obj.get("human_score"), "score": score,
                     "degradation": obj.get("degradation") or ("none" if obj.get("label") == "good" else "bad"),
                     "accepted": score is not None and score >= thr and not BLOCKING.intersection(flags),
                     "flagged": bool(BLOCKING.intersection(flags))})
    labelled = [r for r in rows if r["label"] in ("good", "bad")]
    fam = per_family([r["score"] for r in labelled], [r["label"] for r in labelled],
                     [r["degradation"] for r in labelled])
    counts = {k: sum(r["degradation"] == k for r in labelled) for k in fam}
    return JudgeEvaluation(getattr(judge, "judge_id", None) if valid else None, thr, rows,
                           judge_report(rows, thr), fam, counts, plot_scores(rows, thr, plot))
