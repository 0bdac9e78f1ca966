"""Training: `train sft`, `train dpo`, `train judge`, and a whole `round`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from thresher.cli import _settings, app, failing

train_app = typer.Typer(help="Fine-tune the chat model and the judge (LoRA, on CPU or GPU).", no_args_is_help=True)


app.add_typer(train_app, name="train")


@train_app.command("sft")
def train_sft(
    data: Annotated[str, typer.Option(help="A .json/.jsonl file, a `thresher dataset build` directory, a hub "
                                           "dataset name, or `sample` (the Alpaca sample shipped with thresher).")],
    fmt: Annotated[str, typer.Option("--format", help="alpaca, sharegpt or messages.")] = "alpaca",
    base: Annotated[str | None, typer.Option(help="GGUF file, model directory or hub name [default: the "
                                                  "configured model].")] = None,
    out: Annotated[Path, typer.Option(help="Where checkpoints, the adapter, the loss plot and the export go.")] = Path(
        "thresher-data/train/sft"),
    max_length: Annotated[int, typer.Option(help="Tokens per packed row.")] = 512,
    epochs: Annotated[float, typer.Option(help="Passes over the data (a fraction stops part-way).")] = 1.0,
    max_steps: Annotated[int, typer.Option(help="Stop after this many steps (> 0 overrides --epochs).")] = -1,
    lr: Annotated[float, typer.Option(help="Learning rate.")] = 2e-4,
    batch_size: Annotated[int, typer.Option(help="Rows per training step.")] = 8,
    lora_r: Annotated[int, typer.Option(help="LoRA rank (alpha is twice this).")] = 16,
    save_steps: Annotated[int, typer.Option(help="Checkpoint every this many steps.")] = 25,
    limit: Annotated[int | None, typer.Option(help="Use only the first N examples.")] = None,
    export: Annotated[bool, typer.Option(help="Merge and export HF safetensors, GGUF and a model card.")] = True,
) -> None:
    """LoRA fine-tuning of a chat model on instruction data (loss on the assistant's tokens only, packed rows).

    Example: `thresher train sft --data sample --format alpaca --max-steps 20`

    Run it again after a crash or Ctrl-C: it continues from the newest checkpoint in --out.
    """
    from thresher.train.by_hand import base_weights, sft_by_hand
    from thresher.train.data import DataError
    from thresher.train.sft import TrainConfig, TrainError

    with failing(ValueError, code=2):
        config = TrainConfig(max_length=max_length, epochs=epochs, max_steps=max_steps, learning_rate=lr,
                             batch_size=batch_size, lora_r=lora_r, lora_alpha=2 * lora_r, save_steps=save_steps)
    with failing(TrainError, code=2):  # no such base
        spec, gguf = base_weights(base, _settings().model)
    with failing(DataError, TrainError):
        sft_by_hand(data, fmt, spec, out, config, gguf=gguf, limit=limit, export=export, say=typer.echo)


@train_app.command("dpo")
def train_dpo_cmd(
    pairs: Annotated[Path, typer.Option(help="Preference pairs: a .jsonl of pairs (what a round writes to "
                                             "rounds/N/pairs.jsonl) or a `thresher dataset build` directory "
                                             "(the pairs its conversations carry).")],
    base: Annotated[str | None, typer.Option(help="GGUF file, model directory or hub name: the model trained and "
                                                  "its own reference [default: the configured model].")] = None,
    out: Annotated[Path, typer.Option(help="Where checkpoints, the adapter, the loss plot and the export go.")] = Path(
        "thresher-data/train/dpo"),
    beta: Annotated[float, typer.Option(help="How far the model may move from the reference (smaller: further).")
                    ] = 0.1,
    max_length: Annotated[int, typer.Option(help="Tokens per prompt and reply.")] = 512,
    epochs: Annotated[float, typer.Option(help="Passes over the pairs.")] = 3.0,
    max_steps: Annotated[int, typer.Option(help="Stop after this many steps (> 0 overrides --epochs).")] = -1,
    lr: Annotated[float, typer.Option(help="Learning rate.")] = 2e-4,
    batch_size: Annotated[int, typer.Option(help="Pairs per training step.")] = 4,
    export: Annotated[bool, typer.Option(help="Merge and export HF safetensors, GGUF and a model card.")] = True,
) -> None:
    """Preference fine-tuning (DPO, LoRA) of a chat model on pairs: a reply preferred over another for a prompt.

    Example: `thresher train dpo --pairs thresher-data/rounds/1/pairs.jsonl --max-steps 20`

    Run it again after a crash or Ctrl-C: it continues from the newest checkpoint in --out.
    """
    from thresher.pairs import PairError
    from thresher.train.by_hand import base_weights, dpo_by_hand
    from thresher.train.dpo import DpoConfig
    from thresher.train.sft import TrainError

    config = DpoConfig(beta=beta, max_length=max_length, epochs=epochs, max_steps=max_steps, learning_rate=lr,
                       batch_size=batch_size)
    with failing(TrainError, code=2):  # no such base
        spec, gguf = base_weights(base, _settings().model)
    with failing(PairError, TrainError):
        dpo_by_hand(pairs, spec, out, config, gguf=gguf, export=export, say=typer.echo)


@train_app.command("judge")
def train_judge_cmd(
    base: Annotated[str | None, typer.Option(help="The model whose hidden states the judge reads: a GGUF file or "
                                                  "an engine spec [default: the configured model].")] = None,
    out: Annotated[Path, typer.Option(help="Where the judge (judge.json), its report and plot go.")] = Path(
        "thresher-data/train/judge"),
    source: Annotated[list[str] | None, typer.Option(help="Real good conversations to learn from: zaragoza, "
                                                          "chatterbot, sample, or an Alpaca / ShareGPT / messages "
                                                          "file; repeatable [default: zaragoza and chatterbot].")
                      ] = None,
    data: Annotated[list[str] | None, typer.Option(help="Approved conversations too (a `thresher dataset build` "
                                                        "directory); repeatable.")] = None,
    verdicts: Annotated[bool, typer.Option(help="Also learn from reviewers' verdicts in the dataset clone.")] = True,
    train_rows: Annotated[int, typer.Option(help="Most rows to train on (each costs one forward pass).")] = 2400,
    heldout_rows: Annotated[int, typer.Option(help="Most held-out rows to measure on.")] = 900,
    hidden: Annotated[bool, typer.Option(help="Read the model's hidden state (off: text signals only, no "
                                              "model).")] = True,
    encoder: Annotated[bool, typer.Option(help="Use the small sentence encoder's relevance figures.")] = True,
    layers: Annotated[int | None, typer.Option(help="Read the state after this many of the model's layers, 0: "
                                                    "all [default: a third of a GGUF model's].")] = None,
    seed: Annotated[int, typer.Option(help="How rows are spoiled and split.")] = 0,
) -> None:
    """Train to train: fit the judge's head on real good conversations, copies of them spoiled in every failure
    family, and reviewers' verdicts.

    Example: `thresher train judge --out thresher-data/train/judge` (about 6 minutes on 2 CPU cores), then
    `thresher judge chats.jsonl --judge thresher-data/train/judge`

    Prints AUC on held-out rows (whole topics and spoiling wordings training never saw) overall and by failure
    family, and the acceptance threshold chosen on them, which the judge then applies (`judge_threshold = "auto"`).
    Serve it with `judge = "thresher-data/train/judge"`.
    """
    from thresher.engines import EngineError
    from thresher.train.judge import JudgeTrainError, train_judge
    from thresher.train.sources import SourceError

    # a source or build that cannot be read: 2; training that fails: 1
    with failing(SourceError, ValueError, OSError, code=2), failing(JudgeTrainError, EngineError):
        report = train_judge(_settings(), out, base=base, sources=source or (), builds=[Path(d) for d in data or []],
                             verdicts=verdicts, hidden=hidden, encoder=encoder, layers=layers, seed=seed,
                             max_train=train_rows, max_heldout=heldout_rows, say=typer.echo)

    for line in report.lines(out):
        typer.echo(line)


@app.command("round")
def round_cmd(
    data_dir: Annotated[Path | None, typer.Option(help="Data directory [default: ./thresher-data].")] = None,
    tiny: Annotated[bool, typer.Option(help="A few steps on a few examples: to try the whole round in minutes.")] = (
        False),
) -> None:
    """Run one training round: sync, pin a commit, build data, train judge and chat model, export, evaluate, gate,
    promote, and write rounds/N.json into the dataset.

    Example: `thresher round --tiny`

    Killed and run again, it continues from where it stopped (mid-training: from the newest checkpoint).
    """
    from thresher.train.round import RoundBusy, RoundConfig, run_round

    s = _settings(data_dir=data_dir)
    config = RoundConfig.tiny() if tiny else RoundConfig(gate=s.gate())
    with failing(RoundBusy):
        record = run_round(s, config, progress=typer.echo)
    typer.echo(f"round {record.round} done in {record.seconds:.0f} s; promoted: "
               f"{', '.join(record.promoted) or 'nothing'}")
