"""The head judge's speed against the engine's raw prompt processing, and against a judge that reasons first.

Three ways of judging the same labelled conversations with the same engine object, in one process, interleaved in
chunks of 8 (the order flipping every chunk) so drift in machine speed hits all alike, each warmed up first:

* head: thresher's default judge (`make_judge("serving", engine)`: the head shipped for the embedded model, or the
  one given with --judge): one forward pass over a short prompt per conversation through the layers the head reads
  (the shipped head: the first 10 of 30), that state read, plus the text signals and the sentence encoder's
  figures; timed around `judge_many` on the chunk;
* raw: llama.cpp evaluating exactly the token sequences the head reads, with the weights it reads them with (the
  first layers, when it reads those), `Llama.eval` with the KV cache cleared before each, nothing else: the
  ceiling for a one-pass judge on this engine;
* reasoning: a judge that writes its explanation first (as MT-Bench's judge does) and then `Rating: [[N]]`
  (greedy, at most --reason-tokens tokens), parsed with thresher's `parse_rating`; no rating scores 1.

Printed: tokens judged per second for head and raw (tokens = the head's prompt tokens) and their ratio (goal:
head >= 0.8x raw), conversations per second for head and reasoning and their ratio (goal: >= 10x), and each one's
AUC overall and per spoiling kind (goal: head's AUC >= reasoning's). The rows are bench/judge_data.py's
conversations (written for this benchmark) by default, or real ones from --source FILE (Alpaca, ShareGPT or
messages), spoiled with the held-out wordings; AUC from a few dozen rows is noisy, so its 95% bootstrap interval is
printed beside it.

Run:
    python bench/judge.py [--model SPEC] [--judge DIR] [--limit N] [--source FILE] [--reason-tokens N] [--json PATH]
The default, 48 rows, takes about 4 minutes with the embedded model on an idle 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from cpu_load import OtherLoad
from judge_data import build_labelled_set, select
from rich.console import Console
from rich.table import Table

from thresher.engines import ChatParams, load
from thresher.evaluate import auc
from thresher.judge import make_judge, parse_rating, render
from thresher.reward import head_prompt, shorten_for_head

CHUNK = 8
GOAL_RAW = 0.8
GOAL_REASONING = 10.0
REASON_PROMPT = (
    "Below is a conversation between a user and an AI assistant. Decide how useful its last answer would be as an "
    "example for training an assistant: is it helpful, on topic, correct, complete and polite? First explain your "
    "view in a few sentences. Then give a whole number from 1 to 10 on its own line, written like this: "
    "\"Rating: [[5]]\".\n\n{conversation}"
)


def rows_from(args: argparse.Namespace) -> list[dict]:
    if args.source:
        from thresher.train import sources
        from thresher.train.contrast import contrast_rows

        good = sources.load([args.source])
        random.Random(args.seed).shuffle(good)
        built = contrast_rows(good[: max(2, args.limit // 3)], args.seed, heldout=True, two_turn_share=0.2)
        return [{"id": f"r{i}", "messages": r.messages, "label": r.label, "degradation": r.degradation}
                for i, r in enumerate(built)][: args.limit]
    return select(build_labelled_set(args.seed), args.limit, args.seed)


def bootstrap(scores: list[float], labels: list[str], seed: int, n: int = 1000) -> tuple[float, float]:
    rng = random.Random(seed)
    vals = []
    idx = list(range(len(scores)))
    for _ in range(n):
        pick = [rng.choice(idx) for _ in idx]
        a = auc([scores[i] for i in pick if labels[i] == "good"], [scores[i] for i in pick if labels[i] != "good"])
        if a is not None:
            vals.append(a)
    vals.sort()
    return vals[int(0.025 * len(vals))], vals[int(0.975 * len(vals)) - 1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="embedded", help="engine spec (default: embedded)")
    ap.add_argument("--judge", default="serving", help="the head judge: a directory from `thresher train judge` "
                                                       "(default: the one shipped for the model)")
    ap.add_argument("--limit", type=int, default=48, help="rows to judge (default: 48)")
    ap.add_argument("--source", help="real good conversations to spoil instead of bench/judge_data.py's")
    ap.add_argument("--reason-tokens", type=int, default=160, help="most tokens the reasoning judge writes")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None, help="llama.cpp threads (default: all cores)")
    ap.add_argument("--json", type=Path, help="also write the results to this file")
    args = ap.parse_args(argv)
    console = Console(width=None if sys.stdout.isatty() else 120)

    engine = load(args.model, n_threads=args.threads)
    judge = make_judge(args.judge, engine)
    if not hasattr(judge, "judge_many"):
        console.print(f"[red]{args.model} has no head judge[/]: train one with `thresher train judge`")
        return 2
    head_engine = judge.engine or engine  # a head over its own model (the first layers) reads another engine
    rows = rows_from(args)
    labels = [r["label"] for r in rows]
    kinds = Counter(r["degradation"] for r in rows)
    seqs = [head_engine._prompt(head_prompt(shorten_for_head(head_engine, r["messages"])[0]))[0] for r in rows]
    console.print(f"[bold]thresher judge bench[/]  {engine.model_id} ({engine.version}); judge {judge.judge_id}; "
                  f"cpus={os.cpu_count()}; {len(rows)} rows ({kinds['none']} good): "
                  + ", ".join(f"{k} {v}" for k, v in kinds.items() if k != "none")
                  + f"; head prompt {statistics.median(len(s) for s in seqs):.0f} tokens median")

    def raw(chunk: list[int]) -> None:
        for i in chunk:
            head_engine.llm.reset()
            head_engine.llm._ctx.kv_cache_clear()
            head_engine.llm.eval(seqs[i])

    def head(chunk: list[int]) -> list[float]:
        return [j.score for j in judge.judge_many([rows[i]["messages"] for i in chunk])]

    def reasoning(chunk: list[int]) -> list[float]:
        out = []
        for i in chunk:
            prompt = [{"role": "user", "content": REASON_PROMPT.format(conversation=render(rows[i]["messages"]))}]
            params = ChatParams(max_tokens=args.reason_tokens, temperature=0.0, seed=0, background=True)
            text = "".join(c.text for c in engine.stream_chat(prompt, params))
            rating = parse_rating(text)
            out.append(float(rating) if rating is not None else 1.0)
        return out

    ways = {"head": head, "raw": raw, "reasoning": reasoning}
    seconds = dict.fromkeys(ways, 0.0)
    scores: dict[str, list[float]] = {"head": [0.0] * len(rows), "reasoning": [0.0] * len(rows)}
    for fn in ways.values():
        fn([0])  # warm-up
    other = OtherLoad()
    chunks = [list(range(k, min(k + CHUNK, len(rows)))) for k in range(0, len(rows), CHUNK)]
    t0 = time.perf_counter()
    for n, chunk in enumerate(chunks):
        order = list(ways) if n % 2 == 0 else list(ways)[::-1]
        for name in order:
            t = time.perf_counter()
            got = ways[name](chunk)
            seconds[name] += time.perf_counter() - t
            if got is not None:
                for i, s in zip(chunk, got, strict=True):
                    scores[name][i] = s
        console.print(f"  {chunk[-1] + 1}/{len(rows)} rows, all three ways ({time.perf_counter() - t0:.0f}s)")
    share = other.share()
    tokens = sum(len(s) for s in seqs)
    tok_head, tok_raw = tokens / seconds["head"], tokens / seconds["raw"]
    conv_head, conv_reason = len(rows) / seconds["head"], len(rows) / seconds["reasoning"]
    res: dict[str, Any] = {"rows": len(rows), "tokens": tokens, "seconds": seconds,
                           "tokens_per_s": {"head": tok_head, "raw": tok_raw},
                           "conversations_per_s": {"head": conv_head, "reasoning": conv_reason},
                           "ratio_raw": tok_head / tok_raw, "ratio_reasoning": conv_head / conv_reason,
                           "auc": {}, "auc_ci": {}, "by_kind": {}, "other_cpu_share": share}
    for name in scores:
        s = scores[name]
        res["auc"][name] = auc([x for x, lab in zip(s, labels, strict=True) if lab == "good"],
                               [x for x, lab in zip(s, labels, strict=True) if lab != "good"])
        res["auc_ci"][name] = bootstrap(s, labels, args.seed)
        good = [x for x, lab in zip(s, labels, strict=True) if lab == "good"]
        res["by_kind"][name] = {k: auc(good, [x for x, r in zip(s, rows, strict=True) if r["degradation"] == k])
                                for k in kinds if k != "none"}

    t = Table(title="Speed", title_justify="left")
    for col in ("measure", "head", "other", "ratio", "goal", "met"):
        t.add_column(col, justify="left" if col == "measure" else "right")
    t.add_row("tokens/s: head vs raw prompt processing", f"{tok_head:.0f}", f"{tok_raw:.0f}",
              f"{res['ratio_raw']:.2f}x", f">= {GOAL_RAW}x", "yes" if res["ratio_raw"] >= GOAL_RAW else "no")
    t.add_row("conversations/s: head vs reasoning judge", f"{conv_head:.2f}", f"{conv_reason:.3f}",
              f"{res['ratio_reasoning']:.1f}x", f">= {GOAL_REASONING:g}x",
              "yes" if res["ratio_reasoning"] >= GOAL_REASONING else "no")
    console.print(t)
    a = Table(title="AUC (good rows against bad rows; 95% bootstrap interval)", title_justify="left")
    for col in ("judge", "AUC", "95% CI", *[k for k in kinds if k != "none"]):
        a.add_column(col, justify="left" if col == "judge" else "right")
    for name in scores:
        lo, hi = res["auc_ci"][name]
        a.add_row(name, f"{res['auc'][name]:.3f}", f"{lo:.2f}-{hi:.2f}",
                  *[f"{res['by_kind'][name][k]:.2f}" for k in kinds if k != "none"])
    console.print(a)
    met = res["auc"]["head"] >= res["auc"]["reasoning"]
    console.print(f"head AUC >= reasoning AUC: {'yes' if met else 'no'}; per-kind figures rest on "
                  f"{min(v for k, v in kinds.items() if k != 'none')}-{max(kinds.values())} rows each: noise")
    console.print("other processes used " + ("n/a" if share is None else f"{share:.0%}") + " of the CPUs"
                  + (" [yellow](noisy: run again on an idle machine)[/]" if (share or 0) > 0.10 else ""))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
