"""The `thresher` command. Each command calls one library function and formats its result."""

from __future__ import annotations

import contextlib
import json
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
    for line in serving_lines(s):
        err.print("  " + line, highlight=False)
    uvicorn.run(
        create_app(s, engine=engine),
        host=s.host,
        port=s.port,
        proxy_headers=True,
        forwarded_allow_ips=s.trusted_proxies,
        log_level="info",
        access_log=not s.public,  # access lines carry client addresses; public mode keeps none
    )


def serving_lines(s: Any) -> list[str]:
    """What `thresher serve` turns on, and why each part that is off is off: said at start-up."""
    base = f"http://{s.host}:{s.port}"
    lines = [f"chat page {base}/   ·   OpenAI-compatible API {base}/v1"]
    if s.reviewer_tokens:
        lines.append(f"review page {base}/review ({len(s.reviewer_tokens)} reviewer token(s))")
    else:
        lines.append("review page off: no reviewer tokens (set reviewer_tokens to open /review)")
    if s.admin_token:
        lines.append(f"dashboard {base}/dashboard (sign in with the admin token)")
    else:
        lines.append(f"dashboard {base}/dashboard, from this machine only (no admin token set)")
    if s.judge == "off":
        lines.append("judging off (judge = off): nothing is rated or published")
    else:
        where = s.dataset_remote or f"the local clone {s.dataset_path} (no dataset_remote set)"
        lines.append(f"judging ended conversations with {s.judge} at threshold {s.threshold():g}; publishing every "
                     f"{s.publish_interval_seconds:g} s to {where}")
    return lines


def _load_judge(s: Any, spec: str | None, threshold: float | None, rationale: str | None) -> Any:
    from thresher.engines import EngineError
    from thresher.judge import make_judge
    from thresher.reward import HeadError

    spec = spec or (s.model if s.judge == "off" else s.judge)
    try:
        with err.status(f"Loading judge {spec} …"):
            serving = None
            if spec in ("serving", "rating:serving"):
                from thresher.engines import load

                serving = load(s.model, n_ctx=s.n_ctx, n_threads=s.n_threads)
            return make_judge(spec, serving, threshold=s.judge_threshold if threshold is None else threshold,
                              rationale=rationale or s.judge_rationale, n_ctx=s.n_ctx, n_threads=s.n_threads)
    except (EngineError, HeadError) as e:
        err.print(f"[red]error:[/red] {e}")
        raise typer.Exit(1) from None


def _progress() -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    console=err, transient=False)


JudgeSpec = Annotated[str | None, typer.Option("--judge", help="A judge directory written by `thresher train "
                                                               "judge`, an engine spec, or rating:SPEC (the rubric "
                                                               "prompt) [default: the `judge` setting: the serving "
                                                               "model with its shipped head].")]
