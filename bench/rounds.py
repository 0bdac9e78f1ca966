"""Several training rounds back to back on the embedded model, with SIMULATED users asking real questions: does
the flywheel make the chat model better, by measures that are not the judge grading itself?

Each round, in one fresh data dir (`--data-dir`, or a temporary one):
1. SIMULATED users: `--users` real questions (the shipped sources' first questions on the *training* side of the
   split, `thresher.train.sources.prompts(split="train")`, a new slice each round) are answered by the serving
   model (the promoted chat version, else the base) with the serving sampling defaults, stored as ended
   conversations whose users allowed publishing (`source` "simulated");
2. the serving judge rates them; the accepted ones are scrubbed and published to a local bare git repository;
3. a SIMULATED reviewer approves a published conversation when its reply neither loops nor was cut off and has at
   least 4 words, and rejects it otherwise (a policy that does not read the judge's score); verdicts are synced;
4. `thresher.train.round.run_round`: judge, SFT, on-policy pairs, DPO, evaluation on held-out real questions by the
   frozen evaluation judge, gate, promotion.
Printed per round: published/approved, pairs, the round's own evaluation (candidate against the serving model) and
whether it was promoted. At the end, the promoted model against the BASE on the held-out questions (the evaluation
side of the split, never asked by the simulated users): length-controlled win rate by the frozen judge, loop and
cut-off rates, mean length; then the same on the rest of the evaluation side, the questions no round's gate
chose on (`against_base_unseen` in the JSON). Goals (issue 14): LC win rate >= 0.60, loop and cut-off rates below
the base's, mean length within +-25% of the base's. Figures over fewer than 30 prompts are noise and printed so.

Run:
    python bench/rounds.py [--rounds 3] [--users 48] [--eval-prompts 60] [--data-dir DIR] [--json PATH]
    python bench/rounds.py --data-dir DIR --json PATH --only-against-base   # only the comparisons, after a run
About 20-35 minutes a round on an idle 2-core machine with `--users 32` (peak memory 8.6 GB). Killed, the same
command with the same `--data-dir` continues where it stopped (rounds resume by stage; simulated users are not
asked twice; a round that ran to its end is reported from its state, not run again).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from thresher.config import Settings  # noqa: E402
from thresher.conversation import Conversation, Message  # noqa: E402
from thresher.engines import ChatParams, load  # noqa: E402
from thresher.evaluate import FrozenJudge, length_controlled, loops, replies, reply_rates  # noqa: E402
from thresher.evidence import win_rate_words  # noqa: E402
from thresher.registry import Registry  # noqa: E402
from thresher.train.dpo import DpoConfig  # noqa: E402
from thresher.train.round import RoundConfig, eval_prompts, run_round  # noqa: E402
from thresher.train.sft import TrainConfig  # noqa: E402
from thresher.train.sources import prompts as real_prompts  # noqa: E402

REVIEWER = "simulated-reviewer"


def bench_config() -> RoundConfig:
    return RoundConfig(chat=TrainConfig(max_length=512, epochs=1.0, batch_size=8, save_steps=10),
                       replay_limit=48, judge_train_rows=160, judge_heldout_rows=100,
                       dpo=DpoConfig(max_length=512, batch_size=4, save_steps=10),
                       pair_prompts=96, pair_samples=4, pair_tokens=192, eval_prompts=60, eval_tokens=256)


def simulate_users(settings: Settings, registry: Registry, questions: list[str], tokens: int, say) -> int:
    from thresher.dataset_repo import DatasetRepo
    from thresher.flywheel import judge_pending, publish
    from thresher.judge import make_judge
    from thresher.review import sync, write_verdict
    from thresher.store import Store
    from thresher.train.preference import serving_judge

    current = registry.current("chat")
    spec = current.spec if current else settings.model
    engine = load(spec, n_ctx=settings.n_ctx, n_threads=settings.n_threads)
    params = ChatParams(temperature=settings.temperature, repetition_penalty=settings.repetition_penalty)
    got = replies(engine, questions, tokens, progress="simulated users", params=params)
    store = Store(settings.db_url)
    store.migrate()
    for i, (q, r) in enumerate(zip(questions, got, strict=True)):
        conv = store.create(Conversation(messages=[Message("user", q), Message("assistant", r.text,
                                                                               finish_reason=r.finish_reason)],
                                         publish_allowed=True, source="simulated", model_version=engine.version,
                                         client_hash=f"simulated-user-{i}"))
        store.end(conv.id, "simulated")
    # As the server judges (`preference.serving_judge`): a promoted judge version, else the `judge` setting, which
    # for the embedded model is its shipped head, over its own states even when a promoted chat model serves
    judge_cur = registry.current("judge")
    judge = make_judge(serving_judge(settings, judge_cur.spec if judge_cur else None), engine, rationale="never",
                       n_ctx=settings.n_ctx, n_threads=settings.n_threads)
    judge_pending(store, judge)
    repo = DatasetRepo(settings.dataset_path, settings.dataset_remote).open(settings.licence)
    report = publish(store, repo, threshold=judge.threshold, daily_cap=10**6)
    approved = 0
    for conv_id in report.published:
        conv = store.get(conv_id)
        reply = conv.messages[-1]
        ok = reply.finish_reason != "length" and not loops(reply.content) and len(reply.content.split()) >= 4
        write_verdict(repo, conv_id, "approve" if ok else "reject",
                      "[simulated reviewer] " + ("complete, no loop" if ok else "loops, cut off or too short"),
                      reviewer=REVIEWER)
        approved += ok
    sync(store, repo, settings.quorum_approvals)
    store.close()
    say(f"  {len(questions)} simulated users; judged by {judge.judge_id.split('@')[0]} at threshold "
        f"{judge.threshold:.2f}: {len(report.published)} published, {approved} approved by the simulated reviewer")
    return approved


def against_base(settings: Settings, registry: Registry, qs: list[str], tokens: int) -> dict:
    """The promoted chat model against the base on the held-out questions `qs`."""
    current = registry.current("chat")
    if current is None:
        return {"promoted": None}
    params = ChatParams(temperature=settings.temperature, repetition_penalty=settings.repetition_penalty)
    new = replies(load(current.spec, n_ctx=settings.n_ctx, n_threads=settings.n_threads), qs, tokens,
                  progress="promoted model", params=params)
    base = replies(load(settings.model, n_ctx=settings.n_ctx, n_threads=settings.n_threads), qs, tokens,
                   progress="base model", params=params)
    judge = FrozenJudge.from_spec(settings.eval_judge, n_ctx=settings.n_ctx, n_threads=settings.n_threads)
    wr = judge.win_rate(qs, [r.text for r in new], [r.text for r in base])
    lc = length_controlled([e["p_new"] for e in wr.examples], [len(e["new"].split()) for e in wr.examples],
                           [len(e["old"].split()) for e in wr.examples])
    return {"promoted": current.id, "prompts": len(qs), "win_rate": wr.win_rate, "lc_win_rate": lc,
            "replies_promoted": reply_rates(qs, new), "replies_base": reply_rates(qs, base),
            "eval_judge": judge.judge_id}


def round_row(n: int, approved: int, record: dict, seconds: float | None) -> dict:
    """A round's row of the bench's JSON, from its record as the dataset publishes it (`RoundRecord.to_json`)."""
    ev = record["evaluation"]
    return {"round": n, "approved": approved, "pairs": record["pairs"]["pairs"], "win_rate": ev["win_rate"],
            "lc_win_rate": ev["lc_win_rate"], "prompts": ev["prompts"], "replies_new": ev["replies_new"],
            "replies_serving": ev["replies_serving"], "promoted": record["promoted"], "seconds": seconds}


def finished_round(settings: Settings, n: int, done: dict) -> dict | None:
    """Round n's row, read from the record it published, when this run simulated its users and the round ran to
    its end."""
    from thresher.train.state import RoundState

    root = settings.data_dir / "rounds" / str(n)
    if str(n) not in done or not (root / "state.json").exists() or not RoundState(root).done("published"):
        return None
    record = json.loads((settings.dataset_path / "rounds" / f"{n}.json").read_text())
    return round_row(n, done[str(n)], record, None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--users", type=int, default=48)
    ap.add_argument("--user-tokens", type=int, default=256)
    ap.add_argument("--eval-prompts", type=int, default=60)
    ap.add_argument("--data-dir", type=Path)
    ap.add_argument("--threads", type=int)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--only-against-base", action="store_true",
                    help="run no round: compare the data dir's promoted model with the base (after a finished run)")
    a = ap.parse_args()
    import subprocess

    data_dir = (a.data_dir or Path(tempfile.mkdtemp(prefix="thresher-rounds-"))).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    remote = data_dir / "public-dataset.git"
    if not remote.exists():
        subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(remote)], check=True)
    settings = Settings(data_dir=data_dir, dataset_remote=str(remote), round_min_new_approved=0,
                        n_threads=a.threads)
    registry = Registry(data_dir / "models")
    config = bench_config()
    config.eval_prompts = a.eval_prompts
    questions = real_prompts(split="train")
    print(f"data dir {data_dir}; {len(questions)} real questions for simulated users; "
          f"{len(eval_prompts(a.eval_prompts))} held out for evaluation", flush=True)
    out = {"rounds": [], "data_dir": str(data_dir)}
    progress = data_dir / "bench-rounds.json"  # which rounds' users were simulated: a killed run continues
    done = json.loads(progress.read_text()) if progress.exists() else {}
    if a.only_against_base and a.json and a.json.exists():
        out = json.loads(a.json.read_text())
    for n in range(1, (0 if a.only_against_base else a.rounds) + 1):
        t0 = time.perf_counter()
        print(f"round {n}:", flush=True)
        finished = finished_round(settings, n, done)
        if finished:  # the whole round ran before: report it, do not start another
            out["rounds"].append(finished)
            print(f"  (finished before: LC win rate against the serving model "
                  f"{win_rate_words(finished['lc_win_rate'], finished['prompts'])}; promoted "
                  f"{finished['promoted'] or 'nothing'})", flush=True)
            continue
        if str(n) in done:
            approved = done[str(n)]
            print(f"  (continuing: its {approved} approved conversations were simulated before)", flush=True)
        else:
            asked = questions[(n - 1) * a.users: n * a.users]
            approved = simulate_users(settings, registry, asked, a.user_tokens, lambda m: print(m, flush=True))
            done[str(n)] = approved
            progress.write_text(json.dumps(done))
        record = run_round(settings, config, progress=lambda m: print("  " + m, flush=True))
        ev = record.evaluation
        row = round_row(n, approved, record.to_json(), round(time.perf_counter() - t0))
        out["rounds"].append(row)
        print(f"round {n} done in {row['seconds']} s: LC win rate against the serving model "
              f"{win_rate_words(ev.lc_win_rate, ev.prompts)}; promoted {record.promoted or 'nothing'}",
              flush=True)
        if a.json:
            a.json.write_text(json.dumps(out, indent=2))
    # The rounds' gates chose on the first --eval-prompts questions; the rest of the evaluation side no gate saw
    held = eval_prompts(10_000)
    for key, qs, what in (("against_base", held[:a.eval_prompts], "the held-out questions the gates saw"),
                          ("against_base_unseen", held[a.eval_prompts:], "held-out questions no gate saw")):
        if not qs:
            continue
        if a.only_against_base and key in out:  # measured before, by this run
            report(out[key], what)
            continue
        final = against_base(settings, registry, qs, config.eval_tokens)
        out[key] = final
        report(final, what)
        if not final.get("promoted"):  # nothing to compare on the other questions either
            break
        if a.json:
            a.json.write_text(json.dumps(out, indent=2))


def report(final: dict, what: str) -> None:
    if not final.get("promoted"):
        print("no round promoted a chat model: the base still serves")
        return
    p, b = final["replies_promoted"], final["replies_base"]
    ratio = p["mean_words"] / b["mean_words"] if b["mean_words"] else None
    print(f"promoted {final['promoted']} against the base on {final['prompts']} {what}:")
    print(f"  LC win rate {win_rate_words(final['lc_win_rate'], final['prompts'], 'the base')} (goal >= 0.60); raw "
          f"{final['win_rate']:.3f}")
    print(f"  loops {b['loop_rate']:.0%} -> {p['loop_rate']:.0%}, cut off {b['cutoff_rate']:.0%} -> "
          f"{p['cutoff_rate']:.0%} (goal: both lower); mean words {b['mean_words']:.0f} -> {p['mean_words']:.0f}"
          + (f" ({ratio:.2f}x, goal 0.75-1.25x)" if ratio else ""), flush=True)


if __name__ == "__main__":
    main()
