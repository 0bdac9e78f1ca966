"""Serving and turning the loop: `serve`, `status`, `worker`, `demo`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from thresher.cli import _settings, app, err, fail, failing


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Address to listen on [default: 127.0.0.1].")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on [default: 8000].")] = None,
    model: Annotated[str | None, typer.Option(help="Engine spec [default: embedded].")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="Data directory [default: ./thresher-data].")] = None,
    public: Annotated[
        bool | None, typer.Option("--public/--local", help="Public mode: admin token required, rate limits on.")
    ] = None,
) -> None:
    """Serve the chat page at / and the OpenAI-compatible API at /v1.

    Example: `thresher serve --port 8000 --model embedded`

    Other engines: `--model llama.cpp:model.gguf`, `--model hf:HuggingFaceTB/SmolLM2-360M-Instruct`,
    `--model openai:http://127.0.0.1:8001/v1#my-model`. Every setting can also come from thresher.toml or a
    THRESHER_* variable (see the README).
    """
    from thresher.deployment import Deployment
    from thresher.engines import EngineError
    from thresher.server import serve as serve_app

    s = _settings(host=host, port=port, model=model, data_dir=data_dir, public=public)
    with failing(EngineError), err.status(f"Loading model {s.model} …"):
        engine = Deployment(s).engine()  # with the settings' context, threads and parallelism
    serve_app(s, engine, say=lambda line: err.print(line, highlight=False, markup=False))


@app.command()
def status(
    data_dir: Annotated[Path | None, typer.Option(help="Data directory [default: ./thresher-data].")] = None,
) -> None:
    """Show the dashboard's figures in the terminal: conversations by status (and the published by reviewers'
    verdict), acceptance per day, scores by judge version, judge-reviewer agreement, rounds and models.

    Example: `thresher status --data-dir thresher-data`
    """
    from thresher import stats
    from thresher.deployment import Deployment

    s = _settings(data_dir=data_dir)
    with Deployment(s) as d:
        parts = stats.status(d.store, s)
    out = Console()
    for part in parts:
        if isinstance(part, str):
            typer.echo(part)
        else:
            out.print(part)


@app.command("worker")
def worker_cmd(
    data_dir: Annotated[Path | None, typer.Option(help="Data directory [default: ./thresher-data].")] = None,
    once: Annotated[bool, typer.Option(help="Run each stage once and exit (for cron or a test).")] = False,
) -> None:
    """Run the loop without the web server: judge ended conversations, publish, sync reviews, start rounds.

    Example: `thresher worker --data-dir thresher-data`

    For larger set-ups, where `thresher serve` runs with `judge = "off"` on the chat machines and one worker does
    the rest. Every stage is resumable: all state is in the store and the dataset repository.
    """
    import logging

    from thresher.deployment import Deployment

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    s = _settings(data_dir=data_dir)
    if s.judge == "off":
        raise fail("the worker judges conversations: set `judge` to 'serving' or an engine spec")
    with Deployment(s) as d:
        d.run_worker(once=once, say=typer.echo)


@app.command("demo")
def demo_cmd(
    data_dir: Annotated[Path, typer.Option(help="A fresh directory for the demo's data.")] = Path("thresher-demo"),
    quick: Annotated[bool, typer.Option(help="4 simulated users and a tiny round (a few minutes on 2 cores).")] = (
        False),
    serve_after: Annotated[bool, typer.Option("--serve/--exit", help="Keep the server running afterwards so you "
                                                                   "can look at the chat page and dashboard.")] = True,
    port: Annotated[int | None, typer.Option(help="Port [default: a free one].")] = None,
    verbose: Annotated[bool, typer.Option(help="Show progress bars and training logs here instead of in "
                                               "DATA_DIR/demo.log.")] = False,
) -> None:
    """The whole loop on this machine with SIMULATED users and a SIMULATED reviewer, ending in one gated round.

    Example: `thresher demo --quick`

    Simulated users chat with the embedded model through the real API and agree to publishing; conversations are
    judged, published to a local bare git repository, reviewed by a simulated reviewer (its policy is printed), and
    one small round trains and is gated.
    """
    from thresher.demo import run_demo, serve_until_stopped, summary_lines

    with failing(FileExistsError, code=2):
        summary = run_demo(data_dir, quick, typer.echo, keep_serving=serve_after, port=port, verbose=verbose)
    typer.echo("")
    for line in summary_lines(summary, serving=serve_after):
        typer.echo(line)
    if serve_after:
        serve_until_stopped(summary)
