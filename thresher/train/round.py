"""One training round: sync reviews → pin a commit → build data → train the judge → train the chat model → export →
evaluate → gate → promote → write `rounds/<n>.json` into the dataset repository and push.

Every stage writes its result under `DATA_DIR/rounds/<n>/` and records itself in `state.json` once done, so a round
killed at any point (mid-training included: training resumes from its newest checkpoint) continues where it stopped
when run again. Only one round runs at a time (a lock file in the data dir).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from thresher.config import Settings
from thresher.conversation import Record
from thresher.evaluate import Gate, apply_gate
from thresher.evidence import auc_words, is_noise, win_rate_words
from thresher.registry import PROMOTED, Registry, Version
from thresher.train.dpo import DpoConfig
from thresher.train.judge import JUDGE_HELDOUT_ROWS, JUDGE_TRAIN_ROWS
from thresher.train.preference import dpo_stage, pairs_stage, publish_pairs, serving_judge
from thresher.train.sft import TrainConfig, release_memory
from thresher.train.state import (
    ChatStage,
    DataStage,
    DpoStage,
    Evaluation,
    GateStage,
    JudgeStage,
    Pin,
    Published,
    RoundRecord,
    RoundState,
    SftStage,
)

log = logging.getLogger("thresher.round")


class RoundBusy(RuntimeError):
    pass


@dataclass
class RoundConfig:
    """How big a round is. `tiny()` is for tests and `thresher demo --quick`."""

    chat: TrainConfig = field(default_factory=lambda: TrainConfig(max_length=512, epochs=1.0))
    replay: str | None = "sample"  # base instruction data mixed in so a round does not forget; None: none
    replay_limit: int | None = None  # at most this many replayed examples ...
    # ... and at most this many per approved conversation: the shipped sample's short answers, replayed in bulk,
    # shortened the model's replies (on training-side prompts: 86 words for the approved replies, 40-53 after SFT)
    replay_per_approved: float | None = 1.0
    heldout_share: float = 0.1  # approved conversations kept out of training for the held-out loss
    # The judge's head: real good conversations from these shipped sources (and every approved one), spoiled.
    judge_sources: tuple[str, ...] = ("zaragoza", "chatterbot")
    judge_source_limit: int | None = None  # at most this many shipped good conversations
    judge_train_rows: int | None = JUDGE_TRAIN_ROWS
    judge_heldout_rows: int | None = JUDGE_HELDOUT_ROWS
    # Preference training after SFT: on-policy pairs (the SFT model's replies, judged by this round's judge) and
    # the pairs the approved conversations carry. None: SFT only.
    dpo: DpoConfig | None = field(default_factory=DpoConfig)
    pair_prompts: int = 96  # prompts sampled for on-policy pairs: the approved conversations', then shipped ones
    pair_samples: int = 4  # replies per prompt
    pair_tokens: int = 256
    pair_margin: float = 1.5  # the judge's score difference a pair needs
    pair_max_length_ratio: float = 1.5  # the rejected reply's length within this factor of the chosen one's
    min_pairs: int = 8  # fewer: no preference stage this round
    # With a preference stage and fewer approved training conversations than this, no SFT: DPO starts from the
    # serving model. bench/rounds.py, 9-32 approved a round: SFT on them (with replay) and then DPO shortened the
    # replies round on round (102 -> 81 -> 31 words) and won 0.54 length-controlled against the base; DPO alone
    # from the base on the same kind of pairs kept 0.87x the length and won 0.67.
    sft_min_approved: int = 100
    # Drop the pairs whose chosen reply is shortest against its rejected one until the chosen replies are on
    # average (geometric mean) at most this much shorter: a set whose chosen side is shorter teaches "shorter"
    pair_length_balance: float | None = 1.1
    eval_prompts: int = 60  # real held-out questions (`thresher.train.sources.prompts(split="eval")`)
    eval_tokens: int = 256
    gate: Gate = field(default_factory=Gate)
    seed: int = 0

    @classmethod
    def small(cls, gate: Gate | None = None) -> RoundConfig:
        """A round that shows real learning in about ten minutes on two cores (the full demo)."""
        return cls(chat=TrainConfig(max_length=384, max_steps=8, batch_size=8, save_steps=4),
                   replay_limit=48, judge_train_rows=400, judge_heldout_rows=200, eval_prompts=8, eval_tokens=64,
                   dpo=DpoConfig(max_length=384, max_steps=6, batch_size=4, save_steps=3), pair_prompts=24,
                   pair_tokens=96, gate=gate or Gate())

    @classmethod
    def tiny(cls) -> RoundConfig:
        """A few steps on a few examples, with the gate's limits relaxed so the whole path runs (tests, --quick):
        SFT on a handful of conversations, then DPO on whatever pairs there are."""
        return cls(chat=TrainConfig(max_length=256, max_steps=2, batch_size=4, save_steps=1),
                   replay_limit=8, judge_sources=("sample",), judge_source_limit=40, judge_train_rows=60,
                   judge_heldout_rows=40, eval_prompts=2, eval_tokens=24,
                   dpo=DpoConfig(max_length=256, max_steps=2, batch_size=2, save_steps=1), pair_prompts=6,
                   pair_samples=3, pair_tokens=64, pair_margin=0.0, pair_max_length_ratio=10.0, min_pairs=1,
                   sft_min_approved=0, pair_length_balance=None,
                   gate=Gate(min_win_rate=0.0, max_loss_ratio=10.0, min_judge_auc=0.0, min_judge_gain=-1.0,
                             max_loop_increase=1.0, max_cutoff_increase=1.0, max_length_change=10.0))


@contextlib.contextmanager
def round_lock(data_dir: Path) -> Iterator[None]:
    data_dir.mkdir(parents=True, exist_ok=True)
    with open(data_dir / "round.lock", "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RoundBusy("another round is running in this data dir") from None
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def resolve_base(settings: Settings, registry: Registry | None) -> tuple[str, Path | None, str | None, str]:
    """(what to load for training, the GGUF whose metadata an export reuses, the parent version id, the serving
    engine spec): the promoted chat version if there is one (none without a registry), else the configured
    model."""
    from thresher.engines import EngineError, local_weights

    current = registry.current("chat") if registry is not None else None
    if current is not None:
        path = Path(current.path or "")
        gguf = path / "model.gguf"
        return str(path / "hf"), gguf if gguf.exists() else None, current.id, current.spec
    try:
        target, gguf = local_weights(settings.model)
    except EngineError:
        raise ValueError("a round trains a local model: set `model` to a GGUF file or a Hugging Face model, not a "
                         "remote server") from None
    if gguf is None:
        return target, None, None, settings.model
    return target, gguf, None, "embedded" if settings.model == "embedded" else f"llama.cpp:{gguf}"


def _split(conversations: list[Record], share: float) -> tuple[list[Record], list[Record]]:
    """Held-out by a hash of the id, so the split never changes as the dataset grows."""
    held = [c for c in conversations if int(hashlib.sha256(c.id.encode()).hexdigest(), 16) % 1000 < share * 1000]
    ids = {c.id for c in held}
    return [c for c in conversations if c.id not in ids], held


def _version_id(kind: str, n: int, path: Path) -> str:
    h = hashlib.sha256()
    gguf = path / "model.gguf"
    for f in [gguf] if gguf.exists() else sorted((path / "hf").glob("*.safetensors")):
        h.update(f.read_bytes())
    return f"{kind}-r{n}-{h.hexdigest()[:10]}"


def run_round(settings: Settings, config: RoundConfig | None = None,
              progress: Callable[[str], None] | None = None) -> RoundRecord:
    """Run (or continue) a round; returns its record, also written to `rounds/<n>.json` in the dataset."""
    config = config or RoundConfig()
    say = progress or (lambda msg: log.info("%s", msg))
    with round_lock(settings.data_dir):
        registry = Registry(settings.data_dir / "models")
        rounds = settings.data_dir / "rounds"
        unfinished = sorted((p for p in rounds.glob("*") if p.is_dir() and p.name.isdigit()
                             and not RoundState(p).done("published")), key=lambda p: int(p.name))
        n = int(unfinished[0].name) if unfinished else max(
            [int(p.name) for p in rounds.glob("*") if p.name.isdigit()] + [0]) + 1
        root = rounds / str(n)
        root.mkdir(parents=True, exist_ok=True)
        state = RoundState(root)
        if unfinished:
            say(f"round {n}: continuing ({', '.join(state.data['stages']) or 'nothing done yet'})")
        return _run(settings, config, registry, n, root, state, say)


def _run(settings: Settings, config: RoundConfig, registry: Registry, n: int, root: Path, state: RoundState,
         say: Callable[[str], None]) -> RoundRecord:
    from thresher.dataset_repo import DatasetRepo, dump
    from thresher.review import build_dataset
    from thresher.review import sync as sync_reviews
    from thresher.store import Store

    t0 = time.perf_counter()
    earlier = sum(s.get("seconds", 0) for s in state.data["stages"].values() if isinstance(s, dict))  # killed runs
    repo = DatasetRepo(settings.dataset_path, settings.dataset_remote).open(settings.licence)

    if not state.done("pinned"):
        say(f"round {n}: syncing reviews")
        store = Store(settings.db_url)
        store.migrate()
        try:
            sync_reviews(store, repo, min_approvals=settings.quorum_approvals)
        finally:
            store.close()
        base, base_gguf, parent, serving = resolve_base(settings, registry)
        judge_cur = registry.current("judge")
        state.mark("pinned", Pin(commit=repo.head() if repo.has_commits() else None, base=base,
                                 base_gguf=str(base_gguf) if base_gguf else None, parent=parent, serving=serving,
                                 serving_judge=judge_cur.spec if judge_cur else serving,
                                 serving_judge_id=judge_cur.id if judge_cur else None))
    pin = state.pin()
    commit = pin.commit
    say(f"round {n}: dataset commit {commit[:12] if commit else '(empty)'}")

    data_dir = root / "data"
    if not state.done("data"):
        approved: list[Record] = []
        if commit:
            m = build_dataset(repo, commit, data_dir, settings.quorum_approvals)
            approved = [Record.from_json(json.loads(x)) for x in (data_dir / "data.jsonl").read_text().splitlines()
                        if x.strip()]
            say(f"round {n}: {m.approved} approved conversations at {commit[:12]}")
        train, held = _split(approved, config.heldout_share)
        (root / "train.json").write_text(json.dumps([c.training_json() for c in train]))
        (root / "heldout.json").write_text(json.dumps([c.training_json() for c in held]))
        state.mark("data", DataStage(len(approved), len(train), len(held)))
    train_convs = [Record.from_json(c) for c in json.loads((root / "train.json").read_text())]
    held_convs = [Record.from_json(c) for c in json.loads((root / "heldout.json").read_text())]

    if not state.done("judge"):
        state.mark("judge", _train_judge(settings, config, registry, repo, commit, n, root, pin, train_convs, say))
        release_memory()
    judge_rec = state.get("judge")

    if not state.done("sft"):
        few = config.dpo is not None and len(train_convs) < config.sft_min_approved
        if few:  # too few to fine-tune on: their prompts and pairs feed preference training from the serving model
            why = f"{len(train_convs)} approved conversations, fewer than {config.sft_min_approved}"
            say(f"round {n}: no SFT ({why}); preference training starts from the serving model")
            state.mark("sft", SftStage(pin.serving, pin.base, "", 0, 0.0, None, skipped=why))
        else:
            state.mark("sft", _train_chat(settings, config, commit, n, root, pin, train_convs, judge_rec, say))
            release_memory()
    sft_rec = state.get("sft")

    if not state.done("pairs"):
        state.mark("pairs", pairs_stage(settings, config, repo, commit, n, root, pin, train_convs, sft_rec, judge_rec,
                                   say))
        release_memory()
    pairs_rec = state.get("pairs")

    if not state.done("dpo"):
        state.mark("dpo", dpo_stage(settings, config, commit, n, root, pin, sft_rec, pairs_rec, judge_rec, say))
        release_memory()
    if sft_rec.skipped and not state.get("dpo").spec and not state.done("chat"):
        # Nothing was trained from the serving model (too few pairs): the round falls back to SFT after all
        say(f"round {n}: no preference training, so SFT on the approved conversations after all")
        sft_rec = _train_chat(settings, config, commit, n, root, pin, train_convs, judge_rec, say)
        state.mark("sft", sft_rec)
        release_memory()

    if not state.done("chat"):
        state.mark("chat", _register_chat(registry, commit, n, root, pin, sft_rec, state.get("dpo"), judge_rec))
    chat_rec = state.get("chat")

    if not state.done("evaluated"):
        from thresher.train.export import add_evaluation

        result = _evaluate(settings, config, n, root, pin, chat_rec, held_convs, say)
        card = Path(registry.get(chat_rec.version).path or "") / "README.md"
        if card.is_file():
            add_evaluation(card, result)
        state.mark("evaluated", result)
    ev = state.get("evaluated")

    if not state.done("gated"):
        metrics = {**asdict(ev), "judge_auc": judge_rec.after_auc, "judge_gain": judge_rec.gain,
                   **ev.increases()}
        # The length-controlled win rate where there is one (a longer reply is not a better one)
        won = ev.lc_win_rate if ev.lc_win_rate is not None else ev.win_rate
        # A loss over a handful of held-out conversations is noise: it is recorded, not gated on.
        loss = None if is_noise(ev.heldout_conversations) else ev.loss_ratio
        chat_gate = apply_gate({"win_rate": won, "loss_ratio": loss, **ev.increases()}, config.gate)
        judge_gate = apply_gate({k: metrics.get(k) for k in ("judge_auc", "judge_gain")}, config.gate)
        for kind, rec, g in (("chat", chat_rec, chat_gate), ("judge", judge_rec, judge_gate)):
            registry.update(rec.version, metrics={**registry.get(rec.version).metrics, **metrics})
            if g.passed:
                registry.promote(rec.version, f"round {n}: gate passed")
                say(f"round {n}: promoted {rec.version}")
            else:
                registry.reject(rec.version, "; ".join(g.reasons))
                say(f"round {n}: kept the serving {kind} model ({'; '.join(g.reasons)})")
        state.mark("gated", GateStage(chat_gate, judge_gate))

    record = RoundRecord(n, commit, state.get("data"), pin.base, pin.parent, judge_rec, chat_rec, pairs_rec, ev,
                         state.get("gated"), [v for v in (chat_rec.version, judge_rec.version)
                                              if registry.get(v).status == PROMOTED],
                         round(earlier + time.perf_counter() - t0, 1))
    if not state.done("published"):
        with repo.lock():
            path = f"rounds/{n}.json"
            repo.write(path, record.to_json())
            paths = [path, *publish_pairs(repo, root, n)]
            repo.commit(paths, f"Round {n}: trained on {commit[:12] if commit else 'no reviewed data'}; promoted "
                               f"{', '.join(record.promoted) or 'nothing'}")
            pushed = repo.push() if settings.dataset_remote else False
        (root / "round.json").write_text(dump(record.to_json()))
        state.mark("published", Published(pushed))
        say(f"round {n}: wrote rounds/{n}.json" + (" and pushed" if pushed else ""))
    return record


def _train_judge(settings: Settings, config: RoundConfig, registry: Registry, repo: Any, commit: str | None, n: int,
                 root: Path, pin: Pin, train_convs: list[Record], say: Callable[[str], None]) -> JudgeStage:
    """Fit a new head on the serving model's states: shipped real conversations and the approved ones, spoiled,
    plus reviewers' verdicts and corrections; measured against the serving judge on the same held-out rows."""
    import random

    from thresher.engines import load as load_engine
    from thresher.judge import make_judge
    from thresher.reward import HeadJudge
    from thresher.train import sources as shipped
    from thresher.train.contrast import Source
    from thresher.train.data import reviewer_rows
    from thresher.train.judge import default_layers, train_head_judge

    t = time.perf_counter()
    good = shipped.load(config.judge_sources)
    if config.judge_source_limit and len(good) > config.judge_source_limit:
        good = random.Random(config.seed).sample(good, config.judge_source_limit)
    good += [Source(c.id, c.messages, "approved") for c in train_convs]
    verdicts = reviewer_rows(repo, commit, settings.quorum_approvals) if commit else []
    engine = load_engine(pin.serving, n_ctx=settings.n_ctx, n_threads=settings.n_threads, n_parallel=1)
    layers = default_layers(pin.serving)  # what `thresher train judge` reads: a third of the model's layers
    reader = engine.first_layers(layers) if layers and hasattr(engine, "first_layers") else engine
    # Measured against what the server judges with (a head stays on the model it was trained for: after a chat
    # model without a head of its own is promoted, the shipped head goes on judging over the embedded model)
    current = make_judge(serving_judge(settings, pin.promoted_judge), engine, n_ctx=settings.n_ctx,
                         n_threads=settings.n_threads)
    before = current.head if isinstance(current, HeadJudge) else None
    own = getattr(current, "engine", None)
    say(f"round {n}: training the judge's head on {len(good)} good conversations and {len(verdicts)} verdicts")
    report = train_head_judge(reader, pin.serving, root / "judge", good, verdicts, seed=config.seed,
                              max_train=config.judge_train_rows, max_heldout=config.judge_heldout_rows,
                              before=before, before_engine=own if getattr(own, "version", None) != reader.version
                              else None, say=say)
    after_auc = report.auc_after["all"]
    before_auc = report.auc_before["all"] if report.auc_before else None
    was = "no judge to compare" if before_auc is None else f"{before_auc:.3f}"
    say(f"round {n}: judge AUC {was} -> {auc_words(after_auc, report.rows_heldout)}")
    vid = f"judge-r{n}-{report.head.id.split('@')[0].removeprefix('head-')}"
    spec = f"head:{root / 'judge'}"
    registry.add(Version(vid, "judge", spec, n, pin.serving_judge_id, commit, None,
                         {"judge_auc_before": before_auc, "judge_auc_after": after_auc,
                          "calibrated_threshold": report.threshold, "judge_id": report.head.id},
                         path=str(root / "judge")))
    gain = (after_auc or 0.0) - (before_auc or 0.0)
    return JudgeStage(vid, before_auc, after_auc, gain, (report.auc_before or {}).get("reviewers"),
                      report.auc_after.get("reviewers"), report.auc_after, report.auc_before, report.rows_train,
                      report.rows_heldout, report.from_verdicts, report.threshold, time.perf_counter() - t)


