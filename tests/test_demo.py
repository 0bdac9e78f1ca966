"""The flywheel's glue: when a round is due, settings handed to a child process, and `thresher demo --quick` end to
end (simulated users through the real API, judge, publish to a bare repository, a simulated reviewer, one round)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from tests_helpers import git

from thresher.config import Settings
from thresher.flywheel import RoundRunner, approved_since_last_round


def _round(data_dir: Path, n: int, approved: int, finished: bool) -> None:
    d = data_dir / "rounds" / str(n)
    d.mkdir(parents=True)
    stages = {"data": {"approved": approved}} | ({"published": {"pushed": True}} if finished else {})
    (d / "state.json").write_text(json.dumps({"stages": stages}))


def test_a_round_is_due_after_enough_new_approvals_or_when_one_is_unfinished(tmp_path: Path) -> None:
    runner = RoundRunner(tmp_path, min_new_approved=10)
    assert not runner.due(9) and runner.due(10)
    _round(tmp_path, 1, 10, finished=True)
    assert approved_since_last_round(tmp_path, 15) == 5
    assert not runner.due(15) and runner.due(20)
    _round(tmp_path, 2, 20, finished=False)
    assert runner.due(20)  # an unfinished round is continued whatever the count
    assert not RoundRunner(tmp_path, min_new_approved=0).due(10_000)  # 0: rounds only by hand


def test_settings_reach_a_child_process_unchanged(tmp_path: Path) -> None:
    s = Settings(data_dir=tmp_path, api_keys=["k1", "k2"], judge_threshold=6.5, public=False, gate_min_win_rate=0.6)
    code = "from thresher.config import Settings; s = Settings(); print(s.model_dump_json())"
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("THRESHER_")} | s.as_env()
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True,
                         cwd=tmp_path)
    assert json.loads(out.stdout) == json.loads(s.model_dump_json())


@pytest.mark.slow
def test_demo_quick_runs_the_whole_loop(tmp_path: Path) -> None:
    data_dir = tmp_path / "demo"
    res = subprocess.run([sys.executable, "-m", "thresher", "demo", "--quick", "--exit", "--data-dir", str(data_dir)],
                         capture_output=True, text=True, timeout=1800, cwd=tmp_path)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    assert "SIMULATED users" in res.stdout and "the SIMULATED reviewer's policy" in res.stdout
    # A newcomer's summary: what happened, what the figures mean, how to see it again; no raw training output.
    out = res.stdout + res.stderr
    assert "What happened:" in out and "What the figures mean:" in out
    assert "noise" in out and "no evidence" in out  # 2 prompts and a few dozen rows are said to be what they are
    assert "preference training on" in out and "frozen judge" in out
    assert "{'loss'" not in out and "it/s]" not in out and "s/it]" not in out, out[-3000:]
    assert "http://127.0.0.1:" not in out.split("What happened:")[1]  # no address of a server that has stopped
    config = data_dir.resolve() / "thresher.toml"
    assert f"THRESHER_CONFIG={config} thresher serve" in out
    assert "'loss'" in (data_dir / "demo.log").read_text()  # kept, not lost
    code = ("from thresher.config import Settings; s = Settings(); "
            "print(s.data_dir, s.dataset_remote, s.judge_threshold)")
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("THRESHER_")}
    again = subprocess.run([sys.executable, "-c", code], env=env | {"THRESHER_CONFIG": str(config)},
                           capture_output=True, text=True, check=True, cwd=tmp_path)
    assert again.stdout.split() == [str(data_dir.resolve()), str(data_dir.resolve() / "public-dataset.git"), "1.0"]
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(data_dir / "public-dataset.git"), str(clone)], check=True)
    published = list((clone / "conversations").rglob("*.json"))
    verdicts = list((clone / "reviews").rglob("simulated-reviewer.json"))
    assert published and len(verdicts) == len(published)
    assert all(json.loads(v.read_text())["reason"].startswith("[simulated reviewer]") for v in verdicts)
    record = json.loads((clone / "rounds" / "1.json").read_text())
    assert record["round"] == 1 and "Round 1" in git(clone, "log", "-1", "--format=%s")
    # a second demo into the same dir refuses instead of mixing data
    again = subprocess.run([sys.executable, "-m", "thresher", "demo", "--quick", "--exit", "--data-dir",
                            str(data_dir)], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert again.returncode == 2 and "fresh data dir" in again.stderr
