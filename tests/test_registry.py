"""The model registry: versions, lineage, promotion, rollback; and the promotion gate."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict
from pathlib import Path

import httpx
import pytest
from conftest import ScriptedEngine

from thresher.evaluate import Gate, apply_gate
from thresher.registry import REJECTED, RETIRED, Registry, RegistryError, Version


def _v(vid: str, kind: str = "chat", rnd: int = 1, parent: str | None = None) -> Version:
    return Version(vid, kind, f"llama.cpp:/models/{vid}.gguf", rnd, parent, "abc123", "judge-r1", {"win_rate": 0.6})


def test_versions_keep_their_lineage_across_instances(tmp_path: Path) -> None:
    Registry(tmp_path).add(_v("chat-r1"))
    Registry(tmp_path).add(_v("chat-r2", rnd=2, parent="chat-r1"))
    again = Registry(tmp_path)
    assert [v.id for v in again.versions("chat")] == ["chat-r1", "chat-r2"]
    assert again.get("chat-r2").parent == "chat-r1" and again.get("chat-r2").data_commit == "abc123"
    assert [v.round for v in again.versions()] == [1, 2]
    with pytest.raises(RegistryError, match="already registered"):
        again.add(_v("chat-r1"))
    with pytest.raises(RegistryError, match="no model version"):
        again.get("nope")


def test_promote_retires_the_previous_version_and_rollback_walks_back(tmp_path: Path) -> None:
    r = Registry(tmp_path)
    for vid in ("a", "b", "c"):
        r.add(_v(vid))
    r.add(_v("j", kind="judge"))
    assert r.current("chat") is None
    r.promote("a")
    r.promote("b")
    r.promote("j")
    r.promote("c")
    assert r.current("chat").id == "c" and r.get("b").status == RETIRED
    assert r.current("judge").id == "j"  # kinds are independent
    assert r.rollback("chat").id == "b"
    assert r.rollback("chat").id == "a"
    assert r.rollback("chat") is None  # back to the configured model
    assert r.current("chat") is None
    with pytest.raises(RegistryError, match="nothing to roll back"):
        r.rollback("chat")
    assert r.current("judge").id == "j"
    assert [h["action"] for h in r.history()].count("rollback") == 3


def test_a_rejected_version_records_why(tmp_path: Path) -> None:
    r = Registry(tmp_path)
    r.add(_v("a"))
    assert r.reject("a", "win_rate 0.31 is not >= 0.5").status == REJECTED
    assert r.current("chat") is None and "win_rate" in r.get("a").reason


def test_a_corrupt_registry_file_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "registry.json").write_text("{not json")
    with pytest.raises(RegistryError, match="not valid JSON"):
        Registry(tmp_path).versions()


def test_files_in_the_data_dir_are_kept_relative_to_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """So `thresher serve` started from any working folder serves the promoted model."""
    data = tmp_path / "data"
    gguf = data / "rounds" / "1" / "chat" / "export" / "m.gguf"
    gguf.parent.mkdir(parents=True)
    gguf.write_bytes(b"GGUF")
    head = data / "rounds" / "1" / "judge"
    head.mkdir()
    outside = tmp_path / "elsewhere.gguf"
    outside.write_bytes(b"GGUF")
    monkeypatch.chdir(tmp_path)
    reg = Registry(Path("data") / "models")  # a relative data dir, as the default one is
    reg.add(Version("chat-r1", "chat", "llama.cpp:data/rounds/1/chat/export/m.gguf", path="data/rounds/1/chat/export"))
    reg.add(Version("judge-r1", "judge", "head:data/rounds/1/judge"))
    reg.add(Version("judge-rating", "judge", f"rating:llama.cpp:{gguf}"))
    reg.add(Version("chat-outside", "chat", "llama.cpp:elsewhere.gguf"))
    for vid, spec in (("chat-hub", "hf:HuggingFaceTB/SmolLM2-135M-Instruct"), ("chat-remote", "openai:http://h:1/v1#m"),
                      ("chat-embedded", "embedded")):
        reg.add(Version(vid, "chat", spec))
    written = {v["id"]: v for v in json.loads((data / "models" / "registry.json").read_text())["versions"]}
    assert written["chat-r1"]["spec"] == "llama.cpp:rounds/1/chat/export/m.gguf"
    assert written["chat-r1"]["path"] == "rounds/1/chat/export"
    assert written["judge-r1"]["spec"] == "head:rounds/1/judge"
    assert written["judge-rating"]["spec"] == "rating:llama.cpp:rounds/1/chat/export/m.gguf"
    assert written["chat-outside"]["spec"] == f"llama.cpp:{outside.resolve()}"
    assert {written[v]["spec"] for v in ("chat-hub", "chat-remote", "chat-embedded")} == {
        "hf:HuggingFaceTB/SmolLM2-135M-Instruct", "openai:http://h:1/v1#m", "embedded"}

    monkeypatch.chdir(head)  # another working folder
    again = Registry(data / "models")
    assert again.get("chat-r1").spec == f"llama.cpp:{gguf.resolve()}" and again.get("chat-r1").path == str(
        gguf.parent.resolve())
    assert again.get("judge-r1").spec == f"head:{head.resolve()}"
    assert again.get("judge-rating").spec == f"rating:llama.cpp:{gguf.resolve()}"
    assert again.get("chat-hub").spec == "hf:HuggingFaceTB/SmolLM2-135M-Instruct"
    again.promote("chat-r1")
    assert again.current("chat").spec == f"llama.cpp:{gguf.resolve()}"


def test_older_entries_are_read_as_they_were_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "thresher-data"
    old = data / "rounds" / "1" / "m.gguf"
    old.parent.mkdir(parents=True)
    old.write_bytes(b"GGUF")
    (data / "models").mkdir()
    entries = [Version("old-relative", "chat", "llama.cpp:thresher-data/rounds/1/m.gguf"),  # to the working folder
               Version("old-absolute", "chat", f"llama.cpp:{old}"),
               Version("gone", "chat", "llama.cpp:rounds/9/gone.gguf")]  # a file deleted since
    (data / "models" / "registry.json").write_text(json.dumps({"versions": [asdict(v) for v in entries],
                                                               "history": []}))
    monkeypatch.chdir(tmp_path)
    reg = Registry(Path("thresher-data") / "models")
    assert reg.get("old-relative").spec == "llama.cpp:thresher-data/rounds/1/m.gguf"
    assert reg.get("old-absolute").spec == f"llama.cpp:{old}"
    assert reg.get("gone").spec == f"llama.cpp:{(data / 'rounds' / '9' / 'gone.gguf').resolve()}"  # where it belongs


def test_a_promoted_model_whose_file_is_missing_warns_once(serve, settings, caplog: pytest.LogCaptureFixture) -> None:
    """The serving model stays, the log gets one warning (not a traceback every few seconds), and the dashboard
    says what really serves."""
    reg = Registry(settings.data_dir / "models")
    reg.add(Version("chat-r9", "chat", f"llama.cpp:{settings.data_dir / 'rounds' / '9' / 'gone.gguf'}"))
    reg.promote("chat-r9")
    caplog.set_level(logging.WARNING, logger="thresher")
    with serve(ScriptedEngine()) as srv:
        state = srv.server.config.app.state
        deadline = time.monotonic() + 10
        while not state.rt.model_problems and time.monotonic() < deadline:  # the follower's first look
            time.sleep(0.05)
        assert [state.follower.check() for _ in range(3)] == [[], [], []]
        answer = httpx.post(srv.url + "/v1/chat/completions", timeout=30,
                            json={"model": "scripted", "messages": [{"role": "user", "content": "Hi"}]})
        page = httpx.get(srv.url + "/dashboard").text
        reg.rollback("chat")
        assert state.follower.check() == [] and state.rt.model_problems == {}
    said = [r for r in caplog.records if "chat-r9" in r.getMessage()]
    assert len(said) == 1 and said[0].levelno == logging.WARNING and not said[0].exc_info
    assert "no GGUF file" in said[0].getMessage() and "still serving the configured model (scripted@1)" in said[
        0].getMessage()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert answer.status_code == 200 and answer.json()["system_fingerprint"] == "scripted@1"
    assert "chat-r9 is promoted but could not be loaded" in page and "still serving the configured model" in page


def test_the_gate_passes_only_when_every_measured_check_passes() -> None:
    gate = Gate(min_win_rate=0.5, max_loss_ratio=1.0, min_judge_auc=0.6, min_judge_gain=0.0)
    ok = apply_gate({"win_rate": 0.55, "loss_ratio": 0.97}, gate)
    assert ok.passed and not ok.reasons and ok.checks["judge_auc"]["passed"] is None
    worse = apply_gate({"win_rate": 0.45, "loss_ratio": 1.02}, gate)
    assert not worse.passed and len(worse.reasons) == 2 and "win_rate 0.450" in worse.reasons[0]
    assert not apply_gate({"judge_auc": 0.58, "judge_gain": 0.1}, gate).passed
    nothing = apply_gate({}, gate)
    assert not nothing.passed and nothing.reasons == ["nothing was measured"]


def test_a_candidate_whose_replies_shrank_is_not_promoted_on_its_win_rate() -> None:
    """The round's third candidate in bench/rounds.py won 0.53 (length-controlled) against the serving model with
    replies of 54 words against 95: the gate holds a reply length within 25% of the serving model's."""
    from thresher.train.state import Evaluation

    ev = Evaluation(win_rate=0.58, lc_win_rate=0.53, prompts=60,
                    replies_new={"loop_rate": 0.10, "cutoff_rate": 0.05, "mean_words": 54.0},
                    replies_serving={"loop_rate": 0.15, "cutoff_rate": 0.07, "mean_words": 95.0})
    shrank = apply_gate({"win_rate": ev.lc_win_rate, **ev.increases()}, Gate())
    assert not shrank.passed and shrank.reasons == ["length_change 0.432 is not <= 0.25"]
    ev.replies_new["mean_words"] = 80.0  # 16% shorter
    assert apply_gate({"win_rate": ev.lc_win_rate, **ev.increases()}, Gate()).passed