Threshold = Annotated[float | None, typer.Option(help="Acceptance threshold, 1-10 [default: the judge's calibrated "
                                                      "threshold].")]


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
    import json
    import sys

    if (file is None) == (not pending):
        err.print("[red]error:[/red] give a FILE to judge, or --pending (not both)")
        raise typer.Exit(2)
    if rationale not in (None, "near", "always", "never"):
        err.print("[red]error:[/red] --rationale must be near, always or never")
        raise typer.Exit(2)
    s = _settings(data_dir=data_dir)
    if file is not None and not file.is_file():
        err.print(f"[red]error:[/red] no such file: {file}")
        raise typer.Exit(2)
    j = _load_judge(s, judge_spec, threshold, rationale)

    if pending:
        from thresher.deployment import Deployment
        from thresher.flywheel import judge_pending

        with Deployment(s) as d, _progress() as bar:
            task = bar.add_task("judging", total=len(d.store.pending_judgment(j.judge_id, j.rubric_hash,
                                                                               limit=1_000_000)))
            n = judge_pending(d.store, j, on_judged=lambda *_: bar.advance(task))
        err.print(f"judged {n} conversation(s) with {j.judge_id}")
        return

    from thresher.judge import judge_jsonl

    assert file is not None
    done: set[str] = set()
    if out is not None and out.exists():
        text = out.read_text(encoding="utf-8")
        if text and not text.endswith("\n"):  # a line cut off by an earlier crash: drop it, judge it again
            text = text[: text.rfind("\n") + 1]
            out.write_text(text, encoding="utf-8")
        for line in text.splitlines():
            try:
                done.add(str(json.loads(line)["id"]))
            except (ValueError, KeyError, TypeError):
                continue
    with open(file, encoding="utf-8") as f:
        total = sum(1 for line in f if line.strip())
    with contextlib.ExitStack() as stack:
        sink = stack.enter_context(open(out, "a", encoding="utf-8")) if out is not None else sys.stdout
        with _progress() as bar:
            task = bar.add_task("judging", total=total)
            result = judge_jsonl(j, file, sink, done, on_line=lambda: bar.advance(task))
    for n, why in result.bad_lines:
        err.print(f"[yellow]line {n}:[/yellow] {why} (skipped)")
    err.print(f"judged {result.judged}, skipped {len(result.bad_lines)} bad line(s)"
              + (f", {result.already} already in {out}" if result.already else ""))


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
    import json

    from thresher.evaluate import evaluate_judge, spoiled_set
    from thresher.judge import read_jsonl
    from thresher.train.sources import SourceError

    if (file is None) == (not source):
        err.print("[red]error:[/red] give a labelled FILE, or --source to build one (not both)")
        raise typer.Exit(2)
    if file is not None and not file.is_file():
        err.print(f"[red]error:[/red] no such file: {file}")
        raise typer.Exit(2)
    s = _settings()
    bad: list[tuple[int, str]] = []
    if source:
        try:
            lines = spoiled_set(source, limit, seed)
        except (SourceError, ValueError, OSError) as e:
            err.print(f"[red]error:[/red] {e}")
            raise typer.Exit(2) from None
        if write is not None:
            write.write_text("".join(json.dumps(obj, ensure_ascii=False) + "\n" for _, obj in lines),
                             encoding="utf-8")
            err.print(f"wrote {len(lines)} labelled rows to {write}")
    else:
        assert file is not None
        lines = list(read_jsonl(file, bad))
    need = sum(obj.get("score") is None for _, obj in lines)
    j = _load_judge(s, judge_spec, threshold, "never") if need else None
    thr = threshold if threshold is not None else (j.threshold if j else s.threshold())
    with _progress() as bar:
        task = bar.add_task("judging", total=need)
        result = evaluate_judge(lines, j, thr, plot or (file.with_suffix(".png") if file else Path("judge-eval.png")),
                                bad, progress=lambda n: bar.advance(task, n))
    for n, why in bad:
        err.print(f"[yellow]line {n}:[/yellow] {why} (skipped)")
    for line in result.lines():
        typer.echo(line)
    if report is not None:
        report.write_text(json.dumps(result.to_json(), indent=2))


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
        lines, figures, recent = stats.status(d.store, s)
    for line in lines:
        typer.echo(line)
    out = Console()
    for part in stats.tables(figures):
        out.print(part)
    if recent:
        out.print("Judged, not curated yet (newest):")
    for conv, last in recent:
        score = "-" if last.score is None else f"{last.score:.2f}"
        typer.echo(f"  {conv.id}  score {score}  {last.status}  {' '.join(last.flags)}")


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
    with Deployment(s) as d:
        try:
            report = publish(d.store, d.dataset(), threshold=s.threshold() if min_score is None else min_score,
                             daily_cap=s.publish_daily_cap)
        except GitError as e:
            err.print(f"[red]error:[/red] {e}")
            raise typer.Exit(1) from None
    typer.echo(f"published {len(report.published)}, rejected {len(report.rejected)}, deferred {report.deferred}")
    for cid, why in report.rejected.items():
        typer.echo(f"  rejected {cid}: {why}")
    if report.pii:
        typer.echo("personal data replaced: " + ", ".join(f"{k} {v}" for k, v in sorted(report.pii.items())))
    if report.commit:
        typer.echo(f"commit {report.commit[:12]} in {s.dataset_path}")
    if s.dataset_remote:
        typer.echo("pushed" if report.pushed else "not pushed yet (the remote did not answer): will retry")


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
    with Deployment(s) as d:
        try:
            report = sync(d.store, d.dataset(), min_approvals=s.quorum_approvals)
        except GitError as e:
            err.print(f"[red]error:[/red] {e}")
            raise typer.Exit(1) from None
    for path, why in report.problems:
        err.print(f"[yellow]{path}:[/yellow] {why} (skipped)")
    typer.echo(f"verdicts: {report.new} new, {report.updated} updated; corrections: {report.corrections} new")
    typer.echo(f"published conversations: {report.approved} approved, {report.rejected} rejected, "
               f"{report.pending} pending (quorum {s.quorum_approvals})")


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
    from rich.console import Console

    from thresher.dataset_repo import DatasetRepo, GitError
    from thresher.review import (
        InvalidVerdict,
        check_reviewer,
        commit_correction,
        pending,
        reviewer_identity,
        write_verdict,
    )

    if not (repo_path / ".git").exists():
        err.print(f"[red]error:[/red] {repo_path} is not a git clone of the dataset (`git clone URL` first)")
        raise typer.Exit(2)
    out = Console(highlight=False)
    try:
        probe = DatasetRepo(repo_path)
        remote = probe.git("remote", "get-url", "origin", check=False) or None
        repo = DatasetRepo(repo_path, remote)
        me = reviewer_identity(repo) if reviewer is None else check_reviewer(reviewer)
        repo.pull()
        todo = pending(repo, me)
    except (GitError, InvalidVerdict) as e:
        err.print(f"[red]error:[/red] {e}")
        raise typer.Exit(2) from None
    out.print(f"{len(todo)} conversation(s) to review as [bold]{me}[/bold]")
    counts = {"approved": 0, "rejected": 0, "skipped": 0, "corrected": 0}
    choice = ""
    for i, path in enumerate(todo, 1):
        show = True
        while True:
            if show:
                _show_conversation(out, repo.read(path), f"{i}/{len(todo)}")
                show = False
            choice = typer.prompt("[a]pprove, [r]eject, [s]kip, [e]dit, [q]uit", default="s").strip().lower()[:1]
            if choice not in ("a", "r", "s", "e", "q"):
                err.print("answer a, r, s, e or q")
                continue
            try:
                if choice == "e":
                    click.edit(filename=str(repo.path / path))
                    try:
                        sha = commit_correction(repo, path)
                    except InvalidVerdict as e:
                        repo.git("checkout", "--", path)
                        err.print(f"[yellow]edit not kept:[/yellow] {e}")
                        continue
                    if sha:
                        counts["corrected"] += 1
                        out.print(f"correction committed ({sha[:12]})")
                        show = True  # show the corrected conversation, then ask for a verdict
                    continue
                if choice in ("a", "r"):
                    reason = typer.prompt("Reason") if choice == "r" else ""
                    written = write_verdict(repo, path.rsplit("/", 1)[-1].removesuffix(".json"),
                                            "approve" if choice == "a" else "reject", reason, reviewer=me)
                    counts["approved" if choice == "a" else "rejected"] += 1
                    out.print(("approved" if choice == "a" else "rejected") + (
                        ", pushed" if written.pushed else
                        ", committed (not pushed yet: it goes with your next push)" if repo.remote else
                        ", committed (no remote)"))
            except (GitError, InvalidVerdict) as e:
                err.print(f"[red]error:[/red] {e}")
                raise typer.Exit(1) from None
            break
        if choice == "q":
            break
        if choice == "s":
            counts["skipped"] += 1
    out.print(", ".join(f"{k} {v}" for k, v in counts.items()))


