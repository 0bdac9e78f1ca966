"""A round's preference stages: the pairs its chat model learns from (the conversations' own, reviewers'
corrections, and on-policy pairs of its own sampled replies, judged) and the DPO pass over them; the round's
on-policy pairs published beside its record. Called by `thresher.train.round`, in its order and resumably."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from thresher.config import Settings
from thresher.conversation import Record
from thresher.train.state import DpoStage, JudgeStage, PairsStage, Pin, SftStage

if TYPE_CHECKING:
    from thresher.train.round import RoundConfig


def pair_prompts(config: RoundConfig, train_convs: list[Record]) -> list[tuple[str | None, list[dict[str, str]]]]:
    """The prompts on-policy pairs are sampled for: the approved conversations' (up to their last question), then
    shipped real questions on the training side of the split, up to `pair_prompts`."""
    import random

    from thresher.pairs import prompt_of

    picked: list[tuple[str | None, list[dict[str, str]]]] = []
    for c in random.Random(config.seed).sample(train_convs, len(train_convs)):
        p = prompt_of(c.messages)
        if p:
            picked.append((c.id, p))
    if len(picked) < config.pair_prompts:
        from thresher.train.sources import SourceError
        from thresher.train.sources import prompts as shipped_prompts

        try:
            extra = shipped_prompts(config.judge_sources, split="train")
        except SourceError:
            extra = []
        picked += [(None, [{"role": "user", "content": q}]) for q in extra]
    return picked[: config.pair_prompts]


def serving_judge(settings: Settings, promoted: str | None) -> str:
    """The judge spec the server judges with (`follow`): the promoted judge version's spec (`promoted`); else the
    `judge` setting where it names a judge; else, for the embedded model, the head shipped for it, over the
    embedded model's own states even when a promoted chat model serves (`follow.ModelFollower` keeps it so); else
    the serving chat model itself."""
    from thresher.reward import default_head_path

    if promoted:
        return promoted
    if settings.judge not in ("serving", "off"):
        return settings.judge
    return f"head:{default_head_path()}" if settings.model == "embedded" else "serving"


def pairs_stage(settings: Settings, config: RoundConfig, repo: Any, commit: str | None, n: int, root: Path, pin: Pin,
                train_convs: list[Record], sft_rec: SftStage, judge_rec: JudgeStage,
                say: Callable[[str], None]) -> PairsStage:
    """Preference pairs for this round: those the approved conversations carry and reviewers' corrections, then
    on-policy ones: the SFT model's replies (the serving model's where the round had no SFT) judged by the better
    of this round's judge and the serving one (by their AUC on the same held-out rows), over the serving model's
    states, length-balanced across the set (`pairs.balance_lengths`)."""
    from collections import Counter

    from thresher.engines import ChatParams
    from thresher.engines import load as load_engine
    from thresher.judge import make_judge
    from thresher.pairs import balance_lengths, from_corrections, from_record, on_policy, write_pairs

    t = time.perf_counter()
    if config.dpo is None:
        return PairsStage(skipped="no preference stage in this round's configuration")
    pairs = [p for c in train_convs for p in from_record(c)]
    if commit:  # reviewers' corrections: the corrected reply over the published one
        from thresher.train.data import rows_from_corrections

        gone = repo.takedowns(commit) | repo.takedowns("HEAD")
        both: dict[str, dict[str, list[dict[str, str]]]] = {}
        for row in rows_from_corrections(repo, commit):
            both.setdefault(row.source or "", {})[row.label] = row.messages
        pairs += from_corrections([(cid, d["good"], d["bad"]) for cid, d in both.items()
                                   if cid not in gone and "good" in d and "bad" in d])
    prompts = pair_prompts(config, train_convs)
    say(f"round {n}: sampling {config.pair_samples} replies to each of {len(prompts)} prompts for preference pairs")
    policy = load_engine(sft_rec.spec, n_ctx=settings.n_ctx, n_threads=settings.n_threads)
    serving = load_engine(pin.serving, n_ctx=settings.n_ctx, n_threads=settings.n_threads)
    better = judge_rec.before_auc is None or (judge_rec.after_auc or 0) >= judge_rec.before_auc
    spec = f"head:{root / 'judge'}" if better else serving_judge(settings, pin.promoted_judge)
    judge = make_judge(spec, serving, rationale="never", n_ctx=settings.n_ctx, n_threads=settings.n_threads)
    say(f"round {n}: pairs judged by {'this round' if better else 'the serving'} judge "
        f"({judge.judge_id.split('@')[0]})")
    params = ChatParams(temperature=max(settings.temperature, 0.7), repetition_penalty=settings.repetition_penalty)
    sampled = on_policy(policy, judge, prompts, config.pair_samples, config.pair_tokens, params, config.pair_margin,
                        config.pair_max_length_ratio, say=lambda m: say(f"round {n}: {m}"))
    if config.pair_length_balance:
        balanced = balance_lengths(sampled, config.pair_length_balance)
        if len(balanced) < len(sampled):
            say(f"round {n}: dropped {len(sampled) - len(balanced)} on-policy pairs whose chosen reply was much "
                f"shorter, so the chosen side is on average at most {config.pair_length_balance}x shorter")
        sampled = balanced
    pairs += sampled
    judge_id = judge.judge_id
    del policy, serving, judge
    write_pairs(root / "pairs.jsonl", pairs)
    return PairsStage(len(pairs), dict(Counter(p.source for p in pairs)), len(prompts), judge_id,
                      config.pair_samples, config.pair_margin, seconds=time.perf_counter() - t)


def dpo_stage(settings: Settings, config: RoundConfig, commit: str | None, n: int, root: Path, pin: Pin,
               sft_rec: SftStage, pairs_rec: PairsStage, judge_rec: JudgeStage, say: Callable[[str], None]) -> DpoStage:
    """DPO on the pairs, from the SFT model (its own reference; the serving model where the round had no SFT),
    exported as the round's candidate; skipped with too few pairs (the SFT model is then the candidate)."""
    from thresher.pairs import read_pairs
    from thresher.train.dpo import train_dpo
    from thresher.train.export import export
    from thresher.train.sft import load_base

    if config.dpo is None or pairs_rec.pairs < config.min_pairs:
        why = pairs_rec.skipped or f"{pairs_rec.pairs} pairs, fewer than {config.min_pairs}"
        say(f"round {n}: no preference training ({why})")
        return DpoStage(skipped=why)
    t = time.perf_counter()
    pairs = read_pairs(root / "pairs.jsonl")
    say(f"round {n}: preference training (DPO) on {len(pairs)} pairs")
    model, tok = load_base(sft_rec.hf)
    result, trained = train_dpo(model, tok, pairs, root / "dpo", config.dpo, title=f"Round {n}: DPO loss")
    accuracy = json.loads((root / "dpo" / "train.json").read_text()).get("reward_accuracy")
    out = root / "dpo" / "export"
    info = {"name": f"thresher chat, round {n}", "kind": "chat", "round": n, "base": pin.base,
            "parent": pin.parent, "data_commit": commit, "examples": sft_rec.examples, "pairs": len(pairs),
            "judge_version": judge_rec.version, "licence": "apache-2.0",
            "metrics": {"sft_final_loss": sft_rec.final_loss, "dpo_final_loss": result.final_loss,
                        "reward_accuracy": accuracy}}
    ex = export(trained, tok, out, Path(pin.base_gguf) if pin.base_gguf else None, info)
    return DpoStage(f"llama.cpp:{ex.gguf}" if ex.gguf else f"hf:{ex.hf_dir}", str(ex.hf_dir), str(out), len(pairs),
                    result.final_loss, accuracy, result.tokens_per_second, seconds=time.perf_counter() - t)


def publish_pairs(repo: Any, root: Path, n: int) -> list[str]:
    """Write the round's on-policy pairs into the dataset as `rounds/<n>-pairs.jsonl`, scrubbed as conversations
    are, each naming the conversation its prompt came from (a takedown removes its lines); the other pairs already
    live in their conversations' files. Returns the paths written."""
    from thresher.curate import scrub_text
    from thresher.pairs import ON_POLICY, read_pairs

    source = root / "pairs.jsonl"
    pairs = [p for p in read_pairs(source) if p.source == ON_POLICY] if source.exists() else []
    if not pairs:
        return []

    def clean(text: str) -> str:
        return scrub_text(text)[0]

    lines = []
    for p in pairs:
        d = p.to_json()
        d["prompt"] = [{"role": m["role"], "content": clean(m["content"])} for m in p.prompt]
        d["chosen"], d["rejected"] = clean(p.chosen), clean(p.rejected)
        lines.append(json.dumps(d, ensure_ascii=False, sort_keys=True) + "\n")
    rel = f"rounds/{n}-pairs.jsonl"
    target = repo.path / rel
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_text("".join(lines), encoding="utf-8")
    tmp.replace(target)
    return [rel]
