"""The judge's one-pass score against generating and parsing a rating: throughput and AUC, same model, same run.

What it measures, in one process on one machine, over a labelled set of good conversations and bad ones derived
from them (bench/judge_data.py: answers swapped, truncated, refused, rude, looping, wrong, or carrying text aimed at
the evaluator; every conversation written for this benchmark):

* one-pass: `Judge(engine, rationale="never").judge(messages)`, which asks the engine for the probabilities of the
  first digit after `Rating: [[` and of `0` vs `]]` after `Rating: [[1` (two `engine.next_token_probs` calls that
  share all but one token of prompt) and takes the expectation over 1..10 as the score;
* generate-and-parse: the same `Judge` class over a thin wrapper of the *same* engine object whose
  `next_token_probs` raises `ProbabilitiesUnavailable`, so `Judge.judge` itself falls back to generating the answer
  to the same prompt (greedy, `Judge._generate(prompt, 24)`, i.e. 24 tokens at most) and parsing it with
  `parse_rating`. An answer with no rating counts as the lowest score, 1, for the AUC, and the fraction of such
  answers is reported (with the AUC over parsed answers only beside it).

For each: conversations/second (conversations judged / seconds spent inside `Judge.judge`), median seconds per
conversation, AUC (good vs bad; Mann-Whitney with ties counted half, `thresher.evaluate.auc`) with a 95% bootstrap
interval, mean scores, and per degradation the AUC of the good rows against that degradation's rows. Then the ratio
one-pass / generate in throughput and the AUC difference (paired bootstrap), printed beside the goal:
one-pass >= 10x the throughput of generate-and-parse at equal or better AUC.

Both paths run interleaved in chunks of 8 conversations (one-pass on the chunk, then generate on it, the order
flipping every chunk) so drift in machine speed hits both alike; each path is warmed up once first. The
conversations within a chunk differ, so neither path ever finds its own prompt in llama.cpp's KV cache; both reuse
the longest prefix they share with the previous prompt (the rubric, most of the prompt), as the judge runs. A
second, small comparison clears the KV cache before every call of both paths ("cold"), which isolates the cost of
the method itself from prefix caching.

Injection rows: `Judge.judge` flags text aimed at the evaluator with regular expressions and caps the score below
the threshold, whatever the model says; the per-degradation table shows how many rows were flagged, so the model's
share of the injection AUC can be told from the patterns'.

Run:
    python bench/judge.py [--model SPEC] [--limit N] [--seed N] [--threads N] [--json PATH] [--dump PATH]
--limit picks N rows of the ~255 (a third good, the rest spread evenly over the degradations; 0 = all); the default,
90, takes about 3-4 minutes with the embedded model on an idle 2-core machine. --dump PATH writes the selected rows
(same --limit and --seed) as JSONL for `thresher judge-eval PATH` and exits without judging. The bench also prints
how much CPU other processes used while it ran; above 10% the timings are noisy, so run it again on an idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cpu_load import OtherLoad
from judge_data import DEGRADATIONS, build_labelled_set, select, write_jsonl
from rich.console import Console
from rich.table import Table

from thresher.engines import ChatParams, Chunk, Engine, ProbabilitiesUnavailable, load
from thresher.evaluate import auc
from thresher.judge import FLAGGED, UNPARSEABLE, Judge, judge_messages

GOAL_RATIO = 10.0  # one-pass throughput >= 10x generate-and-parse ...
# ... at equal or better AUC
UNPARSEABLE_SCORE = 1.0  # an answer with no rating counts as the lowest score
CHUNK = 8
DEFAULT_LIMIT = 90
COLD_ROWS = 8
BOOTSTRAP = 1000


class GenerateOnly:
    """The real engine without next-token probabilities, so `Judge.judge` generates and parses. Keeps the text of
    the last reply and its token count."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self.model_id = engine.model_id
        self.version = engine.version
        self.last_text = ""
        self.last_tokens: int | None = None

    def next_token_probs(self, messages: Sequence[dict[str, str]], choices: Sequence[str],
                         prefix: str = "") -> dict[str, float]:
        raise ProbabilitiesUnavailable("bench: generate and parse")

    def count_tokens(self, messages: Sequence[dict[str, str]]) -> int:
        return self._engine.count_tokens(messages)

    def stream_chat(self, messages: Sequence[dict[str, str]], params: ChatParams) -> Iterator[Chunk]:
        self.last_text, self.last_tokens = "", None
        for chunk in self._engine.stream_chat(messages, params):
            self.last_text += chunk.text
            if chunk.finish_reason is not None:
                self.last_tokens = chunk.completion_tokens
            yield chunk

    def __getattr__(self, name: str) -> Any:  # anything else: the real engine's
        return getattr(self._engine, name)


