"""The model registry: `models list`, `models promote`, `models rollback`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from thresher.cli import _settings, app, failing

models_app = typer.Typer(help="Model versions: list, promote, roll back.", no_args_is_help=True)


app.add_typer(models_app, name="models")


def _registry(data_dir: Path | None) -> Any:
    from thresher.registry import Registry

    return Registry(_settings(data_dir=data_dir).data_dir / "models")


@models_app.command("list")
def models_list(
    data_dir: Annotated[Path | None, typer.Option(help="Data directory [default: ./thresher-data].")] = None,
) -> None:
    """Every model version with its round, parent, data commit, status and key metrics.

    Example: `thresher models list`
    """
    from rich.table import Table

    versions = _registry(data_dir).versions()
    if not versions:
        typer.echo("no model versions yet (a round makes them: `thresher round`)")
        return
    t = Table("version", "kind", "round", "parent", "data commit", "status", "metrics")
    for v in versions:
        metrics = ", ".join(f"{k}={v.metrics[k]:.3g}" for k in sorted(v.metrics) if isinstance(v.metrics[k], float))
        t.add_row(v.id, v.kind, str(v.round), v.parent or "-", (v.data_commit or "-")[:12],
                  v.status + (f" ({v.reason})" if v.reason else ""), metrics)
    Console().print(t)


@models_app.command("promote")
def models_promote(
    version: Annotated[str, typer.Argument(help="A version id from `thresher models list`.")],
    data_dir: Annotated[Path | None, typer.Option(help="Data directory [default: ./thresher-data].")] = None,
) -> None:
    """Serve a version now (a running server switches to it without a restart).

    Example: `thresher models promote chat-r2-3f9a1c2b7d`
    """
    from thresher.registry import RegistryError

    with failing(RegistryError):
        v = _registry(data_dir).promote(version, "promoted by hand")
    typer.echo(f"promoted {v.id} ({v.kind}): {v.spec}")


@models_app.command("rollback")
def models_rollback(
    kind: Annotated[str, typer.Argument(help="chat or judge.")] = "chat",
    data_dir: Annotated[Path | None, typer.Option(help="Data directory [default: ./thresher-data].")] = None,
) -> None:
    """Go back to the version promoted before the current one (or to the configured model).

    Example: `thresher models rollback chat`
    """
    from thresher.registry import RegistryError

    with failing(RegistryError):
        v = _registry(data_dir).rollback(kind)
    typer.echo(f"now serving {v.id}" if v else "now serving the configured model")