def _show_conversation(out: Any, rec: dict[str, Any], where: str) -> None:
    """One published conversation for a reviewer: score, the judge's rationale and flags, then the messages with
    the user's thumbs on them."""
    from rich.panel import Panel
    from rich.text import Text

    thumbs = {f["message"]: f for f in rec.get("feedback") or [] if isinstance(f, dict) and
              isinstance(f.get("message"), int) and f.get("rating") in ("up", "down")}

    score = rec.get("score")
    out.rule(f"{where}  {rec.get('id')}  score {'-' if score is None else f'{score:.2f}'}")
    if rec.get("rationale"):
        out.print(Text(f"judge: {rec['rationale']}", style="italic"))
    if rec.get("flags"):
        out.print(Text("flags: " + ", ".join(rec["flags"]), style="yellow"))
    for i, m in enumerate(rec.get("messages", [])):
        f = thumbs.get(i)
        note = None if f is None else f"user: thumbs {f['rating']}" + (f" ({f['reason']})" if f.get("reason") else "")
        out.print(Panel(Text(str(m.get("content", ""))), title=str(m.get("role", "?")), title_align="left",
                        subtitle=None if note is None else Text(note), subtitle_align="right"))


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

    with Deployment(_settings(data_dir=data_dir)) as d:
        try:
            report = takedown(d.store, d.dataset(), conversation_id, reason)
        except NotFound:
            err.print(f"[red]error:[/red] no conversation {conversation_id}")
            raise typer.Exit(2) from None
        except (ValueError, GitError) as e:
            err.print(f"[red]error:[/red] {e}")
            raise typer.Exit(1) from None
    typer.echo(f"{conversation_id} is marked never-train and will not be published again.")
    if report.removed_path:
        typer.echo(f"removed {report.removed_path} from HEAD in commit {report.commit[:12] if report.commit else '-'}"
                   + (" and pushed" if report.pushed else " (not pushed yet: run thresher publish to retry)"))
        typer.echo(
            f"Git history still holds the file in {len(report.history)} earlier commit(s), and so does every clone "
            "and fork made before now. To erase it: in a fresh clone run\n"
            f"  git filter-repo --invert-paths --path {report.removed_path}\n"
            "then force-push every branch, ask the git host to purge cached views and pull requests, and ask the "
            "people who cloned the dataset to re-clone."
        )
    else:
        typer.echo("it was not in the dataset's HEAD; a tombstone keeps it out of every build.")


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
        err.print(f"[red]error:[/red] {path} is not a clone of the dataset")
        raise typer.Exit(2)
    try:
        m = build_dataset(DatasetRepo(path), at, out, s.quorum_approvals if min_approvals is None else min_approvals)
    except GitError as e:
        err.print(f"[red]error:[/red] {e}")
        raise typer.Exit(1) from None
    typer.echo(f"commit {m.commit}: {m.approved} approved of {m.conversations} ({m.rejected} rejected, "
               f"{m.pending} pending, {m.taken_down} taken down)")
    typer.echo(f"wrote {out / 'data.jsonl'} (sha256 {m.sha256[:16]}…) and {out / 'manifest.json'}")


