"""The dataset in git: `publish`, `sync`, `review` (in a clone), `takedown`, `dataset build`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from thresher.cli import _settings, app, err, fail, failing
from thresher.conversation import InvalidRecord


@app.command("publish")
def publish_cmd(
    min_score: Annotated[float | None, typer.Option(help="Publish at this score or above, for this run only "
                                                         "[default: the judge threshold, 8].")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="Data directory [default: ./thresher-data].")] = None,
) -> None:
    """Curate judged conversations (consent, score, flags, personal data, duplicates) and publish now.

    Example: `thresher publish --min-score 7`

    Accepted conversations are scrubbed, written to the dataset clone, committed in one batch and pushed to
    `dataset_remote`; rejected ones stay in the store with the reason. A push that fails is retried next time.
    """
    from thresher.dataset_repo import GitError
    from thresher.deployment import Deployment
    from thresher.flywheel import publish

    s = _settings(data_dir=data_dir)
    with Deployment(s) as d, failing(GitError):
        report = publish(d.store, d.dataset(), threshold=s.threshold() if min_score is None else min_score,
                         daily_cap=s.publish_daily_cap)
    for line in report.lines(s.dataset_path, s.dataset_remote):
        typer.echo(line)


@app.command("sync")
def sync_cmd(
    data_dir: Annotated[Path | None, typer.Option(help="Data directory [default: ./thresher-data].")] = None,
) -> None:
    """Pull the dataset repository and read reviewers' verdicts and edits into the store.

    Example: `thresher sync --data-dir thresher-data`

    Verdicts are upserted (running it again changes nothing), edits of published conversations are kept with
    their diff for re-judging, and published conversations are counted by quorum (`quorum_approvals`).
    """
    from thresher.dataset_repo import GitError
    from thresher.deployment import Deployment
    from thresher.review import sync

    s = _settings(data_dir=data_dir)
    with Deployment(s) as d, failing(GitError):
        report = sync(d.store, d.dataset(), min_approvals=s.quorum_approvals)
    for path, why in report.problems:
        err.print(f"[yellow]{path}:[/yellow] {why} (skipped)", highlight=False)
    for line in report.lines(s.quorum_approvals):
        typer.echo(line)


@app.command("review")
def review_cmd(
    repo_path: Annotated[Path, typer.Option("--repo", show_default=False, help="Your clone of the dataset "
                                            "[default: the current directory].")] = Path("."),
    reviewer: Annotated[str | None, typer.Option(help="Your reviewer name [default: from your git "
                                                      "user.email].")] = None,
) -> None:
    """Review published conversations one at a time in your clone: approve, reject, skip, edit or quit.

    Example: `git clone https://example.org/dataset.git && cd dataset && thresher review`

    Each verdict is written to reviews/ID/YOU.json, committed under your own git identity and pushed. Edit
    opens $EDITOR on the conversation file and commits your change as a correction.
    """
    import click

    from thresher.dataset_repo import GitError
    from thresher.review import InvalidVerdict, ReviewSession, show_record

    out = Console(highlight=False)
    with failing(GitError, InvalidVerdict, code=2):
        session = ReviewSession(repo_path, reviewer)
    out.print(f"{len(session.todo)} conversation(s) to review as [bold]{session.reviewer}[/bold]")

    def show(path: str, where: str) -> None:
        try:
            show_record(out, session.record(path), where)
        except InvalidRecord as e:  # someone pushed an edit that broke it: it can still be judged
            out.rule(f"{where}  {path}")
            err.print(f"[yellow]this file no longer holds a conversation record:[/yellow] {e}")

    with failing(GitError, InvalidVerdict):
        out.print(session.run(show, lambda q, default: typer.prompt(q, default=default),
                              lambda file: click.edit(filename=str(file)), out.print))


@app.command("takedown")
def takedown_cmd(
    conversation_id: Annotated[str, typer.Argument(help="The conversation to remove.")],
    reason: Annotated[str, typer.Option(help="Why (recorded in the tombstone and the commit message).")],
    data_dir: Annotated[Path | None, typer.Option(help="Data directory [default: ./thresher-data].")] = None,
) -> None:
    """Remove a conversation from the dataset with a tombstone commit and mark it never-train.

    Example: `thresher takedown 01JABCDEF0123456789ABCDEFG --reason "contains a home address"`
    """
    from thresher.dataset_repo import GitError
    from thresher.deployment import Deployment
    from thresher.flywheel import takedown
    from thresher.store import NotFound

    with Deployment(_settings(data_dir=data_dir)) as d, failing(ValueError, GitError):
        try:
            report = takedown(d.store, d.dataset(), conversation_id, reason)
        except NotFound:
            raise fail(f"no conversation {conversation_id}") from None
    for line in report.lines():
        typer.echo(line)


dataset_app = typer.Typer(help="The reviewed dataset.", no_args_is_help=True)


app.add_typer(dataset_app, name="dataset")


@dataset_app.command("build")
def dataset_build(
    out: Annotated[Path, typer.Option(help="Directory for data.jsonl and manifest.json.")],
    at: Annotated[str, typer.Option(help="Commit (or branch, tag) of the dataset to build from.")] = "HEAD",
    repo_path: Annotated[Path | None, typer.Option("--repo", help="A clone of the dataset [default: the "
                                                                  "data dir's clone].")] = None,
    min_approvals: Annotated[int | None, typer.Option(help="Approvals needed [default: quorum_approvals].")] = None,
) -> None:
    """Write the approved conversations at a commit as training-ready JSONL, with a manifest.

    Example: `thresher dataset build --at 3f2a9c1 --out round-1-data`

    Byte-for-byte reproducible: the same commit gives the same files.
    """
    from thresher.dataset_repo import DatasetRepo, GitError
    from thresher.review import build_dataset

    s = _settings()
    path = repo_path or s.dataset_path
    if not (path / ".git").exists():
        raise fail(f"{path} is not a clone of the dataset")
    with failing(GitError):
        m = build_dataset(DatasetRepo(path), at, out, s.quorum_approvals if min_approvals is None else min_approvals)
    for line in m.lines(out):
        typer.echo(line)