def _train_chat(settings: Settings, config: RoundConfig, commit: str | None, n: int, root: Path, pin: Pin,
                train_convs: list[Record], judge_rec: JudgeStage, say: Callable[[str], None]) -> SftStage:
    """SFT on the approved conversations (and replayed base instruction data), exported as the round's first
    candidate."""
    from thresher.train.data import load_conversations
    from thresher.train.export import export
    from thresher.train.sft import load_base, tokenise_all, train_lora

    t = time.perf_counter()
    convs = [c.messages for c in train_convs]
    if config.replay:
        replay = load_conversations(config.replay, "alpaca" if config.replay == "sample" else "messages")
        limits = [x for x in (config.replay_limit, None if config.replay_per_approved is None
                              else max(1, round(config.replay_per_approved * len(train_convs)))) if x is not None]
        convs += replay[: min(limits)] if limits else replay
    say(f"round {n}: training the chat model on {len(train_convs)} approved conversations and "
        f"{len(convs) - len(train_convs)} replayed examples")
    model, tok = load_base(pin.base)
    rows = tokenise_all(tok, convs, config.chat.max_length)
    result, trained = train_lora(model, tok, rows, root / "chat", config.chat, title=f"Round {n}: chat SFT loss")
    out = root / "chat" / "export"
    info = {"name": f"thresher chat, round {n} (SFT)", "kind": "chat", "round": n, "base": pin.base,
            "parent": pin.parent, "data_commit": commit, "examples": len(rows),
            "judge_version": judge_rec.version, "licence": "apache-2.0",
            "metrics": {"final_loss": result.final_loss, "tokens_per_second": round(result.tokens_per_second, 1)}}
    ex = export(trained, tok, out, Path(pin.base_gguf) if pin.base_gguf else None, info)
    spec = f"llama.cpp:{ex.gguf}" if ex.gguf else f"hf:{ex.hf_dir}"
    return SftStage(spec, str(ex.hf_dir), str(out), len(rows), result.tokens_per_second, result.final_loss,
                    time.perf_counter() - t)


