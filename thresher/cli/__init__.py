"""The `thresher` command. Each command calls one library function and formats its result.

This module makes the app and what every command shares (settings from the command line, the judge option, the
progress bar); the commands live beside it by group: `serving`, `judging`, `dataset`, `training`, `models`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
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


# typer 0.2x prints a value type after every option, on/off flags too ("--pending <bool>"), as if they took one.
_value_type = typer.core.TyperOption.display_type_rich


typer.core.TyperOption.display_type_rich = lambda self, ctx: None if self.is_flag else _value_type(self, ctx)


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


@contextlib.contextmanager
def failing(*errors: type[Exception], code: int = 1) -> Iterator[None]:
    """One of `errors` raised inside ends the command with its message and exit `code` (2: the input is wrong, 1:
    the work failed)."""
    try:
        yield
    except errors as e:
        err.print(f"[red]error:[/red] {e}")
        raise typer.Exit(code) from None


def fail(message: str, code: int = 2) -> typer.Exit:
    """End the command with `message`: `raise fail("...")`."""
    err.print(f"[red]error:[/red] {message}")
    return typer.Exit(code)


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


def _load_judge(s: Any, spec: str | None, threshold: float | None, rationale: str | None) -> Any:
    from thresher.deployment import Deployment
    from thresher.engines import EngineError
    from thresher.reward import HeadError

    with failing(EngineError, HeadError), err.status(f"Loading judge {spec or s.judge} …"):
        return Deployment(s).judge_as(spec, threshold=threshold, rationale=rationale)


@contextlib.contextmanager
def _progress(description: str = "judging") -> Iterator[Any]:
    """A progress bar on standard error, moved by the `progress(done, total)` it yields."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=err) as bar:
        task = bar.add_task(description, total=None)
        yield lambda done, total: bar.update(task, completed=done, total=total)


JudgeSpec = Annotated[str | None, typer.Option("--judge", help="A judge directory written by `thresher train "
                                                               "judge`, an engine spec, or rating:SPEC (the rubric "
                                                               "prompt) [default: the `judge` setting: the serving "
                                                               "model with its shipped head].")]


Threshold = Annotated[float | None, typer.Option(help="Acceptance threshold, 1-10 [default: the judge's calibrated "
                                                      "threshold].")]


# The commands, in the order `thresher --help` lists them (imported for their registration on `app`).
from thresher.cli import serving, judging, dataset, training, models  # noqa: E402, F401, I001
