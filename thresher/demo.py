"""`thresher demo`: the whole loop on this machine, with simulated people.

In a fresh data dir: the real server (`thresher serve`, in a child process) starts on 127.0.0.1 with the embedded
model; SIMULATED users (prompts written for this demo) chat with it through the real OpenAI-compatible API, say yes
to publishing and end their conversations; the judge rates them; the best are scrubbed and published to a local
bare git repository; a SIMULATED reviewer, whose policy is printed, approves or rejects them in git; the verdicts
are synced back; and one small training round runs and is gated. Everything simulated is labelled so: the
reviewer's name, each verdict's reason, and the `simulated` flag the users send.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from thresher.config import Settings
from thresher.evidence import auc_words, win_rate_words

SIMULATED_USERS: list[list[str]] = [
    ["What is the capital of Italy?"],
    ["How many days are there in a leap year?"],
    ["Give me one tip for sleeping better.", "Thanks! And one more?"],
    ["What does a thermometer measure?"],
    ["Write a haiku about autumn leaves."],
    ["Why do we have seasons on Earth?"],
    ["What is 15% of 200?"],
    ["Name three primary colours."],
    ["How do I boil an egg?"],
    ["What is the difference between weather and climate?"],
    ["Translate 'good morning' into French."],
    ["What is photosynthesis, in one sentence?"],
]

REVIEWER = "simulated-reviewer"
REVIEWER_POLICY = ("approve when the judge scored it at least {min_score:g} and raised no flag and every answer has "
                   "at least {min_words} words; otherwise reject")


@dataclass
class DemoConfig:
    users: int = 12
    reply_tokens: int = 96
    min_score: float = 1.0  # the demo publishes every judged conversation, so the reviewer has some to review
    review_min_score: float = 4.0
    review_min_words: int = 4
    quick: bool = False

    @classmethod
    def make(cls, quick: bool) -> DemoConfig:
        return cls(users=4, reply_tokens=48, quick=True) if quick else cls()


def review_policy(score: float | None, flags: list[str], messages: list[dict[str, str]],
                  config: DemoConfig) -> tuple[str, str]:
    """The simulated reviewer's verdict and reason (labelled simulated)."""
    answers = [m["content"] for m in messages if m["role"] == "assistant"]
    ok = (score is not None and score >= config.review_min_score and not flags
          and all(len(a.split()) >= config.review_min_words for a in answers))
    return ("approve" if ok else "reject",
            "[simulated reviewer] " + ("meets" if ok else "fails") + " the policy: " + REVIEWER_POLICY.format(
                min_score=config.review_min_score, min_words=config.review_min_words))


CONFIG_KEYS = ("data_dir", "dataset_remote", "judge", "judge_threshold", "judge_rationale", "api_publish_by_default",
               "round_min_new_approved")


