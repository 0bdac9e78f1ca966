"""Measuring judges (and, later, models): AUC, accuracy at a threshold, rank correlation, and a plot of score
distributions by label."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
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
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
