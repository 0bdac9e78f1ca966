"""Train to train: teach the model to rate conversations as fine-tuning data.

Examples come from (a) reviewers' verdicts in the dataset repository and (b) contrast pairs made without labels by
degrading good conversations (thresher.train.contrast). The judge learns to answer the judging prompt of
thresher.judge with `Rating: [[N]]`: the very tokens the one-pass score reads. AUC and accuracy are measured on a
held-out split (whole source conversations and whole degradation wordings that training never saw) with the same
one-pass scoring the server uses, before and after training, and the best acceptance threshold on it is reported.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from thresher.evaluate import JudgeReport, judge_report
from thresher.train.contrast import HELDOUT_TEMPLATES, Source, contrast_rows
from thresher.train.data import JudgeRow, Tokenised, load_rows, sample_path, split_rows
from thresher.train.sft import TrainConfig, TrainError, TrainResult, load_base, tokenise_all, train_lora

log = logging.getLogger("thresher.train")


def sample_sources() -> list[Source]:
    """The shipped Alpaca sample as good one-turn conversations, grouped by topic."""
    from thresher.conversation import from_alpaca

    return [Source(f"sample-{i}", from_alpaca(r), r.get("topic", "")) for i, r in
            enumerate(load_rows(str(sample_path())))]


def sources_from_build(path: Path) -> list[Source]:
    """Approved conversations from `thresher dataset build` output, as good conversations to degrade."""
    out = []
    for line in (path / "data.jsonl").read_text(encoding="utf-8").splitlines():
        if line.strip():
            rec = json.loads(line)
            msgs = rec["messages"]
            if any(m["role"] == "assistant" for m in msgs) and any(m["role"] == "user" for m in msgs):
                out.append(Source(rec["id"], msgs))
    return out


def judge_rows(sources: Sequence[Source], verdict_rows: Sequence[JudgeRow] = (), seed: int = 0) -> list[JudgeRow]:
    return [*contrast_rows(sources, seed), *verdict_rows]


def score_rows(engine: Any, rows: Sequence[JudgeRow], threshold: float, context_tokens: int = 2048,
               progress: str | None = None) -> list[dict]:
    """One-pass scores of each row with the server's own judge, as `judge_report` rows."""
    from tqdm import tqdm

    from thresher.judge import Judge

    judge = Judge(engine, threshold=threshold, rationale="never", context_tokens=context_tokens)
    out = []
    for r in tqdm(rows, desc=progress or "judging", disable=progress is None, unit="conv"):
        j = judge.judge(r.messages)
        out.append({"score": j.score, "accepted": j.accepted(threshold), "label": r.label,
                    "degradation": r.degradation})
    return out


def rating_only(tokenizer: Any, row: Tokenised) -> Tokenised:
    """Learn only the rating's digits: the rest of the answer (`Rating: [[`, `]]`, end of turn) is the same in every
    row, and training on it lowers the loss without teaching the judge to tell conversations apart."""
    mask = [int(m == 1 and tokenizer.decode([i]).strip().isdigit()) for i, m in zip(row.input_ids,
                                                                                     row.assistant_masks, strict=True)]
    return Tokenised(row.input_ids, mask if any(mask) else row.assistant_masks)


def best_threshold(scored: Sequence[dict]) -> tuple[float, float]:
    """The acceptance threshold that classifies the held-out rows best, and its accuracy."""
    cands = sorted({round(r["score"], 2) for r in scored if r.get("score") is not None})
    best = (8.0, 0.0)
    for t in cands:
        acc = sum((r["score"] >= t) == (r["label"] == "good") for r in scored) / len(scored)
        if acc > best[1]:
            best = (t, acc)
    return best