def test_a_promoted_models_successor_is_held_to_the_base_models_length_and_loops_too(tmp_path: Path) -> None:
    """bench/rounds.py: round 1 kept 0.91x the base's length, round 2 0.80x of round 1's, each within 25% of the
    serving model's, and the replies were left at 0.72x the base's: the gate compares with the base as well."""
    from thresher.train.export import add_evaluation
    from thresher.train.state import Evaluation

    ev = Evaluation(lc_win_rate=0.56, prompts=60,
                    replies_new={"loop_rate": 0.08, "cutoff_rate": 0.03, "mean_words": 74.0},
                    replies_serving={"loop_rate": 0.17, "cutoff_rate": 0.12, "mean_words": 93.0},
                    replies_base={"loop_rate": 0.02, "cutoff_rate": 0.25, "mean_words": 102.0})
    assert ev.increases() == pytest.approx({
        "loop_increase": -0.09, "cutoff_increase": -0.09, "length_change": 1 - 74 / 93,
        "base_loop_increase": 0.06, "base_cutoff_increase": -0.22, "base_length_change": 1 - 74 / 102})
    drifted = apply_gate({"win_rate": ev.lc_win_rate, **ev.increases()}, Gate())
    assert not drifted.passed and drifted.reasons == ["base_loop_increase 0.060 is not <= 0.05",
                                                      "base_length_change 0.275 is not <= 0.25"]
    assert drifted.checks["length_change"]["passed"] and drifted.checks["loop_increase"]["passed"]
    first = Evaluation(lc_win_rate=0.56, prompts=60, replies_new=ev.replies_new, replies_serving=ev.replies_base)
    assert not any(k.startswith("base_") for k in first.increases())  # round 1: the serving model is the base
    card = tmp_path / "README.md"
    card.write_text("# chat-r2\n")
    add_evaluation(card, ev)
    add_evaluation(card, ev)  # once
    text = card.read_text()
    assert text.count("## Evaluation") == 1 and "(noise" not in text
    assert "- against the base model: loops 2% -> 8%, cut off 25% -> 3%, mean length 102 -> 74 words" in text
    card.write_text("# chat-r1\n")
    add_evaluation(card, first)
    assert "against the base model" not in card.read_text()
