"""Chat speed through the HTTP API against the same engine called directly, and under concurrent streams.

What it measures, in one process and one run:

* direct: `engine.stream_chat(messages, ChatParams(...))`, iterated on a fresh thread per request, exactly as the
  server runs generation (`thresher.server.streaming.stream_in_thread`);
* API: POST /v1/chat/completions with `stream: true` on a real uvicorn server on 127.0.0.1 (in a thread), built by
  `create_app` around the *same* engine object and a temporary SQLite data dir, read with `httpx.Client().stream`.

Both run the same fixed prompts with the same seed, temperature and max_tokens: each round one path takes every
prompt, then the other (the order flips every round, so drift in machine speed hits both alike), and each path is
warmed up once first. No request follows one with the same prompt: the llama.cpp engine keeps a finished reply's
prompt cached and a seeded request may reuse the cells that were read as a prompt, so a request right after the same
prompt would read 3 tokens instead of ~20 (interleaving per prompt gave whichever path came second that advantage
half the time, and a TTFT ratio that swung between 1.2x and 1.9x from run to run). Each request here shares only the
system prompt with the one before it, whichever path it takes.

Why a fresh thread for the direct calls too: the llama.cpp in llama-cpp-python uses OpenMP (libgomp), which keeps
one pool of worker threads per thread that has run the model. The engine makes every llama.cpp call on its own
scheduler thread, so the callers' threads do not matter; the main thread never runs the model.

Per request:
    TTFT            request start -> first non-empty text (API: first SSE `delta.content` that is not empty)
    decode tok/s    (completion tokens - 1) / (last text time - first text time): the streaming rate
    e2e tok/s       completion tokens / (request start -> end of stream, `[DONE]` for the API)
Completion tokens come from the engine's final chunk (direct) and the usage chunk (API,
`stream_options.include_usage`). The summary takes medians over all prompts and rounds; ratios are API / direct.

Then concurrent API streams, 1, 4, 8 and 16 by default: that many client threads, released together, each
sending requests back to back for a window of `--seconds` (so that many are in flight all through it; the prompts
cycle, every request seeded), then finishing the request in flight. Aggregate tok/s = the completion tokens written
inside the window / the window (a reply that straddles its end counts in proportion to its pieces of text that
arrived inside): the rate while n streams are in flight. The whole-run rate (all tokens / time to the last reply's
end) is printed beside it: it adds the drain, when the last replies finish with fewer streams left, which a fixed
number of requests per stream would mix into the figure. The levels run in turn, `--passes` times (1, 4, 8, 16,
1, 4, 8, 16, ...): a level's rate is the mean of its passes, p50 and p95 of TTFT are over all its requests, and
ratios are against the one stream measured in the same run (per pass too). The clients read the replies through
plain sockets and parse them once the level is over, so that they take as little as they can of the cores the
server shares with them. The llama.cpp engine decodes
`n_parallel` streams together (8 by default); beyond that requests wait in the queue, and their TTFT includes the
wait.

Goals printed beside the measurements: API decode tok/s >= 0.9x direct, API TTFT <= 1.2x direct; 8 streams >= 2.5x
the aggregate tok/s of one, with p95 TTFT <= 1.5 s (short prompts).

Run:
    python bench/chat.py [--model SPEC] [--max-tokens N] [--rounds N] [--threads N] [--concurrency 1,4,8,16]
                         [--seconds S] [--passes N] [--json PATH]
About 4 minutes with the embedded model on an idle 2-core machine. The bench also prints how much CPU other
processes used while it ran; above 10% the numbers are noisy (2 llama.cpp threads on 2 cores stall badly when
anything else runs), so run it again on an idle machine.
"""

from __future__ import annotations

import argparse
import bisect
import functools
import itertools
import json
import math
import os
import platform
import re
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from cpu_load import OtherLoad
from rich.console import Console
from rich.table import Table