def _register_chat(registry: Registry, commit: str | None, n: int, root: Path, pin: Pin, sft_rec: SftStage,
                   dpo_rec: DpoStage | None, judge_rec: JudgeStage) -> ChatStage:
    """The round's candidate chat version: the DPO model, or the SFT one where there was no preference stage."""
    dpo = dpo_rec if dpo_rec is not None and dpo_rec.spec else None  # None: skipped, the SFT model stands
    spec, hf, out = ((dpo.spec, dpo.hf or "", Path(dpo.out or "")) if dpo
                     else (sft_rec.spec, sft_rec.hf, Path(sft_rec.out)))
    vid = _version_id("chat", n, out)
    metrics = {"final_loss": sft_rec.final_loss}
    if dpo:
        metrics |= {"dpo_final_loss": dpo.final_loss, "reward_accuracy": dpo.reward_accuracy}
    registry.add(Version(vid, "chat", spec, n, pin.parent, commit, judge_rec.version, metrics, path=str(out)))
    return ChatStage(vid, spec, hf, sft_rec.examples, sft_rec.tokens_per_second, sft_rec.final_loss,
                     "dpo" if dpo else "sft", dpo.pairs if dpo else 0, dpo.final_loss if dpo else None,
                     dpo.reward_accuracy if dpo else None)