@dataclass
class JudgeTraining:
    before: JudgeReport
    after: JudgeReport
    train: TrainResult
    rows_train: int
    rows_heldout: int
    from_verdicts: int
    calibrated_threshold: float
    calibrated_accuracy: float
    per_degradation: dict[str, dict[str, float | None]]

    def to_json(self) -> dict[str, Any]:
        return {"before": asdict(self.before), "after": asdict(self.after), "train": self.train.to_json(),
                "rows_train": self.rows_train, "rows_heldout": self.rows_heldout, "from_verdicts": self.from_verdicts,
                "calibrated_threshold": self.calibrated_threshold, "calibrated_accuracy": self.calibrated_accuracy,
                "per_degradation": self.per_degradation}


def _by_degradation(scored: Sequence[dict]) -> dict[str, float | None]:
    from thresher.evaluate import auc

    good = [r["score"] for r in scored if r["label"] == "good" and r["score"] is not None]
    kinds = sorted({r["degradation"] for r in scored if r["label"] == "bad"})
    return {k: auc(good, [r["score"] for r in scored if r.get("degradation") == k and r["score"] is not None])
            for k in kinds}


def train_judge(base: str, out: Path, rows: Sequence[JudgeRow], config: TrainConfig | None = None,
                heldout: float = 0.2, threshold: float = 8.0, seed: int = 0, max_heldout: int | None = 80,
                resume: bool = True, max_train: int | None = None) -> tuple[JudgeTraining, Any, Any]:
    """Split, measure the base as a judge, train the LoRA judge, measure again. Returns the report and the trained
    (peft) model and tokenizer for export."""
    import random

    from thresher.engines.transformers import TransformersEngine

    config = config or TrainConfig(max_length=768, epochs=1.0, learning_rate=2e-4)
    train_rows, test_rows = split_rows(rows, heldout, seed, HELDOUT_TEMPLATES)
    if max_heldout and len(test_rows) > max_heldout:
        good = [r for r in test_rows if r.label == "good"]
        bad = [r for r in test_rows if r.label == "bad"]
        rng = random.Random(seed)
        test_rows = rng.sample(good, min(len(good), max_heldout // 2)) + rng.sample(bad, min(len(bad),
                                                                                             max_heldout // 2))
    if max_train and len(train_rows) > max_train:
        # whole pairs, so the sample stays balanced: each source's good row with its degraded copy
        rng = random.Random(seed + 1)
        by_source: dict[str, list[JudgeRow]] = {}
        for r in train_rows:
            by_source.setdefault(r.source, []).append(r)
        keep: list[JudgeRow] = []
        for src in rng.sample(sorted(by_source), len(by_source)):
            if len(keep) + len(by_source[src]) > max_train:
                continue
            keep += by_source[src]
        train_rows = keep
    if not train_rows or not {r.label for r in test_rows} >= {"good", "bad"}:
        raise TrainError(f"too few examples to train and test a judge ({len(rows)} rows)")
    model, tok = load_base(base)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        before_rows = score_rows(TransformersEngine.from_model(model, tok, "base"), test_rows, threshold,
                                 progress="judging held-out rows (before)")
    before = judge_report(before_rows, threshold)
    log.info("judge before training: AUC %s on %d held-out rows", before.auc, len(test_rows))
    examples = [r.judge_example() for r in train_rows]
    tokenised = [rating_only(tok, t) for t in tokenise_all(tok, examples, config.max_length)]
    result, peft_model = train_lora(model, tok, tokenised, out, config, resume=resume, title="Judge training loss")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        after_rows = score_rows(TransformersEngine.from_model(peft_model, tok, "trained"), test_rows, threshold,
                                progress="judging held-out rows (after)")
    after = judge_report(after_rows, threshold)
    t, acc = best_threshold(after_rows)
    report = JudgeTraining(before, after, result, len(train_rows), len(test_rows),
                           sum(r.origin == "reviewer" for r in rows), t, acc,
                           {"before": _by_degradation(before_rows), "after": _by_degradation(after_rows)})
    (out / "judge_eval.json").write_text(json.dumps(report.to_json(), indent=2, default=str))
    return report, peft_model, tok
