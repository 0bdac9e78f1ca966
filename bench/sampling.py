"""Sampling settings for a small model, chosen by measurement: how often replies loop, are cut off, and how the
frozen evaluation judge scores them, over a grid of temperature x repetition penalty.

For each setting, the embedded model (or --model) answers the same real questions: the first questions of the
shipped real conversations (zaragoza-construction-faq and chatterbot-corpus) on the *training* side of the split
(`thresher.train.sources.prompts(split="train")`), so the defaults are not picked on the questions rounds are
evaluated on. Each reply is seeded by its prompt's place, so every setting sees the same draws where it can.

Printed per setting: loop rate (`thresher.evaluate.loops`), cut-off rate (reply hit --max-tokens), empty rate,
mean words, and the frozen judge's mean score and share accepted at its threshold (the head shipped for the
embedded model, reading the *base* model's states: `thresher.evaluate.FrozenJudge`), with a 95% interval on the
loop rate (Wilson). Goal: the lowest loop and cut-off rates at an equal or better judge score; the chosen defaults
are `ChatParams`' and the `temperature`/`repetition_penalty` settings.

Run:
    python bench/sampling.py [--model SPEC] [--prompts N] [--max-tokens N] [--temperatures 0,0.7]
                             [--penalties 1.0,1.15,1.3] [--json PATH]
The defaults (64 prompts, 256 tokens, 6 settings) take about 15 minutes on an idle 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from thresher.engines import ChatParams, load  # noqa: E402
from thresher.evaluate import FrozenJudge, replies, reply_rates  # noqa: E402
from thresher.evidence import wilson  # noqa: E402
from thresher.train.sources import prompts as real_prompts  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="embedded")
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--temperatures", default="0,0.7")
    ap.add_argument("--penalties", default="1.0,1.15,1.3")
    ap.add_argument("--threads", type=int, help="llama.cpp threads (default: its own choice)")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    console = Console(width=150)
    qs = real_prompts(split="train", limit=a.prompts)
    engine = load(a.model, n_threads=a.threads)
    judge = FrozenJudge.shipped(n_threads=a.threads)
    rows = []
    for temp in [float(x) for x in a.temperatures.split(",")]:
        for pen in [float(x) for x in a.penalties.split(",")]:
            t0 = time.perf_counter()
            params = ChatParams(temperature=temp, repetition_penalty=pen)
            got = replies(engine, qs, a.max_tokens, progress=f"T={temp} penalty={pen}", params=params)
            rates = reply_rates(qs, got)
            scores = judge.scores(qs, [r.text for r in got])
            lo, hi = wilson(rates["loop_rate"], len(got))
            rows.append({"temperature": temp, "repetition_penalty": pen, **rates, "loop_interval": [lo, hi],
                         "judge_mean": sum(scores) / len(scores),
                         "judge_accepted": sum(s >= judge.threshold for s in scores) / len(scores),
                         "seconds": round(time.perf_counter() - t0, 1)})
    table = Table(title=f"{len(qs)} real questions (training side), {a.max_tokens} tokens at most, {a.model}")
    for col in ("temperature", "penalty", "loops (95% interval)", "cut off", "empty", "mean words", "judge mean",
                "accepted", "s"):
        table.add_column(col, justify="right")
    for r in rows:
        lo, hi = r["loop_interval"]
        table.add_row(f"{r['temperature']:g}", f"{r['repetition_penalty']:g}",
                      f"{r['loop_rate']:.0%} ({lo:.0%}-{hi:.0%})", f"{r['cutoff_rate']:.0%}",
                      f"{r['empty_rate']:.0%}", f"{r['mean_words']:.0f}", f"{r['judge_mean']:.2f}",
                      f"{r['judge_accepted']:.0%}", f"{r['seconds']:.0f}")
    console.print(table)
    console.print(f"judge: {judge.judge_id} (threshold {judge.threshold:.2f}); loop rates over {len(qs)} replies "
                  "differ by noise unless their intervals part")
    if a.json:
        a.json.write_text(json.dumps({"model": a.model, "prompts": len(qs), "max_tokens": a.max_tokens,
                                      "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
