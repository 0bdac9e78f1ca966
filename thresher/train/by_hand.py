"""Training by hand: `thresher train sft` and `thresher train dpo`, each one call from data to an exported model.

A round (`train/round.py`) composes the same parts with its own data, gates and registry; these are for an operator
who trains on a file of their own. Both resume from the newest checkpoint in `out` and say what they did, line by
line, through `say`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from thresher.train.dpo import DpoConfig
from thresher.train.sft import TrainConfig, TrainError, TrainResult


def base_weights(base: str | None, model: str) -> tuple[str, Path | None]:
    """What to train from: `base`, or the configured `model` (the embedded GGUF by default), as transformers'
    spec and the GGUF whose metadata an export copies (None when there is none)."""
    from thresher.engines import EngineError, local_weights

    try:
        return local_weights(base or model)
    except EngineError as e:
        raise TrainError(f"{e}: pass --base FILE.gguf, a model directory or a hub name") from None


def sft_by_hand(data: str, fmt: str, base: str, out: Path, config: TrainConfig, *, gguf: Path | None = None,
                limit: int | None = None, export: bool = True, say: Callable[[str], None] = print) -> TrainResult:
    """LoRA SFT of `base` on the conversations of `data` (`fmt`: alpaca, sharegpt or messages; at most `limit`),
    then, with `export`, the merged model exported to `out/export` (a GGUF too when `gguf`, the base's, is given).
    DataError or TrainError says what stopped it."""
    from thresher.train.data import load_conversations
    from thresher.train.sft import load_base, tokenise_all, train_lora

    convs = load_conversations(data, fmt)[:limit]
    model, tok = load_base(base)
    rows = tokenise_all(tok, convs, config.max_length)
    say(f"{len(rows)} examples ({sum(len(r.input_ids) for r in rows)} tokens) from {data}; base {base}")
    result, trained = train_lora(model, tok, rows, out, config)
    say(f"trained {result.steps} steps in {result.seconds:.0f} s ({result.tokens_per_second:.0f} tokens/s); "
        f"final loss {result.final_loss}")
    _finish(result, trained, tok, out, gguf, export, {"name": "thresher SFT", "base": base, "examples": len(rows)},
            say)
    return result


def dpo_by_hand(pairs: Path, base: str, out: Path, config: DpoConfig, *, gguf: Path | None = None,
                export: bool = True, say: Callable[[str], None] = print) -> TrainResult:
    """DPO (LoRA) of `base` on the preference pairs at `pairs` (a pairs .jsonl or a dataset build), `base` being
    its own reference; exported as `sft_by_hand` does. PairError or TrainError says what stopped it."""
    from thresher.pairs import load_pairs
    from thresher.train.dpo import train_dpo
    from thresher.train.sft import load_base

    found = load_pairs(pairs)
    say(f"{len(found)} pairs from {pairs}; base {base}")
    model, tok = load_base(base)
    result, trained = train_dpo(model, tok, found, out, config)
    say(f"trained {result.steps} steps in {result.seconds:.0f} s; final loss {result.final_loss}")
    _finish(result, trained, tok, out, gguf, export, {"name": "thresher DPO", "base": base, "pairs": len(found)}, say)
    return result


def _finish(result: TrainResult, trained: Any, tok: Any, out: Path, gguf: Path | None, export: bool,
            card: dict[str, Any], say: Callable[[str], None]) -> None:
    """Say where the adapter and its loss curve are; with `export`, merge and export the model, its card marked as
    trained by hand, and say where."""
    from thresher.train.export import export as export_model

    say(f"adapter: {result.adapter}; loss curve: {result.plot}")
    if export:
        ex = export_model(trained, tok, out / "export", gguf, {**card, "kind": "chat", "licence": "apache-2.0",
                                                               "metrics": {"final_loss": result.final_loss}})
        say(f"exported: {ex.hf_dir}" + (f", {ex.gguf}" if ex.gguf else f" (no GGUF: {ex.note})"))
