"""SFT throughput: thresher's trainer against TRL's SFTTrainer with default settings, same model and data, same run.

    python bench/train.py [--steps 6] [--examples 160]

Each trainer runs in its own child process (so each peak memory is its own) for the same number of optimiser
steps on the shipped Alpaca sample (as chat messages) and the embedded model with the same LoRA adapter. Tokens/s
counts the real (non-padding) tokens each trainer fed, from TRL's own `num_tokens` log; the baseline is TRL with
nothing set but what a CPU machine requires (`use_cpu`). Prints both figures, the ratio (goal >= 1.0x) and each peak
resident memory.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

LORA = dict(r=16, lora_alpha=32, lora_dropout=0.05,
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])


def _conversations(n: int) -> list[list[dict[str, str]]]:
    from thresher.train.data import load_conversations

    return load_conversations("sample", "alpaca")[:n]


def run_ours(steps: int, n: int, out: Path) -> dict:
    from thresher.engines import embedded_model_path
    from thresher.train.sft import TrainConfig, load_base, tokenise_all, train_lora

    model, tok = load_base(str(embedded_model_path()))
    config = TrainConfig(max_steps=steps, save_steps=10_000, lora_r=LORA["r"], lora_alpha=LORA["lora_alpha"])
    rows = tokenise_all(tok, _conversations(n), config.max_length)
    result, _ = train_lora(model, tok, rows, out, config, resume=False)
    return {"tokens_per_second": result.tokens_per_second, "seconds": result.seconds}


def run_trl_default(steps: int, n: int, out: Path) -> dict:
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    from thresher.engines import embedded_model_path
    from thresher.train.sft import load_base

    model, tok = load_base(str(embedded_model_path()))
    data = Dataset.from_list([{"messages": c} for c in _conversations(n)])
    args = SFTConfig(output_dir=str(out), use_cpu=True, max_steps=steps, report_to=[], logging_steps=1,
                     save_strategy="no")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tok,
                             peft_config=LoraConfig(task_type="CAUSAL_LM", **LORA))
        t0 = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - t0
    seen = [h["num_tokens"] for h in trainer.state.log_history if "num_tokens" in h]
    return {"tokens_per_second": seen[-1] / seconds, "seconds": seconds}


def child(which: str, steps: int, n: int, out: Path) -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    fn = run_ours if which == "ours" else run_trl_default
    res = fn(steps, n, out)
    res["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 / 1024
    print("RESULT " + json.dumps(res), flush=True)


def measure(which: str, steps: int, n: int, tmp: Path) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", which, "--steps", str(steps), "--examples", str(n),
                           "--out", str(tmp / which)], capture_output=True, text=True)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    if proc.returncode != 0 or line is None:
        raise SystemExit(f"{which} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return json.loads(line.removeprefix("RESULT "))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--examples", type=int, default=160)
    ap.add_argument("--child", choices=["ours", "trl"])
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.steps, args.examples, args.out)
        return
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        trl = measure("trl", args.steps, args.examples, Path(d))
        ours = measure("ours", args.steps, args.examples, Path(d))
    print(f"{'trainer':<28}{'tokens/s':>10}{'seconds':>10}{'peak RSS GB':>13}")
    for name, r in (("TRL SFTTrainer (defaults)", trl), ("thresher (train_lora)", ours)):
        print(f"{name:<28}{r['tokens_per_second']:>10.1f}{r['seconds']:>10.1f}{r['peak_rss_gb']:>13.2f}")
    print(f"ratio (thresher / TRL defaults): {ours['tokens_per_second'] / trl['tokens_per_second']:.2f}x "
          f"(goal >= 1.0x), {args.steps} steps each")


if __name__ == "__main__":
    main()