train_app = typer.Typer(help="Fine-tune the chat model and the judge (LoRA, on CPU or GPU).", no_args_is_help=True)
app.add_typer(train_app, name="train")


def _train_config(max_length: int, epochs: float, max_steps: int, lr: float, batch_size: int, lora_r: int,
                  save_steps: int, grad_accum: int = 1) -> Any:
    from thresher.train.sft import TrainConfig

    if min(batch_size, grad_accum, lora_r, save_steps) < 1:
        err.print("[red]error:[/red] --batch-size, --grad-accum, --lora-r and --save-steps must be at least 1")
        raise typer.Exit(2)
    return TrainConfig(max_length=max_length, epochs=epochs, max_steps=max_steps, learning_rate=lr,
                       batch_size=batch_size, grad_accum=grad_accum, lora_r=lora_r, lora_alpha=2 * lora_r,
                       save_steps=save_steps)


def _base_spec(base: str | None) -> tuple[str, Path | None]:
    """What to train from: --base, or the configured model (the embedded GGUF by default)."""
    from thresher.engines import embedded_model_path, parse_spec

    spec = base or _settings().model
    if spec.endswith(".gguf") and Path(spec).is_file():
        return spec, Path(spec)
    kind, target = parse_spec(spec)
    if kind == "llama.cpp":
        path = Path(target) if target else embedded_model_path()
        return str(path), path
    if kind == "hf":
        return target, None
    err.print("[red]error:[/red] training needs local weights: pass --base FILE.gguf, a model directory or a hub "
              "name")
    raise typer.Exit(2)


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
    from thresher.train.data import DataError, load_conversations
    from thresher.train.export import export as export_model
    from thresher.train.sft import TrainError, load_base, tokenise_all, train_lora

    spec, gguf = _base_spec(base)
    try:
        convs = load_conversations(data, fmt)[:limit]
        model, tok = load_base(spec)
        rows = tokenise_all(tok, convs, max_length)
        typer.echo(f"{len(rows)} examples ({sum(len(r.input_ids) for r in rows)} tokens) from {data}; base {spec}")
        result, trained = train_lora(model, tok, rows, out, _train_config(max_length, epochs, max_steps, lr,
                                                                          batch_size, lora_r, save_steps))
    except (DataError, TrainError) as e:
        err.print(f"[red]error:[/red] {e}")
        raise typer.Exit(1) from None
    typer.echo(f"trained {result.steps} steps in {result.seconds:.0f} s ({result.tokens_per_second:.0f} tokens/s); "
               f"final loss {result.final_loss}")
    typer.echo(f"adapter: {result.adapter}; loss curve: {result.plot}")
    if export:
        ex = export_model(trained, tok, out / "export", gguf, {"name": "thresher SFT", "kind": "chat", "base": spec,
                                                              "examples": len(rows), "licence": "apache-2.0",
                                                              "metrics": {"final_loss": result.final_loss}})
        typer.echo(f"exported: {ex.hf_dir}" + (f", {ex.gguf}" if ex.gguf else f" (no GGUF: {ex.note})"))


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
    from thresher.pairs import PairError, from_record, read_pairs
    from thresher.train.dpo import DpoConfig, train_dpo
    from thresher.train.export import export as export_model
    from thresher.train.sft import TrainError, load_base

    spec, gguf = _base_spec(base)
    try:
        if pairs.is_dir():
            data = pairs / "data.jsonl"
            if not data.is_file():
                raise PairError(f"{pairs} holds no data.jsonl: build it with `thresher dataset build`")
            found = [p for line in data.read_text(encoding="utf-8").splitlines() if line.strip()
                     for p in from_record(json.loads(line))]
        elif pairs.is_file():
            found = read_pairs(pairs)
        else:
            raise PairError(f"no file or directory at {pairs}")
        if not found:
            raise PairError(f"no preference pairs in {pairs}")
        typer.echo(f"{len(found)} pairs from {pairs}; base {spec}")
        model, tok = load_base(spec)
        result, trained = train_dpo(model, tok, found, out, DpoConfig(beta=beta, max_length=max_length, epochs=epochs,
                                                                     max_steps=max_steps, learning_rate=lr,
                                                                     batch_size=batch_size))
    except (PairError, TrainError, json.JSONDecodeError) as e:
        err.print(f"[red]error:[/red] {e}")
        raise typer.Exit(1) from None
    typer.echo(f"trained {result.steps} steps in {result.seconds:.0f} s; final loss {result.final_loss}")
    typer.echo(f"adapter: {result.adapter}; loss curve: {result.plot}")
    if export:
        ex = export_model(trained, tok, out / "export", gguf, {"name": "thresher DPO", "kind": "chat", "base": spec,
                                                              "pairs": len(found), "licence": "apache-2.0",
                                                              "metrics": {"final_loss": result.final_loss}})
        typer.echo(f"exported: {ex.hf_dir}" + (f", {ex.gguf}" if ex.gguf else f" (no GGUF: {ex.note})"))


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
    seed: Annotated[int, typer.Option(help="How rows are spoiled and split.")] = 0,
) -> None:
    """Train to train: fit the judge's head on real good conversations, copies of them spoiled in every failure
    family, and reviewers' verdicts.

    Example: `thresher train judge --out thresher-data/train/judge` (about 25 minutes on 2 CPU cores), then
    `thresher judge chats.jsonl --judge thresher-data/train/judge`

    Prints AUC on held-out rows (whole topics and spoiling wordings training never saw) overall and by failure
    family, and the acceptance threshold chosen on them, which the judge then applies (`judge_threshold = "auto"`).
    Serve it with `judge = "thresher-data/train/judge"`.
    """
    from thresher.dataset_repo import DatasetRepo
    from thresher.engines import EngineError, embedded_model_path
    from thresher.engines import load as load_engine
    from thresher.judge import head_for
    from thresher.train import sources as shipped
    from thresher.train.data import rows_from_corrections, rows_from_verdicts
    from thresher.train.judge import JudgeTrainError, sources_from_build, train_head_judge

    s = _settings()
    spec = base or s.model
    if spec.endswith(".gguf") and not spec.startswith("llama.cpp:"):
        spec = f"llama.cpp:{spec}"
    if spec == f"llama.cpp:{embedded_model_path()}":
        spec = "embedded"
    try:
        good = shipped.load(source or list(shipped.DEFAULT))
    except (shipped.SourceError, ValueError, OSError) as e:
        err.print(f"[red]error:[/red] {e}")
        raise typer.Exit(2) from None
    for d in data or []:
        good += sources_from_build(Path(d))
    repo = DatasetRepo(s.dataset_path)
    has_clone = (repo.path / ".git").exists() and repo.has_commits()
    vrows = ([*rows_from_verdicts(repo, min_approvals=s.quorum_approvals), *rows_from_corrections(repo)]
             if verdicts and has_clone else [])
    engine = None
    if hidden:
        try:
            with err.status(f"Loading {spec} …"):
                engine = load_engine(spec, n_ctx=s.n_ctx, n_threads=s.n_threads)
        except EngineError as e:
            err.print(f"[red]error:[/red] {e}")
            raise typer.Exit(1) from None
        if not hasattr(engine, "last_hidden"):
            err.print("[red]error:[/red] this engine gives no hidden states; use a GGUF file, or --no-hidden")
            raise typer.Exit(2)
    shipped_head = head_for(engine) if engine is not None else None
    typer.echo(f"{len(good)} good conversations from {', '.join(source or shipped.DEFAULT)}"
               + (f" and {len(data or [])} build(s)" if data else "") + f"; {len(vrows)} rows from reviewers' "
               "verdicts and corrections")
    try:
        report = train_head_judge(engine, spec, out, good, vrows, seed=seed, max_train=train_rows,
                                  max_heldout=heldout_rows, encoder=encoder, hidden=hidden, before=shipped_head,
                                  say=typer.echo)
    except JudgeTrainError as e:
        err.print(f"[red]error:[/red] {e}")
        raise typer.Exit(1) from None

    def fmt(x: float | None) -> str:
        return "-" if x is None else f"{x:.3f}"

    before = report.auc_before or {}
    typer.echo(f"held-out rows: {report.rows_heldout} (trained on {report.rows_train}), in {report.seconds:.0f} s")
    typer.echo(f"AUC: {fmt(report.auc_after['all'])}" + (f" (the shipped judge: {fmt(before.get('all'))})"
                                                        if before else ""))
    typer.echo("AUC by failure family: " + ", ".join(
        f"{k.removeprefix('family:')} {fmt(v)}" for k, v in report.auc_after.items() if k.startswith("family:")))
    typer.echo("AUC by kind: " + ", ".join(f"{k} {fmt(v)}" for k, v in report.auc_after.items()
                                           if k != "all" and not k.startswith("family:")))
    typer.echo(f"threshold chosen on held-out rows: {report.threshold:g}: it accepts {report.accept_good:.0%} of "
               f"the good rows and {report.accept_bad:.0%} of the bad ones")
    typer.echo(f"judge: {out / 'judge.json'}; report: {out / 'judge_eval.json'}; plot: {out / 'heldout_scores.png'}")
    typer.echo(f"use it: thresher judge FILE --judge {out}   or   judge = \"{out}\" in thresher.toml")


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

    try:
        v = _registry(data_dir).promote(version, "promoted by hand")
    except RegistryError as e:
        err.print(f"[red]error:[/red] {e}")
        raise typer.Exit(1) from None
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

    try:
        v = _registry(data_dir).rollback(kind)
    except RegistryError as e:
        err.print(f"[red]error:[/red] {e}")
        raise typer.Exit(1) from None
    typer.echo(f"now serving {v.id}" if v else "now serving the configured model")


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
    try:
        record = run_round(s, config, progress=typer.echo)
    except RoundBusy as e:
        err.print(f"[red]error:[/red] {e}")
        raise typer.Exit(1) from None
    typer.echo(f"round {record['round']} done in {record['seconds']:.0f} s; promoted: "
               f"{', '.join(record['promoted']) or 'nothing'}")


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
    import threading

    from thresher.deployment import Deployment
    from thresher.follow import FOLLOW_SECONDS

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    s = _settings(data_dir=data_dir)
    if s.judge == "off":
        err.print("[red]error:[/red] the worker judges conversations: set `judge` to 'serving' or an engine spec")
        raise typer.Exit(2)
    d = Deployment(s)
    # The worker only judges (on the engine's own judging context): one decoding sequence is all it needs.
    worker = d.worker(d.judge(d.engine(n_parallel=1) if s.judge == "serving" else None))
    try:
        if once:
            report = worker.tick()
            for line in report.lines():
                typer.echo(line)
            if report.published is not None:
                typer.echo(f"published {len(report.published.published)}, rejected {len(report.published.rejected)}"
                           + (f"; {report.synced.approved} approved in the dataset" if report.synced else ""))
            if worker.rounds.proc is not None:
                typer.echo(f"started a training round; output in {worker.rounds.log_path}")
                worker.rounds.proc.wait()
            return
        worker.run(threading.Event(), say=typer.echo, follow_seconds=FOLLOW_SECONDS)
    except KeyboardInterrupt:
        typer.echo("stopped")
    finally:
        d.close()


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
    import time

    from thresher.demo import run_demo, summary_lines

    try:
        summary = run_demo(data_dir, quick, typer.echo, keep_serving=serve_after, port=port, verbose=verbose)
    except FileExistsError as e:
        err.print(f"[red]error:[/red] {e}")
        raise typer.Exit(2) from None
    typer.echo("")
    for line in summary_lines(summary, serving=serve_after):
        typer.echo(line)
    if serve_after:
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            summary["server"].should_exit = True
