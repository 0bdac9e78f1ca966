"""The `thresher` command. Each command calls one library function and formats its result."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console

from thresher import __version__

app = typer.Typer(
    help="thresher: a free language model that improves itself from its own public conversations.",
    no_args_is_help=True,
    rich_markup_mode="markdown",
)
err = Console(stderr=True)


def _settings(**overrides: Any) -> Any:
    """Settings from thresher.toml and THRESHER_* variables, with command-line options on top."""
    from thresher.config import Settings

    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as e:
        for problem in e.errors():
            where = ".".join(str(p) for p in problem["loc"]) or "settings"
            err.print(f"[red]error:[/red] {where}: {problem['msg'].removeprefix('Value error, ')}")
        raise typer.Exit(2) from None


def _version(value: bool) -> None:
    if value:
        typer.echo(f"thresher {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """thresher: a free language model that improves itself from its own public conversations."""


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
    import uvicorn

    from thresher.engines import EngineError, load
    from thresher.server import create_app

    s = _settings(host=host, port=port, model=model, data_dir=data_dir, public=public)
    try:
        with err.status(f"Loading model {s.model} …"):
            engine = load(s.model, n_ctx=s.n_ctx, n_threads=s.n_threads)
    except EngineError as e:
        err.print(f"[red]error:[/red] {e}")
        raise typer.Exit(1) from None
    err.print(
        f"Serving [bold]{s.model_name or engine.model_id}[/bold] ({engine.version}) at "
        f"[link]http://{s.host}:{s.port}[/link]  ·  data in {s.data_dir}  ·  "
        f"{'public' if s.public else 'local'} mode"
    )
    uvicorn.run(
        create_app(s, engine=engine),
        host=s.host,
        port=s.port,
        proxy_headers=True,
        forwarded_allow_ips=s.trusted_proxies,
        log_level="info",
        access_log=not s.public,  # access lines carry client addresses; public mode keeps none
    )