def write_config(settings: Settings, path: Path) -> Path:
    """The demo's settings as a thresher.toml, so `THRESHER_CONFIG=PATH thresher serve` serves its data again."""
    lines = ["# Written by `thresher demo`: serve the demo's data again with",
             f"#   THRESHER_CONFIG={path} thresher serve"]
    for key in CONFIG_KEYS:
        value = getattr(settings, key)
        if value is not None:
            lines.append(f"{key} = {json.dumps(str(value) if isinstance(value, Path) else value)}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@contextlib.contextmanager
def output_to(log: Path) -> Iterator[TextIO]:
    """Send everything written to stdout and stderr (progress bars, the trainer's log lines, library warnings, and
    what native code prints) to `log`; yields a stream to the real terminal for the lines meant for the reader."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    terminal = os.fdopen(os.dup(saved[0]), "w", buffering=1, encoding="utf-8", errors="replace")
    with open(log, "a", encoding="utf-8") as sink:
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            yield terminal
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            terminal.close()


def run_demo(data_dir: Path, quick: bool, say: Callable[[str], None], keep_serving: bool = False,
             port: int | None = None, verbose: bool = False) -> dict[str, Any]:
    """The demo; with `verbose` off, raw output (progress bars, training logs) goes to DATA_DIR/demo.log and only
    the demo's own lines reach the terminal."""
    if (data_dir / "thresher.db").exists():
        raise FileExistsError(f"{data_dir} already holds a thresher database; the demo needs a fresh data dir")
    data_dir.mkdir(parents=True, exist_ok=True)
    if verbose:
        return _run_demo(data_dir, quick, say, keep_serving, port)
    log = data_dir / "demo.log"
    with output_to(log) as terminal:
        def tell(line: str) -> None:
            print(line, file=terminal, flush=True)

        summary = _run_demo(data_dir, quick, tell, keep_serving, port)
    summary["log"] = str(log)
    return summary


def _run_demo(data_dir: Path, quick: bool, say: Callable[[str], None], keep_serving: bool,
              port: int | None) -> dict[str, Any]:
    import httpx

    from thresher.dataset_repo import DatasetRepo
    from thresher.deployment import Deployment
    from thresher.flywheel import Worker
    from thresher.review import write_verdict
    from thresher.store import Store
    from thresher.train.round import RoundConfig, run_round

    t0 = time.perf_counter()
    config = DemoConfig.make(quick)
    data_dir = data_dir.resolve()
    remote = data_dir / "public-dataset.git"
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(remote)], check=True)
    port = port or _free_port()
    settings = Settings(data_dir=data_dir, dataset_remote=str(remote), judge="serving",
                        judge_threshold=config.min_score, judge_rationale="never", api_publish_by_default=False,
                        port=port, round_min_new_approved=0, publish_interval_seconds=3600,
                        judge_interval_seconds=3600)
    config_file = write_config(settings, data_dir / "thresher.toml")
    say(f"demo data dir: {data_dir}; the public dataset is the local bare repository {remote}")
    server = start_server(settings)
    try:
        url = f"http://127.0.0.1:{port}"
        say(f"server up at {url}; {config.users} SIMULATED users start chatting through the API")
        ids = []
        with httpx.Client(base_url=url, timeout=300) as client:
            model = client.get("/v1/models").json()["data"][0]["id"]
            for i, turns in enumerate(SIMULATED_USERS[: config.users]):
                messages: list[dict[str, str]] = []
                conv_id = None
                for text in turns:
                    messages.append({"role": "user", "content": text})
                    r = client.post("/v1/chat/completions", json={
                        "model": model, "messages": messages, "max_tokens": config.reply_tokens,
                        "temperature": 0.3, "seed": i, "thresher_publish": True, "user": f"simulated-user-{i}"})
                    r.raise_for_status()
                    conv_id = r.headers["x-thresher-conversation"]
                    reply = r.json()["choices"][0]["message"]["content"]
                    messages.append({"role": "assistant", "content": reply})
                client.post(f"/v1/conversations/{conv_id}/end").raise_for_status()
                ids.append(conv_id)
                say(f"  simulated user {i + 1}: {turns[0]!r} -> {messages[-1]['content'][:60]!r}")

        store = Store(settings.db_url)
        # The loop's stages one at a time (the server's own loop waits an hour between turns here), with the
        # simulated reviewer between publishing and reading the verdicts back; the demo runs its round itself. It
        # judges as the server would ("serving": the chat model judges), with its own copy of the model.
        deployment = Deployment(settings, store=store)
        worker = Worker(settings, store, deployment.judge(deployment.engine(n_parallel=1)),
                        repo=DatasetRepo(settings.dataset_path, str(remote)))
        repo = worker.repo
        judged = worker.judge_ended()
        say(f"judged {judged} conversation(s)")
        report = worker.publish()
        say(f"published {len(report.published)} to {remote}; rejected {len(report.rejected)}")

        say("the SIMULATED reviewer's policy: " + REVIEWER_POLICY.format(min_score=config.review_min_score,
                                                                         min_words=config.review_min_words))
        verdicts = {"approve": 0, "reject": 0}
        for conv_id in report.published:
            history = store.judgments(conv_id)
            j = history[-1] if history else None
            conv = store.get(conv_id)
            verdict, reason = review_policy(j.score if j else None, j.flags if j else [],
                                            [m.to_openai() for m in conv.messages], config)
            write_verdict(repo, conv_id, verdict, reason, reviewer=REVIEWER)
            verdicts[verdict] += 1
        synced, _, _ = worker.read_reviews()
        say(f"simulated reviewer: {verdicts['approve']} approved, {verdicts['reject']} rejected; synced "
            f"({synced.approved} approved in the store)")
        store.close()

        say("one small training round (judge, chat model, export, evaluation, gate)")
        round_config = RoundConfig.tiny() if quick else RoundConfig.small()
        record = run_round(settings, round_config, progress=lambda m: say("  " + m))
        ev, jr = record.evaluation, record.judge
        summary = {
            "data_dir": str(data_dir), "remote": str(remote), "conversations": len(ids), "judged": judged,
            "published": len(report.published), "approved": verdicts["approve"], "rejected": verdicts["reject"],
            "round": record.round, "promoted": record.promoted, "win_rate": ev.win_rate,
            "lc_win_rate": ev.lc_win_rate, "pairs": record.pairs.pairs, "prompts": ev.prompts,
            "judge_auc": [jr.before_auc, jr.after_auc], "judge_rows": jr.rows_heldout,
            "relaxed_gate": round_config.gate == RoundConfig.tiny().gate,
            "threshold": settings.judge_threshold, "config": str(config_file),
            "seconds": round(time.perf_counter() - t0, 1), "dashboard": f"{url}/dashboard", "chat": url,
        }
    except BaseException:  # nothing is left serving after a failure or Ctrl-C
        stop_server(server)
        raise
    if keep_serving:
        summary["server"] = server
    else:
        stop_server(server)
    return summary