from thresher.config import Settings
from thresher.engines import ChatParams, Engine, load
from thresher.server import create_app

PROMPTS: list[str] = [
    "What is the capital of France? Answer in one sentence.",
    "Write a short poem about autumn leaves falling in a quiet park.",
    "Explain in simple terms how a refrigerator keeps food cold.",
    "List five tips for getting better sleep at night.",
    "Write a Python function that checks whether a string is a palindrome, and explain it.",
    "My friend says the moon is made of cheese. How can I politely explain why that is wrong?",
]

SEED = 1234
TEMPERATURE = 0.7
TOP_P = 0.95
GOAL_TPS = 0.9  # API decode tok/s >= 0.9 x direct
GOAL_TTFT = 1.2  # API TTFT <= 1.2 x direct
GOAL_SPEEDUP = 2.5  # 8 concurrent streams: aggregate tok/s >= 2.5 x one stream's
GOAL_TTFT_P95_S = 1.5  # ... and p95 time to first token <= 1.5 s
WINDOW_S = 20.0  # each concurrency level: streams send requests back to back for this long
PASSES = 2  # ... and the levels run in turn this many times (one stream's rate varied by ~7% between runs)


@dataclass
class Sample:
    path: str  # "direct" or "api"
    prompt: int
    round: int
    ttft_s: float
    decode_tps: float
    e2e_tps: float
    total_s: float
    completion_tokens: int
    text: str = field(repr=False, default="")
    times: list[float] = field(repr=False, default_factory=list)  # when each piece of text arrived


# ---------------------------------------------------------------------------------------------------- the server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """uvicorn on 127.0.0.1 on a free port, in a daemon thread."""

    def __init__(self, app) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", access_log=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="bench-uvicorn", daemon=True)

    def __enter__(self) -> Server:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


# ---------------------------------------------------------------------------------------------------- measuring


def params(max_tokens: int) -> ChatParams:
    return ChatParams(max_tokens=max_tokens, temperature=TEMPERATURE, top_p=TOP_P, seed=SEED)


def messages(prompt: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt}]


def rates(n: int, start: float, first: float | None, last: float | None, end: float) -> tuple[float, float, float]:
    """(ttft, decode tok/s, e2e tok/s) from a request's timestamps."""
    if first is None or last is None:
        return float("nan"), float("nan"), 0.0
    decode = (n - 1) / (last - first) if n > 1 and last > first else float("nan")
    return first - start, decode, n / (end - start)


def run_direct(engine: Engine, prompt: str, max_tokens: int, rnd: int, idx: int) -> Sample:
    """Call the engine on a fresh thread, as the server does for every request (see the module docstring)."""
    first = last = None
    text, n = "", 0
    error: list[BaseException] = []

    def work() -> None:
        nonlocal first, last, text, n
        try:
            for chunk in engine.stream_chat(messages(prompt), params(max_tokens)):
                if chunk.text:
                    last = time.perf_counter()
                    if first is None:
                        first = last
                    text += chunk.text
                if chunk.finish_reason is not None:
                    n = chunk.completion_tokens or 0
        except BaseException as e:  # re-raised below
            error.append(e)

    start = time.perf_counter()
    worker = threading.Thread(target=work, name="bench-direct")
    worker.start()
    worker.join()
    end = time.perf_counter()
    if error:
        raise error[0]
    ttft, decode, e2e = rates(n, start, first, last, end)
    return Sample("direct", idx, rnd, ttft, decode, e2e, end - start, n, text)


def read_event(data: str | bytes) -> tuple[str, int | None]:
    """One streamed API event: the text it adds, and the completion tokens when it carries the usage."""
    event = json.loads(data)
    if "error" in event:
        raise RuntimeError(f"API stream error: {event['error']}")
    piece = "".join((choice.get("delta") or {}).get("content") or "" for choice in event.get("choices") or ())
    return piece, event["usage"]["completion_tokens"] if event.get("usage") else None


