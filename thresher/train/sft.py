"""LoRA supervised fine-tuning with peft and TRL: the chat model and the judge both train here.

Examples arrive as messages; `thresher.train.data.tokenise` applies the base's own chat template and masks
everything but the assistant's tokens, so the loss is on what the model should say. TRL's SFTTrainer packs the
tokenised rows (best-fit, padding-free) and runs the loop: a progress bar, a checkpoint every `save_steps` steps,
and `resume` continues from the newest checkpoint after a crash or a kill. The loss curve is saved as a PNG.

The embedded GGUF base is loaded through transformers (dequantised to full precision); its quantisation config is
removed before training so the result saves as a plain model.
"""

from __future__ import annotations

import json
import logging
import os
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from thresher.train.data import Tokenised, tokenise

log = logging.getLogger("thresher.train")

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class TrainError(RuntimeError):
    """Training could not start or finish; the message says why."""


@dataclass
class TrainConfig:
    max_length: int = 512
    epochs: float = 1.0
    max_steps: int = -1  # > 0 overrides epochs
    learning_rate: float = 2e-4
    batch_size: int = 8
    grad_accum: int = 1
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    targets: tuple[str, ...] = LORA_TARGETS
    save_steps: int = 25
    seed: int = 0
    # Packing (best-fit, padding-free) needs variable-length attention kernels to be cheap: with flash attention
    # on a GPU it wastes nothing; on a CPU one packed batch becomes one long sequence whose attention is
    # quadratic in the whole batch (20 GB and 3x slower at 8 x 768 tokens). None: pack on CUDA; elsewhere batch
    # rows of similar length together (length-grouped sampling), which pads little.
    packing: bool | None = None
    bf16: bool | None = None  # bfloat16 autocast; None: where the hardware has it (AMX / AVX512-BF16 CPUs, GPUs)
    threads: int | None = None

    def __post_init__(self) -> None:
        small = [name for name in ("batch_size", "grad_accum", "lora_r", "save_steps") if getattr(self, name) < 1]
        if small:
            raise ValueError(f"{', '.join(small)} must be at least 1")


@dataclass
class TrainResult:
    adapter: Path  # the LoRA adapter and tokenizer
    steps: int
    examples: int
    tokens: int  # tokens per epoch (packed rows)
    seconds: float
    tokens_per_second: float
    final_loss: float | None
    losses: list[tuple[int, float]] = field(default_factory=list)
    plot: Path | None = None
    resumed_from: str | None = None

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["adapter"], d["plot"] = str(self.adapter), str(self.plot) if self.plot else None
        return d


def release_memory() -> None:
    """Give back what a finished training stage held (trainer objects live in reference cycles) and, on glibc, return
    freed heap pages to the system, so the next stage of a round does not start on top of the last one's peak."""
    import contextlib
    import ctypes
    import gc

    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to trim
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def bf16_available() -> bool:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def dequantised_cache(gguf: Path) -> Path:
    """Where a GGUF's dequantised weights are kept, so only the first load pays for dequantising (about 12 s for
    the embedded model; loading the cache takes about one). Keyed by the file's size and modification time;
    `THRESHER_CACHE_DIR` moves it."""
    st = gguf.stat()
    root = Path(os.environ.get("THRESHER_CACHE_DIR") or Path.home() / ".cache" / "thresher")
    return root / "dequantised" / f"{gguf.stem}-{st.st_size}-{int(st.st_mtime)}"


