"""The `thresher` command: help, version, and clear errors for bad settings or a missing model."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from thresher import __version__
from thresher.cli import app

runner = CliRunner()


def test_version_and_help(settings) -> None:
    assert runner.invoke(app, ["--version"]).output.strip() == f"thresher {__version__}"
    result = runner.invoke(app, ["serve", "--help"])
    assert result.exit_code == 0 and "--model" in result.output


def test_serve_refuses_public_mode_without_admin_token(settings) -> None:
    result = runner.invoke(app, ["serve", "--public"])
    assert result.exit_code == 2
    assert "admin token" in result.output


def test_serve_reports_an_unloadable_model(settings, tmp_path) -> None:
    result = runner.invoke(app, ["serve", "--model", f"llama.cpp:{tmp_path / 'missing.gguf'}"])
    assert result.exit_code == 1
    assert "no GGUF file" in result.output



def test_serve_loads_the_model_with_the_settings_parallelism(settings, monkeypatch) -> None:
    """`n_parallel` reaches the engine `thresher serve` loads (it was left at the engine's default); with one
    sequence the embedded model is decoded from its own file, not from the 8-bit copy."""
    import uvicorn

    import thresher.server

    seen = {}
    monkeypatch.setattr(thresher.server, "create_app", lambda s, engine: seen.setdefault("engine", engine))
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: seen.setdefault("ran", kw["port"]))
    monkeypatch.setenv("THRESHER_N_PARALLEL", "1")
    result = runner.invoke(app, ["serve", "--port", "8123"])
    assert result.exit_code == 0, result.output
    assert seen["ran"] == 8123 and seen["engine"].n_parallel == 1 and seen["engine"].batch_file is None
    seen["engine"].close()

def _write(path, rows) -> None:
    import json

    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))


GOOD = [{"role": "user", "content": "What is the boiling point of water at sea level?"},
        {"role": "assistant", "content": "100 degrees Celsius, or 212 degrees Fahrenheit."}]
RUDE = [{"role": "user", "content": "What is the boiling point of water at sea level?"},
        {"role": "assistant", "content": "Look it up yourself."}]


@pytest.mark.slow
def test_judge_file_resumes_and_reports_bad_lines(settings, tmp_path) -> None:
    import json

    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    _write(src, [{"id": "a", "messages": GOOD}, "{broken", {"id": "b", "messages": RUDE}])
    out.write_text(json.dumps({"id": "a", "score": 9.0}) + "\n" + '{"id": "b", "sco')  # an earlier, killed run
    result = runner.invoke(app, ["judge", str(src), "--out", str(out), "--threshold", "5", "--rationale", "never"])
    assert result.exit_code == 0, result.output
    assert "line 2: not JSON" in result.output and "1 already in" in result.output
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert [x["id"] for x in lines] == ["a", "b"]  # the cut-off line was replaced, "a" not judged twice
    b = lines[1]
    assert set(b) >= {"id", "score", "accepted", "rationale", "flags"} and 1 <= b["score"] <= 10
    assert b["accepted"] == (b["score"] >= 5)


@pytest.mark.slow
def test_judge_eval_prints_metrics_and_plots(settings, tmp_path) -> None:
    src = tmp_path / "labelled.jsonl"
    _write(src, [{"id": 1, "messages": GOOD, "label": "good", "human_score": 9},
                 {"id": 2, "messages": RUDE, "label": "bad", "human_score": 2},
                 {"id": 3, "score": 8.5, "label": "good"}, {"id": 4, "score": 3.0, "label": "bad"}])
    result = runner.invoke(app, ["judge-eval", str(src), "--threshold", "6", "--plot", str(tmp_path / "p.png")])
    assert result.exit_code == 0, result.output
    assert "conversations: 2 good, 2 bad, 2 with human scores" in result.output
    assert "AUC: " in result.output and "accuracy at threshold 6: " in result.output
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_judge_needs_a_file_or_pending(settings, tmp_path) -> None:
    assert runner.invoke(app, ["judge"]).exit_code == 2
    missing = runner.invoke(app, ["judge", str(tmp_path / "nope.jsonl")])
    assert missing.exit_code == 2 and "no such file" in missing.output


def test_status_shows_counts_and_scores(settings, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests_helpers import ended_conversations

    from thresher.judge import Judgment
    from thresher.store import Store

    store = Store(settings.db_url)
    store.migrate()
    ids = ended_conversations(store, 3)
    for i, cid in enumerate(ids[:2]):
        store.save_judgment(cid, Judgment(score=3.0 + 5 * i, status="ok", judge_id="j", rubric_hash="r"))
    store.close()
    assert "dataset:" not in runner.invoke(app, ["status", "--data-dir", str(settings.data_dir)]).output
    store = Store(settings.db_url)
    from thresher.store import Publication

    store.set_publications([Publication(ids[1], "published", path="p", pushed=False),
                            Publication(ids[0], "rejected", "score 3.00 below the threshold 8")])
    store.close()
    result = runner.invoke(app, ["status", "--data-dir", str(settings.data_dir)])
    assert result.exit_code == 0, result.output
    assert "conversations: ended 1, published 1, rejected 1" in result.output
    assert "dataset: published 1, rejected 1 (in " in result.output
    assert "no dataset_remote set, so nothing is pushed)" in " ".join(result.output.split())
    assert "judgments: ok 2" in result.output and "mean score: 5.50" in result.output
    assert "mean score: 5.50" in result.output


def _commands(group, path=()):
    """Every command of the CLI, with the words that call it."""
    import click

    for name, cmd in group.commands.items():
        if isinstance(cmd, click.Group):
            yield from _commands(cmd, (*path, name))
        else:
            yield (*path, name), cmd


def test_every_option_says_what_it_does_once_and_flags_take_no_value() -> None:
    import typer.main

    problems = []
    for words, cmd in _commands(typer.main.get_command(app)):
        for param in cmd.params:
            if param.param_type_name == "option" and not (param.help or "").strip():
                problems.append(f"{' '.join(words)} {param.opts[0]}: no description")
        shown = runner.invoke(app, [*words, "--help"], env={"COLUMNS": "200"}, terminal_width=200)
        assert shown.exit_code == 0, (words, shown.output)
        if "<bool>" in shown.output:
            problems.append(f"{' '.join(words)}: an on/off flag is shown as taking a value")
        for line in shown.output.splitlines():
            if line.count("[default:") > 1:
                problems.append(f"{' '.join(words)}: two defaults in {line.strip()!r}")
        for swallowed in ("//", "/.json"):  # a <placeholder> eaten as markup
            if swallowed in shown.output.replace("://", ""):
                problems.append(f"{' '.join(words)}: {swallowed!r} in its help")
    assert problems == []


def test_placeholders_survive_in_help() -> None:
    assert "rounds/N.json" in runner.invoke(app, ["round", "--help"], terminal_width=200).output
    assert "reviews/ID/YOU.json" in runner.invoke(app, ["review", "--help"], terminal_width=200).output


def test_serve_says_what_is_on_and_why_the_rest_is_off(settings) -> None:
    from thresher.server import serving_lines

    off = "\n".join(serving_lines(settings))
    assert "review page off: no reviewer tokens" in off and "from this machine only (no admin token" in off
    assert "judging off" in off
    on = settings.model_copy(update={"reviewer_tokens": ["ada@example.org:a-token-long-enough-1234"],
                                     "admin_token": "an-admin-token-of-some-length", "judge": "serving",
                                     "judge_threshold": 6.5, "dataset_remote": "/srv/dataset.git"})
    said = "\n".join(serving_lines(on))
    assert f"http://{on.host}:{on.port}/review (1 reviewer token(s))" in said
    assert "/dashboard (sign in with the admin token)" in said
    assert "with serving at threshold 6.5; publishing every 60 s to /srv/dataset.git" in said
