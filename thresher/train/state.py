"""What a round's stages hand one another: a typed record per stage, kept in `rounds/<n>/state.json` by
`RoundState`, and the round's own record (`rounds/<n>.json` in the dataset) made of them.

The JSON keeps the records' field names, so the dashboard, `thresher status` and older state files read the same;
a field added since a state file was written takes its default.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

from thresher.evaluate import GateResult


@dataclass
class Pin:
    """What a round is pinned to when it starts (its first stage, "pinned"): the reviewed data's commit and the
    models it starts from. Every later stage reads these, never the registry's current state, so a round resumed
    after a crash (or a promotion meanwhile) trains and compares against the same things."""

    commit: str | None  # the dataset commit whose reviewed data it trains on (None: an empty dataset)
    base: str  # what the chat model's training loads (a promoted version's weights, or the configured model)
    base_gguf: str | None  # the GGUF whose metadata an export reuses
    parent: str | None  # the promoted chat version it starts from (None: the configured model)
    serving: str  # the engine spec serving chat when it started
    serving_judge: str  # the promoted judge version's spec (without one the chat model's, unused: then the round
    # judges as the server does, `preference.serving_judge`)
    serving_judge_id: str | None  # the promoted judge version, if any

    @property
    def promoted_judge(self) -> str | None:
        """The promoted judge version's spec, if one was promoted when the round started."""
        return self.serving_judge if self.serving_judge_id else None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Pin:
        return cls(commit=data.get("commit"), base=data["base"], base_gguf=data.get("base_gguf"),
                   parent=data.get("parent"), serving=data["serving"],
                   serving_judge=data.get("serving_judge") or data["serving"],
                   serving_judge_id=data.get("serving_judge_id"))


def _typed(cls: type, data: dict[str, Any]) -> Any:
    """A stage's record read back: the fields it has (a field added since takes its default)."""
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in names})


@dataclass
class JudgeStage:
    """The round's judge: the head fitted on the serving model, measured against the serving judge."""

    version: str
    before_auc: float | None = None
    after_auc: float | None = None
    gain: float = 0.0
    reviewer_agreement_before: float | None = None
    reviewer_agreement_after: float | None = None
    by_family: dict[str, Any] = field(default_factory=dict)
    by_family_before: dict[str, Any] | None = None
    rows_train: int = 0
    rows_heldout: int = 0
    from_verdicts: int = 0
    calibrated_threshold: float | None = None
    seconds: float = 0.0


@dataclass
class SftStage:
    """The chat model fine-tuned on the approved conversations, exported: the round's first candidate; or, with
    `skipped`, why there was no SFT (then `spec` and `hf` are the serving model's, which preference training
    starts from)."""

    spec: str
    hf: str
    out: str
    examples: int
    tokens_per_second: float
    final_loss: float | None
    seconds: float = 0.0
    skipped: str | None = None


@dataclass
class ChatStage:
    """The round's candidate chat version as registered: the DPO model, or the SFT one without preference data."""

    version: str
    spec: str
    hf: str
    examples: int
    tokens_per_second: float
    final_loss: float | None
    stage: str  # "dpo" or "sft"
    pairs: int = 0
    dpo_final_loss: float | None = None
    reward_accuracy: float | None = None


@dataclass
class PairsStage:
    """The round's preference pairs (in `pairs.jsonl` beside its state): how many, from what; or why none."""

    pairs: int = 0
    by_source: dict[str, int] = field(default_factory=dict)
    prompts: int = 0
    judge: str | None = None  # the judge that chose the on-policy pairs
    samples: int = 0
    margin: float | None = None
    skipped: str | None = None
    seconds: float = 0.0


@dataclass
class DpoStage:
    """The DPO model exported as the round's candidate; or, with `skipped`, why there was none."""

    spec: str | None = None
    hf: str | None = None
    out: str | None = None
    pairs: int = 0
    final_loss: float | None = None
    reward_accuracy: float | None = None
    tokens_per_second: float | None = None
    skipped: str | None = None
    seconds: float = 0.0


@dataclass
class DataStage:
    """The approved conversations at the pinned commit, split into training and held-out by a hash of the id."""

    approved: int = 0
    train: int = 0
    heldout: int = 0