@dataclass
class Result:
    id: str
    label: str
    degradation: str
    method: str  # one-pass | generate | one-pass-cold | generate-cold
    seconds: float
    score: float | None
    status: str
    flags: list[str] = field(default_factory=list)
    generated: str | None = None  # generate only: the judge's answer
    completion_tokens: int | None = None

    @property
    def auc_score(self) -> float:
        return UNPARSEABLE_SCORE if self.score is None else self.score


def cold_cache(engine: Engine) -> None:
    """Forget the llama.cpp KV cache so the next call evaluates its whole prompt (no prefix reuse)."""
    reset = getattr(getattr(engine, "llm", None), "reset", None)
    if callable(reset):
        reset()


def judge_one(judge: Judge, wrapper: GenerateOnly | None, row: dict, method: str) -> Result:
    start = time.perf_counter()
    j = judge.judge(row["messages"])
    seconds = time.perf_counter() - start
    return Result(row["id"], row["label"], row["degradation"], method, seconds, j.score, j.status, list(j.flags),
                  generated=wrapper.last_text.strip() if wrapper else None,
                  completion_tokens=wrapper.last_tokens if wrapper else None)


# ---------------------------------------------------------------------------------------------------- statistics


def auc_of(results: Sequence[Result], degradation: str | None = None) -> float | None:
    good = [r.auc_score for r in results if r.label == "good"]
    bad = [r.auc_score for r in results if r.label == "bad" and degradation in (None, r.degradation)]
    return auc(good, bad)


def bootstrap(one: list[Result], gen: list[Result], seed: int) -> dict[str, tuple[float, float]]:
    """95% intervals for each AUC and their difference, resampling good and bad rows (paired across methods)."""
    rng = random.Random(seed)
    g = [i for i, r in enumerate(one) if r.label == "good"]
    b = [i for i, r in enumerate(one) if r.label == "bad"]
    a1, a2, d = [], [], []
    for _ in range(BOOTSTRAP):
        idx = [rng.choice(g) for _ in g] + [rng.choice(b) for _ in b]
        x = auc_of([one[i] for i in idx])
        y = auc_of([gen[i] for i in idx])
        if x is None or y is None:
            continue
        a1.append(x)
        a2.append(y)
        d.append(x - y)

    def ci(xs: list[float]) -> tuple[float, float]:
        xs = sorted(xs)
        return xs[int(0.025 * (len(xs) - 1))], xs[int(0.975 * (len(xs) - 1))]

    return {"one-pass": ci(a1), "generate": ci(a2), "difference": ci(d)}