def run_api(client: httpx.Client, url: str, model: str, prompt: str, max_tokens: int, rnd: int, idx: int) -> Sample:
    body = {
        "model": model,
        "messages": messages(prompt),
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": max_tokens,
        "temperature": TEMPERATURE,
        "top_p": TOP_P,
        "seed": SEED,
    }
    start = time.perf_counter()
    first = last = None
    text, n = "", 0
    times: list[float] = []
    with client.stream("POST", f"{url}/v1/chat/completions", json=body) as resp:
        if resp.status_code != 200:
            resp.read()
            raise RuntimeError(f"API answered {resp.status_code}: {resp.text}")
        for line in resp.iter_lines():
            if not line.startswith("data: "):
                continue
            data = line[6:]
            if data == "[DONE]":
                break
            piece, tokens = read_event(data)
            if piece:
                last = time.perf_counter()
                if first is None:
                    first = last
                text += piece
                times.append(last)
            n = tokens if tokens is not None else n
    end = time.perf_counter()
    ttft, decode, e2e = rates(n, start, first, last, end)
    return Sample("api", idx, rnd, ttft, decode, e2e, end - start, n, text, times)


class RawClient:
    """A keep-alive HTTP/1.1 connection that does as little as it can while a reply streams: one `recv` per piece
    the server sends, kept with its arrival time; the events are parsed later (`run_raw`). The concurrent
    levels use it so that the clients, which share the 2 cores with the server here, take as little of them as
    possible (parsing every event with httpx as it arrives took ~3% of a core at 8 streams, and on 2 cores any
    time taken from llama.cpp's two threads stalls both)."""

    EVENT = re.compile(rb"data: ([^\n]*)\n\n")

    def __init__(self, url: str) -> None:
        host, port = url.removeprefix("http://").split(":")
        self.sock = socket.create_connection((host, int(port)))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.host = f"{host}:{port}"

    def close(self) -> None:
        self.sock.close()

    def stream(self, path: str, body: dict) -> tuple[list[tuple[float, bytes]], float]:
        """POST `body` and read the chunked event stream to its end: ([(arrival, bytes)], end time)."""
        data = json.dumps(body).encode()
        self.sock.sendall(f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n"
                          f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
        pieces: list[tuple[float, bytes]] = []
        tail = b""
        while not tail.endswith(b"\r\n0\r\n\r\n"):  # the last chunk of a chunked response
            got = self.sock.recv(65536)
            if not got:
                raise RuntimeError("the server closed the connection mid-reply")
            pieces.append((time.perf_counter(), got))
            tail = (tail + got)[-16:]
            if len(pieces) == 1 and not got.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(f"API answered {got[:200]!r}")
        return pieces, pieces[-1][0]


def run_raw(client: RawClient, model: str, prompt: str, max_tokens: int, rnd: int,
            idx: int) -> Callable[[], Sample]:
    """As `run_api`, through a RawClient, but what it returns makes the Sample: the events are parsed once the
    level is over, not while other replies stream. Each event's time is the arrival of the piece that completed
    it."""
    body = {"model": model, "messages": messages(prompt), "stream": True, "stream_options": {"include_usage": True},
            "max_tokens": max_tokens, "temperature": TEMPERATURE, "top_p": TOP_P, "seed": SEED}
    start = time.perf_counter()
    pieces, end = client.stream("/v1/chat/completions", body)
    return functools.partial(parse_raw, pieces, start, end, rnd, idx)


def parse_raw(pieces: list[tuple[float, bytes]], start: float, end: float, rnd: int, idx: int) -> Sample:
    raw = b"".join(p for _, p in pieces)
    ends = list(itertools.accumulate(len(p) for _, p in pieces))
    text, n, times = "", 0, []
    for m in RawClient.EVENT.finditer(raw):
        if m.group(1) == b"[DONE]":
            break
        piece, tokens = read_event(m.group(1))
        if piece:
            text += piece
            times.append(pieces[bisect.bisect_left(ends, m.end())][0])
        n = tokens if tokens is not None else n
    first, last = (times[0], times[-1]) if times else (None, None)
    ttft, decode, e2e = rates(n, start, first, last, end)
    return Sample("api", idx, rnd, ttft, decode, e2e, end - start, n, text, times)


def run_streams(url: str, model: str, max_tokens: int, n: int, seconds: float) -> tuple[float, float, list[Sample]]:
    """n client threads, released together, each sending streaming requests back to back until `seconds` have
    passed (then it finishes the one in flight): n streams are in flight for the whole window. (window, wall time
    to the last reply's end, every request's sample)."""
    results: list[list[Callable[[], Sample]] | BaseException] = [[] for _ in range(n)]
    barrier = threading.Barrier(n + 1)
    deadline = [0.0]

    def worker(i: int) -> None:
        try:
            client = RawClient(url)
            try:
                barrier.wait()
                k = 0
                while time.perf_counter() < deadline[0]:
                    j = (i + k * n) % len(PROMPTS)
                    results[i].append(run_raw(client, model, PROMPTS[j], max_tokens, k, j))  # type: ignore
                    k += 1
            finally:
                client.close()
        except BaseException as e:  # reported below
            results[i] = e

    threads = [threading.Thread(target=worker, args=(i,), name=f"bench-client-{i}") for i in range(n)]
    for t in threads:
        t.start()
    start = time.perf_counter()
    deadline[0] = start + seconds  # set before the release: the workers read it once past the barrier
    barrier.wait()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    errors = [r for r in results if isinstance(r, BaseException)]
    if errors:
        raise RuntimeError(f"concurrent request failed: {errors[0]!r}")
    return start, wall, [parse() for r in results if isinstance(r, list) for parse in r]


def tokens_between(samples: list[Sample], lo: float, hi: float) -> float:
    """Completion tokens written between two instants: each reply's tokens in proportion to its pieces of text
    that arrived in [lo, hi)."""
    return sum(s.completion_tokens * sum(lo <= t < hi for t in s.times) / len(s.times) for s in samples if s.times)


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1))]