@dataclass
class Evaluation:
    """The candidate against the serving model on held-out real questions: the frozen evaluation judge's win rate
    (and with the length difference taken out), reply rates that need no judge (`evaluate.reply_rates`), and the
    loss on held-out approved conversations."""

    win_rate: float | None = None
    lc_win_rate: float | None = None
    prompts: int = 0
    ties: int = 0
    position_bias: float | None = None
    eval_judge: str | None = None
    judge_mean_new: float | None = None
    judge_mean_serving: float | None = None
    replies_new: dict[str, float] = field(default_factory=dict)
    replies_serving: dict[str, float] = field(default_factory=dict)
    # The configured (base) model's rates on the same prompts, where the serving model is a promoted one: the gate
    # holds a candidate to the base too, or a drift each round lets through (0.9x the length, then 0.9x of that)
    # compounds. Empty where the serving model is the base (its figures are `replies_serving`'s).
    replies_base: dict[str, float] = field(default_factory=dict)
    heldout_loss_new: float | None = None
    heldout_loss_serving: float | None = None
    loss_ratio: float | None = None
    heldout_conversations: int = 0
    seconds: float = 0.0

    def increases(self) -> dict[str, float]:
        """How much more often the new model's replies loop or are cut off than the serving model's, and how far
        its mean length is from the serving model's (|new / serving - 1|); the same against the base model as
        `base_…` where it was measured apart; records from before these were measured have none."""
        return _increases(self.replies_new, self.replies_serving) | {
            f"base_{k}": v for k, v in _increases(self.replies_new, self.replies_base).items()}


def _increases(new: dict[str, float], old: dict[str, float]) -> dict[str, float]:
    out = {f"{name}_increase": new[f"{name}_rate"] - old[f"{name}_rate"] for name in ("loop", "cutoff")
           if f"{name}_rate" in new and f"{name}_rate" in old}
    if new.get("mean_words") is not None and old.get("mean_words"):
        out["length_change"] = abs(new["mean_words"] / old["mean_words"] - 1)
    return out


@dataclass
class GateStage:
    """The gate's verdict on each candidate."""

    chat: GateResult
    judge: GateResult

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> GateStage:
        return cls(chat=_typed(GateResult, data["chat"]), judge=_typed(GateResult, data["judge"]))


@dataclass
class Published:
    """`rounds/<n>.json` committed to the dataset (and pushed, where there is a remote)."""

    pushed: bool = False


# How each typed stage's record is read back
_TYPED: dict[str, Callable[[dict[str, Any]], Any]] = {
    "pinned": Pin.from_json, "gated": GateStage.from_json, **{stage: functools.partial(_typed, cls) for stage, cls in (
        ("data", DataStage), ("judge", JudgeStage), ("sft", SftStage), ("pairs", PairsStage), ("dpo", DpoStage),
        ("chat", ChatStage), ("evaluated", Evaluation), ("published", Published))}}


class RoundState:
    """`rounds/<n>/state.json`: the stages done and what each produced (typed where `_TYPED` says)."""

    def __init__(self, root: Path) -> None:
        """Raises OSError or ValueError (JSON's too) for a file that is not a round's state."""
        self.root = root
        self.file = root / "state.json"
        self.data: dict[str, Any] = json.loads(self.file.read_text()) if self.file.exists() else {"stages": {}}
        if not isinstance(self.data, dict) or not isinstance(self.data.get("stages"), dict):
            raise ValueError(f"{self.file} is not a round's state (no stages)")

    def done(self, stage: str) -> bool:
        return stage in self.data["stages"]

    def get(self, stage: str) -> Any:
        data = self.data["stages"].get(stage)
        read = _TYPED.get(stage)
        return data if data is None or read is None else read(data)

    def pin(self) -> Pin:
        """The "pinned" stage's record."""
        return self.get("pinned")

    def mark(self, stage: str, result: Any) -> None:
        self.data["stages"][stage] = asdict(result) if is_dataclass(result) else result
        tmp = self.file.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=2, default=str))
        tmp.replace(self.file)

    def raw(self, stage: str) -> dict[str, Any]:
        """A stage's record as written, untyped ({} if not done): for readers that show what is there, such as
        the dashboard, and must not fail on a record of an older or partial shape."""
        data = self.data["stages"].get(stage)
        return data if isinstance(data, dict) else {}


@dataclass
class RoundRecord:
    """A finished round, as `rounds/<n>.json` in the dataset tells it (and `run_round` returns it)."""

    round: int
    commit: str | None
    counts: DataStage
    base: str
    parent: str | None
    judge: JudgeStage
    chat: ChatStage
    pairs: PairsStage
    evaluation: Evaluation
    gate: GateStage
    promoted: list[str]
    seconds: float

    def to_json(self) -> dict[str, Any]:
        """The published record: each stage's figures, less what only this machine can use (paths, engine specs,
        timings of single stages)."""
        def less(rec: Any, *names: str) -> dict[str, Any]:
            return {k: v for k, v in asdict(rec).items() if k not in names}

        return {"round": self.round, "commit": self.commit, "counts": asdict(self.counts), "base": self.base,
                "parent": self.parent, "judge": less(self.judge, "seconds"),
                "chat": less(self.chat, "spec", "hf"), "pairs": less(self.pairs, "judge", "skipped", "seconds"),
                "evaluation": asdict(self.evaluation), "gate": asdict(self.gate), "promoted": self.promoted,
                "seconds": self.seconds}