def start_server(settings: Settings, timeout: float = 300) -> subprocess.Popen[bytes]:
    """`thresher serve` with `settings`, in a child process writing to this one's standard output and error, once
    its /healthz answers. RuntimeError when it exits or does not answer within `timeout` seconds."""
    import httpx

    env = {k: v for k, v in os.environ.items() if not k.startswith("THRESHER_")} | settings.as_env()
    server = subprocess.Popen([sys.executable, "-m", "thresher", "serve"], env=env)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the demo server exited with status {server.returncode} (its output is above, "
                               "or in the demo's log)")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"http://{settings.host}:{settings.port}/healthz", timeout=5).is_success:
                return server
        time.sleep(0.2)
    stop_server(server)
    raise RuntimeError(f"the demo server did not answer within {timeout:g} s")


def stop_server(server: subprocess.Popen[bytes]) -> None:
    """Stop a server from `start_server`: asked first (it finishes what it is doing), then killed after 30 s."""
    if server.poll() is None:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def serve_until_stopped(summary: dict[str, Any]) -> None:
    """`thresher demo` without --exit: the demo's server keeps serving until it exits or Ctrl-C stops it."""
    server = summary["server"]
    try:
        server.wait()
    except KeyboardInterrupt:
        stop_server(server)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def summary_lines(summary: dict[str, Any], serving: bool) -> list[str]:
    """What the demo did and what its figures mean (and do not mean), for a newcomer."""
    promoted = ", ".join(summary["promoted"]) or "nothing"
    before, after = summary["judge_auc"]
    lines = [
        f"The demo took {summary['seconds']:.0f} s. What happened:",
        f"  {summary['conversations']} SIMULATED users chatted with the model through its API and allowed publishing;",
        f"  the judge rated {summary['judged']} conversation(s); {summary['published']} were published to the "
        f"local git repository {summary['remote']} (the demo publishes everything rated at least "
        f"{summary['threshold']:g}, "
        "so the reviewer has something to review);",
        f"  a SIMULATED reviewer approved {summary['approved']} and rejected {summary['rejected']} in git;",
        f"  training round {summary['round']} retrained the judge and the chat model on what was approved (then "
        f"preference training on {summary.get('pairs', 0)} pairs of its own replies, judged better and worse) and "
        f"promoted {promoted}.",
        "What the figures mean:",
        f"  judge AUC (how well it ranks good above bad conversations; 0.5 is chance): "
        f"{'-' if before is None else f'{before:.3f}'} -> {auc_words(after, summary.get('judge_rows'))};",
        f"  chat win rate against the serving model, by a frozen judge on held-out real questions: "
        f"{win_rate_words(summary['win_rate'], summary.get('prompts'))}.",
    ]
    if summary.get("relaxed_gate"):
        lines.append("  The quick demo's gate has every limit off, to show the whole path: its promotion is no "
                     "evidence that the new model is better. Real rounds gate on real figures.")
    lines.append(f"Your data is in {summary['data_dir']}.")
    if serving:
        lines.append(f"The chat page is at {summary['chat']} and the dashboard at {summary['dashboard']}; "
                     "Ctrl-C stops the server.")
    else:
        lines.append(f"To look at the chat page and the dashboard again: THRESHER_CONFIG={summary['config']} "
                     "thresher serve")
    if summary.get("log"):
        lines.append(f"Progress bars and training logs are in {summary['log']} (--verbose shows them here).")
    return lines