def eval_prompts(limit: int, sources: tuple[str, ...] = ("zaragoza", "chatterbot")) -> list[str]:
    """The held-out questions rounds are evaluated on: real questions from the shipped sources on the evaluation
    side of their split (no chat training, simulated user or sampling choice sees them), or, without those
    packages, the 40 prompts written for thresher (marked so in the record)."""
    from thresher.train.data import load_rows, sample_path
    from thresher.train.sources import SourceError, prompts

    try:
        return prompts(sources, split="eval", limit=limit)
    except SourceError:
        return [p["prompt"] for p in load_rows(str(sample_path().parent / "eval_prompts.json"))][:limit]


def _evaluate(settings: Settings, config: RoundConfig, n: int, root: Path, pin: Pin, chat_rec: ChatStage,
              held_convs: list[Record], say: Callable[[str], None]) -> Evaluation:
    """The candidate against the serving model on held-out real questions, sampled as users are served: by the
    frozen evaluation judge (length-controlled too), by rates that need no judge, and by the loss on held-out
    approved conversations."""
    from thresher.engines import ChatParams
    from thresher.engines import load as load_engine
    from thresher.evaluate import FrozenJudge, length_controlled, replies, reply_rates

    t = time.perf_counter()
    prompts = eval_prompts(config.eval_prompts)
    params = ChatParams(temperature=settings.temperature, repetition_penalty=settings.repetition_penalty)
    say(f"round {n}: answering {len(prompts)} held-out questions with the new and the serving model")
    new = load_engine(chat_rec.spec, n_ctx=settings.n_ctx, n_threads=settings.n_threads)
    new_replies = replies(new, prompts, config.eval_tokens, progress="new model", params=params)
    del new
    old = load_engine(pin.serving, n_ctx=settings.n_ctx, n_threads=settings.n_threads)
    old_replies = replies(old, prompts, config.eval_tokens, progress="serving model", params=params)
    del old
    new_answers, old_answers = [r.text for r in new_replies], [r.text for r in old_replies]
    rates_new, rates_old = reply_rates(prompts, new_replies), reply_rates(prompts, old_replies)
    say(f"round {n}: {_rates_words(rates_old, rates_new)} (serving -> new)")
    rates_base = _base_rates(settings, config, root.parent, pin, prompts, params, rates_old)
    if rates_base:
        say(f"round {n}: {_rates_words(rates_base, rates_new)} (base -> new)")
    judge = FrozenJudge.from_spec(settings.eval_judge, n_ctx=settings.n_ctx, n_threads=settings.n_threads)
    wr = judge.win_rate(prompts, new_answers, old_answers)
    lc = length_controlled([e["p_new"] for e in wr.examples], [len(e["new"].split()) for e in wr.examples],
                           [len(e["old"].split()) for e in wr.examples])
    scores_new = [e["score_new"] for e in wr.examples]
    scores_old = [e["score_old"] for e in wr.examples]
    say(f"round {n}: win rate {win_rate_words(wr.win_rate, wr.prompts)}, length-controlled "
        f"{win_rate_words(lc, wr.prompts)} (evaluation judge {judge.judge_id.split('@')[0]})")
    judge_id = judge.judge_id
    del judge
    loss_new = loss_old = ratio = None
    if held_convs:
        from thresher.train.sft import heldout_loss, load_base

        convs = [c.messages for c in held_convs]
        m, tok = load_base(chat_rec.hf)
        loss_new = heldout_loss(m, tok, convs, config.chat.max_length)
        m, tok = load_base(pin.base)
        loss_old = heldout_loss(m, tok, convs, config.chat.max_length)
        ratio = loss_new / loss_old if loss_new is not None and loss_old else None
        say(f"round {n}: held-out loss {_fmt(loss_old)} -> {_fmt(loss_new)} on {len(held_convs)} conversation(s)"
            + (" (noise)" if is_noise(len(held_convs)) else ""))
    (root / "win_rate_examples.json").write_text(json.dumps(wr.examples, indent=2, ensure_ascii=False))
    return Evaluation(wr.win_rate, lc, wr.prompts, wr.ties, wr.position_bias, judge_id,
                      sum(scores_new) / len(scores_new) if scores_new else None,
                      sum(scores_old) / len(scores_old) if scores_old else None, rates_new, rates_old, rates_base,
                      loss_new, loss_old, ratio, len(held_convs), time.perf_counter() - t)


