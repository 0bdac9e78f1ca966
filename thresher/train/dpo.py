"""Preference training (DPO) of the chat model on pairs: for one prompt, a reply preferred over another.

Pairs come from where the conversations themselves say which reply was better (`thresher.pairs`): a reviewer's
correction over the original, a thumbed-up version over a thumbed-down one, and on-policy samples: for the prompts
of approved conversations, several replies of the model being trained, judged, the best over the worst where the
judge's margin is clear (as Self-Rewarding language models do). TRL's DPOTrainer does the loop with a LoRA adapter;
the reference is the model the adapter starts from (the adapter switched off), so nothing is loaded twice.
Checkpoints and resume work as in SFT (`thresher.train.sft`).
"""

from __future__ import annotations

import json
import os
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from thresher.pairs import Pair
from thresher.train.sft import LORA_TARGETS, TrainError, TrainResult, bf16_available, newest_checkpoint, plot_loss


@dataclass
class DpoConfig:
    beta: float = 0.1  # how far the policy may move from the reference: smaller is further
    max_length: int = 512
    # A few passes at a LoRA learning rate: on a round's two dozen pairs, one pass at 5e-5 left the loss at ln 2
    # (nothing learnt); three at 2e-4 bring it to ~0.2 with every training pair ranked right (measured on the
    # training pairs only).
    epochs: float = 3.0
    max_steps: int = -1
    # The chosen replies' own language-model loss beside the preference loss, at this weight (0: DPO alone), as
    # iterative RPO does: DPO alone lowers the chosen replies' likelihood with the rejected ones', and over two
    # rounds from the embedded model its replies shrank to 0.72x the base's length (bench/rounds.py); the chosen
    # replies are the model's own samples, so this term holds their length and wording.
    sft_weight: float = 1.0
    learning_rate: float = 2e-4
    batch_size: int = 4
    grad_accum: int = 1
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    save_steps: int = 25
    seed: int = 0
    threads: int | None = None


def train_dpo(model: Any, tokenizer: Any, pairs: Sequence[Pair], out: Path, config: DpoConfig, resume: bool = True,
              title: str = "DPO") -> tuple[TrainResult, Any]:
    """Train a LoRA adapter on preference pairs; checkpoints go to `out/checkpoints`, the adapter to
    `out/adapter`. Returns the result (`tokens_per_second` counts chosen and rejected tokens) and the model."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from trl import DPOConfig, DPOTrainer

    if not pairs:
        raise TrainError("no preference pairs to train on")
    if config.threads:
        torch.set_num_threads(config.threads)
    out.mkdir(parents=True, exist_ok=True)
    checkpoints = out / "checkpoints"
    start = newest_checkpoint(checkpoints) if resume else None
    dataset = Dataset.from_list([p.as_row() for p in pairs])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        args = DPOConfig(
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
            beta=config.beta,
            loss_type=["sigmoid", "sft"] if config.sft_weight else ["sigmoid"],
            loss_weights=[1.0, config.sft_weight] if config.sft_weight else None,
            max_length=config.max_length,
            bf16=bf16_available(),
            gradient_checkpointing=False,
            use_cpu=not torch.cuda.is_available(),
            report_to=[],
            dataloader_num_workers=0,
            disable_tqdm=False,
        )
    lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      target_modules=list(LORA_TARGETS), task_type="CAUSAL_LM")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        trainer = DPOTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                             peft_config=lora)
        t0 = time.perf_counter()
        result = trainer.train(resume_from_checkpoint=str(start) if start else None)
        seconds = time.perf_counter() - t0
    adapter = out / "adapter"
    trainer.model.save_pretrained(adapter)
    tokenizer.save_pretrained(adapter)
    history = trainer.state.log_history
    losses = [(h["step"], float(h["loss"])) for h in history if "loss" in h]
    accuracy = [float(h["rewards/accuracies"]) for h in history if "rewards/accuracies" in h]
    tokens = sum(len(tokenizer(tokenizer.apply_chat_template(p.prompt + [{"role": "assistant", "content": reply}],
                                                             tokenize=False), add_special_tokens=False)["input_ids"])
                 for p in pairs for reply in (p.chosen, p.rejected))
    epochs = config.epochs if config.max_steps <= 0 else trainer.state.global_step * config.batch_size / len(pairs)
    res = TrainResult(adapter, trainer.state.global_step, len(pairs), tokens, seconds,
                      tokens * epochs / seconds if seconds > 0 else 0.0, losses[-1][1] if losses else None, losses,
                      resumed_from=str(start) if start else None)
    res.plot = plot_loss(losses, out / "loss.png", title) if losses else None
    (out / "train.json").write_text(json.dumps(res.to_json() | {
        "config": asdict(config), "train_metrics": result.metrics,
        "reward_accuracy": accuracy[-1] if accuracy else None}, indent=2))
    return res, trainer.model