def run_concurrent(url: str, model: str, max_tokens: int, n: int, seconds: float) -> dict[str, Any]:
    """One pass of one level: the aggregate rate while all n streams are in flight (the window), and over the
    whole run including the drain, when the last replies finish with fewer streams left."""
    start, wall, samples = run_streams(url, model, max_tokens, n, seconds)
    return {"aggregate_tps": tokens_between(samples, start, start + seconds) / seconds,
            "whole_run_tps": sum(s.completion_tokens for s in samples) / wall, "wall_s": wall, "samples": samples}


def level(n: int, seconds: float, passes: list[dict[str, Any]]) -> dict[str, float]:
    """A level's figures over its passes: the rates averaged, the TTFT percentiles over all its requests."""
    samples = [s for p in passes for s in p["samples"]]
    ttfts = [s.ttft_s for s in samples if s.ttft_s == s.ttft_s] or [float("nan")]  # NaN: no text
    decode = [s.decode_tps for s in samples if s.decode_tps == s.decode_tps]
    return {
        "streams": n,
        "passes": len(passes),
        "requests": len(samples),
        "window_s": seconds,
        "wall_s": sum(p["wall_s"] for p in passes),
        "completion_tokens": sum(s.completion_tokens for s in samples),
        "aggregate_tps": statistics.mean(p["aggregate_tps"] for p in passes),
        "aggregate_tps_passes": [p["aggregate_tps"] for p in passes],
        "whole_run_tps": statistics.mean(p["whole_run_tps"] for p in passes),
        "ttft_p50_s": percentile(ttfts, 50),
        "ttft_p95_s": percentile(ttfts, 95),
        "ttft_max_s": max(ttfts),
        "per_stream_decode_tps_median": statistics.median(decode) if decode else float("nan"),
    }