def _rates_words(old: dict[str, float], new: dict[str, float]) -> str:
    return (f"loops {old['loop_rate']:.0%} -> {new['loop_rate']:.0%}, cut off {old['cutoff_rate']:.0%} -> "
            f"{new['cutoff_rate']:.0%}, mean length {old['mean_words']:.0f} -> {new['mean_words']:.0f} words")


def _base_rates(settings: Settings, config: RoundConfig, rounds: Path, pin: Pin, prompts: list[str], params: Any,
                serving: dict[str, float]) -> dict[str, float]:
    """The configured model's reply rates on the evaluation prompts, for a round whose serving model is a promoted
    one ({} where the serving model is the base: `serving` are its figures, kept for later rounds). Kept in
    `rounds/base_rates.json` under what they depend on (model, prompts, reply length, sampling), so the base
    answers the prompts once, not every round."""
    from thresher.engines import load as load_engine
    from thresher.evaluate import replies, reply_rates

    key = hashlib.sha256(json.dumps([settings.model, prompts, config.eval_tokens, settings.temperature,
                                     settings.repetition_penalty]).encode()).hexdigest()[:16]
    file = rounds / "base_rates.json"
    try:
        kept = json.loads(file.read_text()) if file.exists() else {}
    except ValueError:
        kept = {}  # a torn or hand-spoiled file: measured again, and written whole below
    if pin.parent is None:
        rates, out = serving, {}
    elif isinstance(kept.get(key), dict):
        return kept[key]
    else:
        base = load_engine(resolve_base(settings, None)[3], n_ctx=settings.n_ctx, n_threads=settings.n_threads)
        rates = out = reply_rates(prompts, replies(base, prompts, config.eval_tokens, progress="base model",
                                                   params=params))
        del base
    tmp = file.with_suffix(".tmp")
    tmp.write_text(json.dumps({**(kept if isinstance(kept, dict) else {}), key: rates}, indent=2))
    tmp.replace(file)
    return out


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"