def _save_cache(model: Any, tok: Any, where: Path) -> None:
    import shutil
    import tempfile

    tmp = None
    try:
        where.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=where.parent, prefix=".partial-"))
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        tmp.rename(where)  # whole or not at all: a crash leaves only a .partial- directory
    except OSError as e:  # a read-only home is no reason to fail training
        log.warning("could not cache the dequantised model at %s: %s", where, e)
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def load_base(base: str) -> tuple[Any, Any]:
    """(model, tokenizer) for a GGUF file, a local HF directory or a hub name, in full precision, ready to train."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(base)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if base.endswith(".gguf"):
                if not path.is_file():
                    raise TrainError(f"no GGUF file at {path}")
                cached = dequantised_cache(path)
                if (cached / "config.json").exists():
                    tok = AutoTokenizer.from_pretrained(cached)
                    model = AutoModelForCausalLM.from_pretrained(cached)
                else:
                    tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
                    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name)
                    if getattr(model, "hf_quantizer", None) is not None:
                        model.hf_quantizer.remove_quantization_config(model)
                    _save_cache(model, tok, cached)
            else:
                tok = AutoTokenizer.from_pretrained(base)
                model = AutoModelForCausalLM.from_pretrained(base)
    except TrainError:
        raise
    except Exception as e:  # transformers raises many kinds; the user needs the reason
        raise TrainError(f"could not load the base model {base!r}: {e}") from e
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return model, tok


def tokenise_all(tokenizer: Any, conversations: Sequence[list[dict[str, str]]], max_length: int) -> list[Tokenised]:
    out = [t for c in conversations if (t := tokenise(tokenizer, c, max_length)) is not None]
    if not out:
        raise TrainError(f"no example fits in {max_length} tokens with an assistant turn to learn from")
    return out


def newest_checkpoint(checkpoints: Path) -> Path | None:
    found = [p for p in checkpoints.glob("checkpoint-*") if (p / "trainer_state.json").is_file()]
    return max(found, key=lambda p: int(p.name.rsplit("-", 1)[1]), default=None)


def train_lora(model: Any, tokenizer: Any, rows: Sequence[Tokenised], out: Path, config: TrainConfig,
               resume: bool = True, title: str = "LoRA fine-tuning") -> tuple[TrainResult, Any]:
    """Train a LoRA adapter on tokenised rows; checkpoints go to `out/checkpoints`, the adapter to `out/adapter`.
    Returns the result and the trained (peft) model."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    if config.threads:
        torch.set_num_threads(config.threads)
    out.mkdir(parents=True, exist_ok=True)
    checkpoints = out / "checkpoints"
    start = newest_checkpoint(checkpoints) if resume else None
    dataset = Dataset.from_list([r.as_row() for r in rows])
    packing = torch.cuda.is_available() if config.packing is None else config.packing
    with warnings.catch_warnings():  # transformers 5 renames gradient_checkpointing (deprecated, still honoured)
        warnings.simplefilter("ignore", FutureWarning)
        args = SFTConfig(
            output_dir=str(checkpoints),
            per_device_train_batch_size=config.batch_size,
            gradient_accumulation_steps=config.grad_accum,
            learning_rate=config.learning_rate,
            num_train_epochs=config.epochs,
            max_steps=config.max_steps,
            lr_scheduler_type="cosine",
            warmup_steps=0.05,
            logging_steps=1,
            save_steps=config.save_steps,
            save_total_limit=2,
            seed=config.seed,
            data_seed=config.seed,
            max_length=config.max_length,
            packing=packing,
            train_sampling_strategy="random" if packing else "group_by_length",
            bf16=bf16_available() if config.bf16 is None else config.bf16,
            gradient_checkpointing=False,  # a 135M model's activations fit; recomputing them costs a third
            use_cpu=not torch.cuda.is_available(),
            report_to=[],
            dataloader_num_workers=0,
            disable_tqdm=False,
            save_only_model=False,
        )
    lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      target_modules=list(config.targets), task_type="CAUSAL_LM")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                             peft_config=lora)
        t0 = time.perf_counter()
        result = trainer.train(resume_from_checkpoint=str(start) if start else None)
        seconds = time.perf_counter() - t0
    adapter = out / "adapter"
    trainer.model.save_pretrained(adapter)
    tokenizer.save_pretrained(adapter)
    history = trainer.state.log_history
    losses = [(h["step"], float(h["loss"])) for h in history if "loss" in h]
    tokens = sum(len(r.input_ids) for r in rows)
    steps = trainer.state.global_step
    seen = [float(h["num_tokens"]) for h in history if "num_tokens" in h]
    # TRL counts every token it feeds (padding included when not packing); the rows' own tokens are what was learnt
    before = _tokens_seen_at(start) if start else 0.0
    tps = (seen[-1] - before) / seconds if seen and seconds > 0 else 0.0
    res = TrainResult(adapter, steps, len(rows), tokens, seconds, tps, losses[-1][1] if losses else None, losses,
                      resumed_from=str(start) if start else None)
    res.plot = plot_loss(losses, out / "loss.png", title) if losses else None
    (out / "train.json").write_text(json.dumps(res.to_json() | {"config": asdict(config),
                                                                "train_metrics": result.metrics}, indent=2))
    return res, trainer.model


def _tokens_seen_at(checkpoint: Path) -> float:
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    seen = [float(h["num_tokens"]) for h in state.get("log_history", []) if "num_tokens" in h]
    return seen[-1] if seen else 0.0


def heldout_loss(model: Any, tokenizer: Any, conversations: Sequence[list[dict[str, str]]],
                 max_length: int = 512) -> float | None:
    """Mean loss per assistant token over conversations no training saw; None without any."""
    import torch

    total, count = 0.0, 0
    model.eval()
    with torch.inference_mode():
        for messages in conversations:
            t = tokenise(tokenizer, messages, max_length)
            if t is None:
                continue
            ids = torch.tensor([t.input_ids])
            labels = torch.tensor([[i if m else -100 for i, m in zip(t.input_ids, t.assistant_masks, strict=True)]])
            out = model(input_ids=ids, labels=labels)
            n = int((labels[:, 1:] != -100).sum())
            total += float(out.loss) * n
            count += n
    return total / count if count else None


def plot_loss(losses: Sequence[tuple[int, float]], path: Path, title: str) -> Path:
    from thresher.plots import figure

    steps, values = zip(*losses, strict=True)
    with figure(path) as ax:
        ax.plot(steps, values, color="#2563eb", linewidth=1, alpha=0.5, label="loss")
        window = max(1, len(values) // 10)
        if window > 1:
            smooth = [sum(values[max(0, i - window + 1): i + 1]) / len(values[max(0, i - window + 1): i + 1])
                      for i in range(len(values))]
            ax.plot(steps, smooth, color="#1e3a8a", linewidth=2, label=f"mean of {window}")
        ax.set_xlabel("step")
        ax.set_ylabel("loss (assistant tokens)")
        ax.set_title(title)
        ax.legend()
    return path