# ---------------------------------------------------------------------------------------------------- report


def values(samples: list[Sample], path: str, attr: str) -> list[float]:
    return [v for s in samples if s.path == path and (v := getattr(s, attr)) == v]  # NaN dropped


def median(samples: list[Sample], path: str, attr: str) -> float:
    vals = values(samples, path, attr)
    return statistics.median(vals) if vals else float("nan")


def spread(samples: list[Sample], path: str, attr: str, scale: float) -> str:
    vals = values(samples, path, attr)
    return f"{min(vals) * scale:.0f}-{max(vals) * scale:.0f}" if vals else "-"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="embedded", help="engine spec (default: embedded)")
    ap.add_argument("--max-tokens", type=int, default=128, help="max_tokens per reply (default: 128)")
    ap.add_argument("--rounds", type=int, default=2, help="passes over the prompts (default: 2)")
    ap.add_argument("--threads", type=int, default=None,
                    help="llama.cpp threads (default: the engine's default, all cores, as `thresher serve` uses)")
    ap.add_argument("--concurrency", default="1,4,8,16",
                    help="levels of simultaneous API streams, comma-separated; 1 is the baseline (default: 1,4,8,16)")
    ap.add_argument("--seconds", type=float, default=WINDOW_S, help="how long each concurrency level's streams "
                    f"keep sending requests back to back; the rate is measured over this window (default: "
                    f"{WINDOW_S:.0f})")
    ap.add_argument("--passes", type=int, default=PASSES, help="how many times the levels run in turn; a "
                    f"level's rate is the mean of its passes (default: {PASSES})")
    ap.add_argument("--json", type=Path, help="also write the results to this file")
    args = ap.parse_args(argv)
    levels = sorted({1, *(int(x) for x in args.concurrency.split(",") if x.strip())})
    console = Console(width=None if sys.stdout.isatty() else 120)

    t0 = time.perf_counter()
    engine = load(args.model, n_threads=args.threads)
    load_s = time.perf_counter() - t0
    n_threads = getattr(getattr(getattr(engine, "llm", None), "context_params", None), "n_threads", None)
    console.print(f"[bold]thresher chat bench[/]  model={engine.model_id} ({engine.version}), loaded in "
                  f"{load_s:.1f}s; cpus={os.cpu_count()}, llama.cpp threads={n_threads}, sequences decoded "
                  f"together={getattr(engine, 'n_parallel', 1)}; python {platform.python_version()} on "
                  f"{platform.machine()}")
    console.print(f"{len(PROMPTS)} prompts x {args.rounds} round(s), max_tokens={args.max_tokens}, "
                  f"temperature={TEMPERATURE}, seed={SEED}; concurrent streams {levels}")

    samples: list[Sample] = []
    conc: list[dict[str, float]] = []
    other = OtherLoad()
    with tempfile.TemporaryDirectory(prefix="thresher-bench-") as tmp:
        settings = Settings(data_dir=Path(tmp), model=args.model, public=False, api_keys=[],
                            max_tokens_limit=max(2048, args.max_tokens), max_queue=max(levels))
        app = create_app(settings, engine=engine)
        with Server(app) as server, httpx.Client(timeout=600) as client:
            models = client.get(f"{server.url}/v1/models").json()["data"]
            model = models[0]["id"]

            def direct(i: int, rnd: int) -> Sample:
                return run_direct(engine, PROMPTS[i], args.max_tokens, rnd, i)

            def api(i: int, rnd: int) -> Sample:
                return run_api(client, server.url, model, PROMPTS[i], args.max_tokens, rnd, i)

            # Warm up each way once (first HTTP connection, first DB writes, llama.cpp buffers), with the last
            # prompt: the first round starts with the first.
            direct(len(PROMPTS) - 1, -1)
            api(len(PROMPTS) - 1, -1)

            for rnd in range(args.rounds):
                for fn in (direct, api) if rnd % 2 == 0 else (api, direct):
                    for i in range(len(PROMPTS)):
                        samples.append(fn(i, rnd))
                console.print(f"  round {rnd + 1}/{args.rounds} done ({time.perf_counter() - t0:.0f}s)")

            # The levels in turn, pass after pass: a drift in the machine's speed falls on every level alike.
            runs: dict[int, list[dict[str, Any]]] = {n: [] for n in levels}
            shares: dict[int, list[float]] = {n: [] for n in levels}
            for k in range(args.passes):
                for n in levels:
                    level_load = OtherLoad()
                    runs[n].append(run_concurrent(server.url, model, args.max_tokens, n, args.seconds))
                    if (share := level_load.share()) is not None:
                        shares[n].append(share)
                    console.print(f"  pass {k + 1}/{args.passes}: {n} concurrent stream(s) done "
                                  f"({time.perf_counter() - t0:.0f}s)")
            for n in levels:
                conc.append(level(n, args.seconds, runs[n]))
                conc[-1]["other_processes_cpu_share"] = max(shares[n]) if shares[n] else None

    other_share = other.share()

    # --- per-prompt table
    per = Table(title="Per prompt (median over rounds)", title_justify="left")
    for col in ("#", "tokens", "TTFT direct ms", "TTFT API ms", "decode direct tok/s", "decode API tok/s",
                "same text"):
        per.add_column(col, justify="right")
    for i in range(len(PROMPTS)):
        d = [s for s in samples if s.prompt == i and s.path == "direct"]
        a = [s for s in samples if s.prompt == i and s.path == "api"]
        same = sum(x.text == y.text for x, y in zip(d, a, strict=True))
        per.add_row(str(i), str(statistics.median(s.completion_tokens for s in d + a)),
                    f"{median(d, 'direct', 'ttft_s') * 1e3:.1f}", f"{median(a, 'api', 'ttft_s') * 1e3:.1f}",
                    f"{median(d, 'direct', 'decode_tps'):.1f}", f"{median(a, 'api', 'decode_tps'):.1f}",
                    f"{same}/{len(d)}")
    console.print(per)

    # --- summary
    summary: dict[str, dict[str, float]] = {}
    tab = Table(title=f"API vs direct (medians of {len(samples) // 2} requests each; cpus={os.cpu_count()})",
                title_justify="left")
    for col in ("metric", "direct", "API", "API / direct", "goal", "met", "direct range", "API range"):
        tab.add_column(col, justify="right" if col != "metric" else "left")
    rows = [
        ("TTFT (ms)", "ttft_s", 1e3, f"<= {GOAL_TTFT}x", lambda r: r <= GOAL_TTFT),
        ("decode tok/s", "decode_tps", 1, f">= {GOAL_TPS}x", lambda r: r >= GOAL_TPS),
        ("end-to-end tok/s", "e2e_tps", 1, "", None),
        ("request total (ms)", "total_s", 1e3, "", None),
    ]
    all_met = True
    for label, attr, scale, goal, check in rows:
        d, a = median(samples, "direct", attr), median(samples, "api", attr)
        ratio = a / d if d else float("nan")
        met = ""
        if check is not None:
            ok = check(ratio)
            all_met &= ok
            met = "[green]yes[/]" if ok else "[red]no[/]"
        summary[attr] = {"direct": d, "api": a, "ratio": ratio}
        tab.add_row(label, f"{d * scale:.1f}", f"{a * scale:.1f}", f"{ratio:.3f}x", goal, met,
                    spread(samples, "direct", attr, scale), spread(samples, "api", attr, scale))
    console.print(tab)

    base = conc[0]  # one stream, measured in this run
    ct = Table(title=f"Concurrent API streams, {args.passes} pass(es) of {args.seconds:.0f} s each "
               f"({getattr(engine, 'n_parallel', 1)} decoded together; more wait in the queue, and their TTFT "
               "includes the wait)", title_justify="left")
    for col in ("streams", "requests", "aggregate tok/s", "x one stream", "passes", "whole run tok/s", "x one",
                "TTFT p50 ms", "TTFT p95 ms", "TTFT max ms", "per-stream decode tok/s", "others' CPU"):
        ct.add_column(col, justify="right")
    for c in conc:
        c["speedup"] = c["aggregate_tps"] / base["aggregate_tps"]
        c["whole_run_speedup"] = c["whole_run_tps"] / base["whole_run_tps"]
        share = c["other_processes_cpu_share"]
        per_pass = " ".join(f"{a / b:.2f}x" for a, b in zip(c["aggregate_tps_passes"], base["aggregate_tps_passes"],
                                                            strict=True))
        ct.add_row(str(c["streams"]), str(c["requests"]), f"{c['aggregate_tps']:.1f}", f"{c['speedup']:.2f}x", per_pass,
                   f"{c['whole_run_tps']:.1f}", f"{c['whole_run_speedup']:.2f}x",
                   f"{c['ttft_p50_s'] * 1e3:.0f}", f"{c['ttft_p95_s'] * 1e3:.0f}", f"{c['ttft_max_s'] * 1e3:.0f}",
                   f"{c['per_stream_decode_tps_median']:.1f}", "-" if share is None else f"{share:.0%}")
    console.print(ct)
    eight = next((c for c in conc if c["streams"] == 8), None)
    if eight is not None:
        ok = eight["speedup"] >= GOAL_SPEEDUP and eight["ttft_p95_s"] <= GOAL_TTFT_P95_S
        all_met &= ok
        console.print(f"[bold]8 streams:[/] {eight['speedup']:.2f}x the aggregate tok/s of one while 8 are in "
                      f"flight (goal >= {GOAL_SPEEDUP}x; {eight['whole_run_speedup']:.2f}x over the whole run, with "
                      f"the drain), TTFT p95 {eight['ttft_p95_s']:.2f} s (goal <= {GOAL_TTFT_P95_S} s): "
                      + ("[green]met[/]" if ok else "[red]NOT met[/]"))

    tps_r, ttft_r = summary["decode_tps"]["ratio"], summary["ttft_s"]["ratio"]
    console.print(f"[bold]ratios:[/] API decode tok/s = {tps_r:.3f}x direct (goal >= {GOAL_TPS}x), "
                  f"API TTFT = {ttft_r:.3f}x direct (goal <= {GOAL_TTFT}x): "
                  + ("[green]all goals met[/]" if all_met else "[red]goals NOT all met[/]"))
    if other_share is not None:
        note = ("[red]the machine was busy: the numbers are noisy, run again when it is idle[/]"
                if other_share > 0.10 else "quiet enough")
        console.print(f"other processes used {other_share:.0%} of the CPUs during the run ({note})")
    console.print(f"total bench time {time.perf_counter() - t0:.0f}s")

    if args.json:
        args.json.write_text(json.dumps({
            "model": engine.model_id, "version": engine.version, "cpus": os.cpu_count(), "llama_threads": n_threads,
            "max_tokens": args.max_tokens, "rounds": args.rounds, "seed": SEED, "temperature": TEMPERATURE,
            "n_parallel": getattr(engine, "n_parallel", 1), "other_processes_cpu_share": other_share,
            "summary": summary, "goals": {"decode_tps_ratio_min": GOAL_TPS, "ttft_ratio_max": GOAL_TTFT,
                                          "speedup_8_min": GOAL_SPEEDUP, "ttft_p95_8_max_s": GOAL_TTFT_P95_S},
            "goals_met": all_met, "concurrent": conc,
            "samples": [{k: v for k, v in asdict(s).items() if k not in ("text", "times")} for s in samples],
        }, indent=2))
        console.print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
