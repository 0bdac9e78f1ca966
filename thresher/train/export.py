"""Export a trained model: merge the LoRA adapter, save HF safetensors and tokenizer, write a GGUF that the llama.cpp
engine serves, and a model card.

The GGUF is written with the `gguf` package, offline: the base GGUF file's metadata (architecture, tokenizer, chat
template) is copied as is, and each merged weight goes under llama.cpp's tensor name, with the query and key
projections permuted back into llama.cpp's rotary layout (transformers undoes that permutation when it loads a
GGUF). It is written in F16 and then quantised to Q8_0 by llama.cpp itself: on a CPU Q8_0 decodes and reads prompts
faster than the shipped Q4_1 and loses less. Only the llama architecture (SmolLM2, Llama, Mistral-style) is mapped;
other bases still export HF safetensors and are served through the transformers engine.
"""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from thresher.train.state import Evaluation

log = logging.getLogger("thresher.train")

_NAMES = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
          "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
          "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}


class ExportError(RuntimeError):
    pass


@dataclass
class Exported:
    hf_dir: Path
    gguf: Path | None
    card: Path
    note: str = ""  # why there is no GGUF, when there is none


def merge(model: Any) -> Any:
    """The plain model with its LoRA adapter folded into the weights (a model without one is returned as is)."""
    if hasattr(model, "merge_and_unload"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return model.merge_and_unload()
    return model


def _permute(w: Any, n_head: int) -> Any:
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_name(hf_name: str) -> str | None:
    """llama.cpp's name for a llama-architecture weight; None for one it does not store (a tied output head)."""
    name = hf_name.removeprefix("model.")
    if name == "embed_tokens.weight":
        return "token_embd.weight"
    if name == "norm.weight":
        return "output_norm.weight"
    if name == "lm_head.weight":
        return "output.weight"
    parts = name.split(".", 2)
    if parts[0] != "layers" or len(parts) < 3:
        raise ExportError(f"no GGUF name for weight {hf_name!r}")
    module = parts[2].removesuffix(".weight")
    if module not in _NAMES:
        raise ExportError(f"no GGUF name for weight {hf_name!r}")
    return f"blk.{parts[1]}.{_NAMES[module]}.weight"


def write_gguf(model: Any, base_gguf: Path, out: Path, quantise: str = "Q8_0") -> Path:
    """`model` (merged, llama architecture) as a GGUF with `base_gguf`'s metadata; F16, then quantised."""
    import numpy as np
    from gguf import GGUFReader, GGUFValueType, GGUFWriter

    reader = GGUFReader(base_gguf)
    arch = reader.fields["general.architecture"].contents()
    if arch != "llama" or getattr(model.config, "model_type", "") not in ("llama", "mistral"):
        raise ExportError(f"GGUF export maps the llama architecture only (this model is {arch!r})")
    f16 = out.with_suffix(".f16.gguf")
    writer = GGUFWriter(str(f16), arch=arch)
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        if key == "general.file_type":
            writer.add_file_type(1)  # F16
            continue
        vtype = field.types[0]
        writer.add_key_value(key, field.contents(), vtype,
                             sub_type=field.types[-1] if vtype == GGUFValueType.ARRAY else None)
    cfg = model.config
    tied = bool(getattr(cfg, "tie_word_embeddings", False))
    for hf_name, tensor in model.state_dict().items():
        if tied and hf_name == "lm_head.weight":
            continue
        name = gguf_name(hf_name)
        w = tensor.detach().float().cpu().numpy()
        if ".attn_q." in name:
            w = _permute(w, cfg.num_attention_heads)
        elif ".attn_k." in name:
            w = _permute(w, cfg.num_key_value_heads)
        writer.add_tensor(name, w.astype(np.float32 if w.ndim == 1 else np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    if quantise == "F16":
        f16.replace(out)
        return out
    quantise_gguf(f16, out, quantise)
    f16.unlink()
    return out


def quantise_gguf(src: Path, dst: Path, kind: str = "Q8_0") -> None:
    import llama_cpp

    ftypes = {"Q8_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0, "Q4_1": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_1,
              "F16": llama_cpp.LLAMA_FTYPE_MOSTLY_F16}
    if kind not in ftypes:
        raise ExportError(f"unknown quantisation {kind!r}; use one of {', '.join(ftypes)}")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftypes[kind]
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), params)
    if rc != 0:
        raise ExportError(f"llama.cpp could not quantise {src} ({rc})")


def model_card(info: dict[str, Any]) -> str:
    """A Hugging Face model card: YAML header, then what the model is and how it was made."""
    metrics = info.get("metrics") or {}
    lines = [
        "---",
        f"license: {info.get('licence', 'apache-2.0').lower()}",
        f"base_model: {info.get('base', 'unknown')}",
        "library_name: transformers",
        f"tags: [thresher, lora, sft{', dpo' if info.get('pairs') else ''}]",
        "---",
        "",
        f"# {info['name']}",
        "",
        f"A {info.get('kind', 'chat')} model made by thresher, round {info.get('round', '-')}: "
        "LoRA fine-tuning of the base on conversations that people had with the previous model, that the judge "
        "selected and that reviewers approved in git"
        + (", then preference training (DPO) on pairs of its own replies judged better and worse." if info.get("pairs")
           else "."),
        "",
        "| | |",
        "|---|---|",
        f"| base | `{info.get('base', '-')}` |",
        f"| parent version | `{info.get('parent', '-')}` |",
        f"| dataset commit | `{info.get('data_commit', '-')}` |",
        f"| training examples | {info.get('examples', '-')} |",
        *([f"| preference pairs | {info['pairs']} |"] if info.get("pairs") else []),
        f"| judge version | `{info.get('judge_version', '-')}` |",
        f"| licence | {info.get('licence', '-')} |",
        f"| made | {info.get('created', datetime.now(UTC).isoformat(timespec='seconds'))} |",
        "",
        "## Metrics",
        "",
        *([f"- {k}: {v}" for k, v in sorted(metrics.items())] or ["- none recorded"]),
        "",
        "## Files",
        "",
        "- `hf/`: merged weights (safetensors) and tokenizer, for transformers and vLLM",
        "- `model.gguf`: the same weights for llama.cpp (Q8_0)" if info.get("gguf") else "- no GGUF (see note)",
        "",
    ]
    if info.get("note"):
        lines += [f"Note: {info['note']}", ""]
    return "\n".join(lines)


def add_evaluation(card: Path, ev: Evaluation) -> None:
    """Append a round's evaluation (the candidate against the serving model) to a model card, once."""
    from thresher.evidence import win_rate_words

    text = card.read_text(encoding="utf-8")
    if "\n## Evaluation\n" in text:
        return
    new, old = ev.replies_new, ev.replies_serving

    def rate(name: str) -> str:
        return f"{old[name]:.0%} -> {new[name]:.0%}" if name in new and name in old else "-"

    lines = ["## Evaluation", "",
             f"Against the model serving before it, on {ev.prompts} held-out real questions, judged by the frozen "
             f"evaluation judge `{ev.eval_judge or '-'}` (not the judge this round trained):", "",
             f"- length-controlled win rate: {win_rate_words(ev.lc_win_rate, ev.prompts)}",
             f"- win rate: {win_rate_words(ev.win_rate, ev.prompts)}",
             f"- replies that loop (before -> this model): {rate('loop_rate')}; cut off at the reply length: "
             f"{rate('cutoff_rate')}",
             f"- mean reply length: {old.get('mean_words', 0):.0f} -> {new.get('mean_words', 0):.0f} words"]
    base = ev.replies_base
    if {"loop_rate", "cutoff_rate", "mean_words"} <= base.keys() & new.keys():
        lines.append(f"- against the base model: loops {base['loop_rate']:.0%} -> {new['loop_rate']:.0%}, cut off "
                     f"{base['cutoff_rate']:.0%} -> {new['cutoff_rate']:.0%}, mean length "
                     f"{base['mean_words']:.0f} -> {new['mean_words']:.0f} words")
    if ev.loss_ratio is not None:
        lines.append(f"- loss on {ev.heldout_conversations} held-out approved conversations: "
                     f"{ev.loss_ratio:.3f}x the serving model's")
    card.write_text(text.rstrip("\n") + "\n\n" + "\n".join(lines) + "\n", encoding="utf-8")


def export(model: Any, tokenizer: Any, out: Path, base_gguf: Path | None, info: dict[str, Any],
           quantise: str = "Q8_0") -> Exported:
    """Merge, save HF safetensors + tokenizer under `out/hf`, a GGUF at `out/model.gguf` (when the base's GGUF
    metadata is at hand), and `out/README.md` as the model card."""
    out.mkdir(parents=True, exist_ok=True)
    merged = merge(model)
    hf_dir = out / "hf"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        merged.save_pretrained(hf_dir, safe_serialization=True)
        tokenizer.save_pretrained(hf_dir)
    gguf, note = None, ""
    if base_gguf is None:
        note = "the base is not a GGUF file, so there is no metadata to write one from; serve hf/ instead"
    else:
        try:
            gguf = write_gguf(merged, base_gguf, out / "model.gguf", quantise)
        except ExportError as e:
            note = str(e)
    if note:
        log.warning("no GGUF written: %s", note)
    card = out / "README.md"
    card.write_text(model_card(info | {"gguf": gguf is not None, "note": note}), encoding="utf-8")
    (out / "export.json").write_text(json.dumps({"hf": str(hf_dir), "gguf": str(gguf) if gguf else None,
                                                 "note": note}, indent=2))
    return Exported(hf_dir, gguf, card, note)
