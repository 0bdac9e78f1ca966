"""Judging: `judge` (files or the pending conversations) and `judge-eval` (a judge against labels)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from thresher.cli import JudgeSpec, Threshold, _load_judge, _progress, _settings, app, err, fail, failing


@app.command()
def judge(
    file: Annotated[Path | None, typer.Argument(help="JSONL of {\"id\": ..., \"messages\": [...]} lines.")] = None,
    out: Annotated[Path | None, typer.Option(help="Write results here (resumes: ids already in it are "
                                                  "skipped) [default: standard output].")] = None,
    pending: Annotated[bool, typer.Option("--pending", help="Judge the store's ended conversations that this "
                                                            "judge has not judged yet.")] = False,
    judge_spec: JudgeSpec = None,
    threshold: Threshold = None,
    rationale: Annotated[str | None, typer.Option(help="near | always | never [default: near].")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="Data directory (with --pending).")] = None,
) -> None:
    """Rate conversations "out of 10" as fine-tuning data.

    Example: `thresher judge chats.jsonl --out judged.jsonl --threshold 7`

    Each output line keeps `id` and adds `score` (1-10), `accepted`, `rationale`, `flags` and `status`. Bad input
    lines are reported with their line numbers and skipped. `thresher judge --pending` judges the store instead.
    """
    if (file is None) == (not pending):
        raise fail("give a FILE to judge, or --pending (not both)")
    if rationale not in (None, "near", "always", "never"):
        raise fail("--rationale must be near, always or never")
    s = _settings(data_dir=data_dir)
    if file is not None and not file.is_file():
        raise fail(f"no such file: {file}")
    j = _load_judge(s, judge_spec, threshold, rationale)

    if pending:
        from thresher.deployment import Deployment
        from thresher.flywheel import judge_pending

        with Deployment(s) as d, _progress() as progress:
            n = judge_pending(d.store, j, progress=progress)
        err.print(f"judged {n} conversation(s) with {j.judge_id}")
        return
    from thresher.judge import judge_file

    with _progress() as progress:
        result = judge_file(j, file, out, progress)
    for line in result.lines(out):
        err.print(line, highlight=False, markup=False)


@app.command("judge-eval")
def judge_eval(
    file: Annotated[Path | None, typer.Argument(help="JSONL with `messages` (or a `score`), a `label` (good/bad) "
                                                     "or `human_score`, and optionally a `degradation`.")] = None,
    source: Annotated[list[str] | None, typer.Option(help="Build the labelled set instead: real good "
                                                          "conversations (an Alpaca, ShareGPT or messages file, or "
                                                          "zaragoza / chatterbot / sample), each spoiled in every "
                                                          "failure family with wordings training never used; "
                                                          "repeatable.")] = None,
    write: Annotated[Path | None, typer.Option(help="With --source: also write the built set here (JSONL).")] = None,
    limit: Annotated[int | None, typer.Option(help="With --source: use at most this many good conversations.")] = None,
    plot: Annotated[Path | None, typer.Option(help="PNG of the score distributions [default: FILE.png, or "
                                                   "judge-eval.png].")] = None,
    report: Annotated[Path | None, typer.Option(help="Write the figures as JSON here.")] = None,
    judge_spec: JudgeSpec = None,
    threshold: Threshold = None,
    seed: Annotated[int, typer.Option(help="With --source: how conversations are spoiled.")] = 0,
) -> None:
    """Measure a judge against labels: AUC overall and by failure family, accuracy at the threshold, acceptance
    rates, Spearman against human scores.

    Example: `thresher judge-eval --source alpaca_en_demo.json --judge thresher-data/train/judge`

    Lines that already carry a `score` (output of `thresher judge`) are not judged again. A conversation flagged
    for text aimed at the evaluator counts as not accepted, whatever its score.
    """
    from thresher.evaluate import evaluate_judge, labelled_rows
    from thresher.train.sources import SourceError

    s, bad = _settings(), []
    with failing(SourceError, ValueError, OSError, code=2):
        lines = labelled_rows(file, source or (), limit=limit, seed=seed, write=write, bad=bad)
    if write is not None:
        err.print(f"wrote {len(lines)} labelled rows to {write}")
    need = sum(obj.get("score") is None for _, obj in lines)
    j = _load_judge(s, judge_spec, threshold, "never") if need else None
    with _progress() as progress:
        result = evaluate_judge(lines, j, threshold if threshold is not None or j else s.threshold(),
                                plot or (file.with_suffix(".png") if file else Path("judge-eval.png")), bad, progress)
    for n, why in bad:
        err.print(f"[yellow]line {n}:[/yellow] {why} (skipped)")
    for line in result.lines():
        typer.echo(line)
    if report is not None:
        report.write_text(json.dumps(result.to_json(), indent=2))