def f3(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def summary(results: list[Result]) -> dict[str, Any]:
    secs = [r.seconds for r in results]
    good = [r.auc_score for r in results if r.label == "good"]
    bad = [r.auc_score for r in results if r.label == "bad"]
    parsed = [r for r in results if r.score is not None]
    return {
        "n": len(results), "seconds": sum(secs), "per_s": len(results) / sum(secs),
        "median_s": statistics.median(secs), "auc": auc_of(results),
        "auc_parsed_only": auc([r.score for r in parsed if r.label == "good"],
                               [r.score for r in parsed if r.label == "bad"]),
        "unparseable": sum(r.status == UNPARSEABLE for r in results) / len(results),
        "flagged": sum(r.status == FLAGGED for r in results),
        "mean_good": statistics.fmean(good) if good else None, "mean_bad": statistics.fmean(bad) if bad else None,
    }


# ---------------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="embedded", help="engine spec (default: embedded)")
    ap.add_argument("--limit", type=int, default=DEFAULT_LIMIT,
                    help=f"rows to judge, a third good (default: {DEFAULT_LIMIT}; 0 = all)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the degradations and the sample (default: 0)")
    ap.add_argument("--threads", type=int, default=None, help="llama.cpp threads (default: all cores)")
    ap.add_argument("--json", type=Path, help="also write the results to this file")
    ap.add_argument("--dump", type=Path, help="write the selected labelled rows as JSONL and exit")
    args = ap.parse_args(argv)
    console = Console(width=None if sys.stdout.isatty() else 120)

    everything = build_labelled_set(args.seed)
    rows = select(everything, args.limit, args.seed)
    counts = Counter(r["degradation"] for r in rows)
    if args.dump:
        write_jsonl(rows, args.dump)
        console.print(f"wrote {len(rows)} rows ({counts['none']} good, {len(rows) - counts['none']} bad) of "
                      f"{len(everything)} to {args.dump}; try `thresher judge-eval {args.dump}`")
        return 0

    t0 = time.perf_counter()
    engine = load(args.model, n_threads=args.threads)
    load_s = time.perf_counter() - t0
    n_threads = getattr(getattr(getattr(engine, "llm", None), "context_params", None), "n_threads", None)
    one = Judge(engine, rationale="never")
    wrapper = GenerateOnly(engine)
    gen = Judge(wrapper, rationale="never")  # type: ignore[arg-type]
    prompt_tokens = [engine.count_tokens(judge_messages(r["messages"])) for r in rows]
    console.print(f"[bold]thresher judge bench[/]  model={engine.model_id} ({engine.version}), loaded in "
                  f"{load_s:.1f}s; cpus={os.cpu_count()}, llama.cpp threads={n_threads}; "
                  f"python {platform.python_version()} on {platform.machine()}")
    console.print(f"{len(rows)} of {len(everything)} labelled rows (seed {args.seed}): {counts['none']} good, "
                  f"{len(rows) - counts['none']} bad ("
                  + ", ".join(f"{d} {counts[d]}" for d in DEGRADATIONS) + "); judge prompt "
                  f"{statistics.median(prompt_tokens):.0f} tokens median ({min(prompt_tokens)}-{max(prompt_tokens)});"
                  f" threshold {one.threshold:g}, rationale never")

    other = OtherLoad()
    # Warm up each path once (llama.cpp buffers, first generation).
    judge_one(one, None, rows[0], "warm-up")
    judge_one(gen, wrapper, rows[0], "warm-up")
    cold_cache(engine)

    res: dict[str, list[Result]] = {"one-pass": [], "generate": []}
    chunks = [rows[i:i + CHUNK] for i in range(0, len(rows), CHUNK)]
    for k, chunk in enumerate(chunks):
        order = ("one-pass", "generate") if k % 2 == 0 else ("generate", "one-pass")
        for method in order:
            for row in chunk:
                if method == "one-pass":
                    res[method].append(judge_one(one, None, row, method))
                else:
                    res[method].append(judge_one(gen, wrapper, row, method))
        done = sum(len(c) for c in chunks[:k + 1])
        if k % 3 == 2 or k == len(chunks) - 1:
            console.print(f"  {done}/{len(rows)} conversations, both ways ({time.perf_counter() - t0:.0f}s)")
    res["one-pass"].sort(key=lambda r: r.id)
    res["generate"].sort(key=lambda r: r.id)
    assert [r.id for r in res["one-pass"]] == [r.id for r in res["generate"]]  # paired for the bootstrap

    # Cold: KV cache cleared before every call of both paths, on the first few rows.
    cold: dict[str, list[Result]] = {"one-pass-cold": [], "generate-cold": []}
    for i, row in enumerate(rows[:COLD_ROWS]):
        pair = (("one-pass-cold", one, None), ("generate-cold", gen, wrapper))
        for method, judge, wrap in pair if i % 2 == 0 else pair[::-1]:
            cold_cache(engine)
            cold[method].append(judge_one(judge, wrap, row, method))
    other_share = other.share()
    total_s = time.perf_counter() - t0

    s1, s2 = summary(res["one-pass"]), summary(res["generate"])
    ci = bootstrap(res["one-pass"], res["generate"], args.seed)
    ratio = s1["per_s"] / s2["per_s"]
    c1, c2 = summary(cold["one-pass-cold"]), summary(cold["generate-cold"])
    cold_ratio = c1["per_s"] / c2["per_s"]
    gen_tokens = [r.completion_tokens for r in res["generate"] if r.completion_tokens is not None]

    # --- the two methods
    tab = Table(title=f"One-pass vs generate-and-parse ({len(rows)} conversations each, {args.model}, "
                      f"cpus={os.cpu_count()})", title_justify="left")
    for col in ("method", "conv/s", "median s", "AUC", "AUC 95% CI", "AUC parsed", "unparseable", "flagged",
                "mean good", "mean bad"):
        tab.add_column(col, justify="left" if col == "method" else "right")
    for key, s in (("one-pass", s1), ("generate", s2)):
        tab.add_row(key, f"{s['per_s']:.3f}", f"{s['median_s']:.3f}", f3(s["auc"]),
                    f"{ci[key][0]:.3f}-{ci[key][1]:.3f}", f3(s["auc_parsed_only"]), f"{s['unparseable']:.1%}",
                    str(s["flagged"]), f3(s["mean_good"]), f3(s["mean_bad"]))
    console.print(tab)
    console.print("one-pass: engine.next_token_probs over the first digit after `Rating: [[` (and 0 vs ]] after a 1), "
                  "expected score; generate: greedy answer to the same prompt, parsed with parse_rating")
    console.print(f"generate: {statistics.fmean(gen_tokens):.1f} tokens generated on average (max_tokens 24); "
                  f"unparseable answers count as {UNPARSEABLE_SCORE:g} for the AUC")

    # --- the goal
    auc_ok = s1["auc"] is not None and s2["auc"] is not None and s1["auc"] >= s2["auc"]
    met = ratio >= GOAL_RATIO and auc_ok
    goal = Table(title="Goal: one-pass >= 10x the throughput of generate-and-parse at equal or better AUC",
                 title_justify="left")
    for col in ("measure", "one-pass / generate", "goal", "met"):
        goal.add_column(col, justify="left" if col == "measure" else "right")
    goal.add_row("throughput ratio, as the judge runs", f"{ratio:.2f}x", f">= {GOAL_RATIO:g}x",
                 "yes" if ratio >= GOAL_RATIO else "[red]no[/]")
    goal.add_row(f"throughput ratio, KV cache cleared before each call ({len(cold['one-pass-cold'])} rows: "
                 f"{c1['per_s']:.3f} vs {c2['per_s']:.3f} conv/s)", f"{cold_ratio:.2f}x", "(reference)", "")
    goal.add_row(f"AUC difference (95% CI {ci['difference'][0]:+.3f} to {ci['difference'][1]:+.3f})",
                 f"{s1['auc'] - s2['auc']:+.3f}", ">= 0", "yes" if auc_ok else "[red]no[/]")
    goal.add_row("[bold]goal[/]", "", "", "[bold green]MET[/]" if met else "[bold red]NOT MET[/]")
    console.print(goal)

    # --- per degradation
    per = Table(title="Per degradation (AUC: the good rows against that degradation's rows; flagged: by thresher's "
                      "injection patterns)", title_justify="left")
    for col in ("degradation", "rows", "flagged", "mean one-pass", "AUC one-pass", "mean generate",
                "AUC generate", "unparseable"):
        per.add_column(col, justify="left" if col == "degradation" else "right")
    per_deg: dict[str, dict[str, Any]] = {}
    for d in ["none", *DEGRADATIONS]:
        r1 = [r for r in res["one-pass"] if r.degradation == d]
        r2 = [r for r in res["generate"] if r.degradation == d]
        if not r1:
            continue
        row = {
            "rows": len(r1), "flagged": sum(bool(r.flags) for r in r1),
            "mean_one_pass": statistics.fmean(r.auc_score for r in r1),
            "auc_one_pass": None if d == "none" else auc_of(res["one-pass"], d),
            "mean_generate": statistics.fmean(r.auc_score for r in r2),
            "auc_generate": None if d == "none" else auc_of(res["generate"], d),
            "unparseable": sum(r.status == UNPARSEABLE for r in r2) / len(r2),
        }
        per_deg[d] = row
        per.add_row("good (none)" if d == "none" else d, str(row["rows"]), str(row["flagged"]),
                    f"{row['mean_one_pass']:.2f}", "" if d == "none" else f3(row["auc_one_pass"]),
                    f"{row['mean_generate']:.2f}", "" if d == "none" else f3(row["auc_generate"]),
                    f"{row['unparseable']:.0%}")
    console.print(per)

    # --- what the judge wrote when generating
    answers = Counter(r.generated or "" for r in res["generate"])
    gen_tab = Table(title="Most common generated answers", title_justify="left")
    gen_tab.add_column("times", justify="right")
    gen_tab.add_column("parsed", justify="right")
    gen_tab.add_column("answer (first 90 characters)")
    parsed_of = {r.generated: r.score for r in res["generate"]}
    for text, n in answers.most_common(5):
        p = parsed_of.get(text)
        gen_tab.add_row(str(n), "-" if p is None else f"{p:g}", repr(text[:90]))
    console.print(gen_tab)

    console.print(f"total {total_s:.0f}s; other processes used "
                  + ("n/a" if other_share is None else f"{other_share:.0%}") + " of the CPUs while the bench ran"
                  + (" [yellow](noisy: run again on an idle machine)[/]" if (other_share or 0) > 0.10 else ""))

    if args.json:
        out = {
            "model": args.model, "model_id": engine.model_id, "version": engine.version, "cpus": os.cpu_count(),
            "llama_threads": n_threads, "seed": args.seed, "limit": args.limit, "rows": len(rows),
            "goal": {"ratio": GOAL_RATIO, "auc": ">= generate", "met": met},
            "one_pass": s1, "generate": s2, "auc_ci": ci, "throughput_ratio": ratio,
            "cold": {"rows": len(cold["one-pass-cold"]), "one_pass": c1, "generate": c2, "ratio": cold_ratio},
            "per_degradation": per_deg, "other_cpu_share": other_share, "total_s": total_s,
            "results": [asdict(r) for rs in (*res.values(), *cold.values()) for r in rs],
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2, ensure_ascii=False), encoding="utf-8")
        console.print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
