"""The model registry: versions, lineage, promotion, rollback; and the promotion gate."""

from __future__ import annotations

from pathlib import Path

import pytest

from thresher.evaluate import Gate, apply_gate, pairwise_win_rate
from thresher.registry import REJECTED, RETIRED, Registry, RegistryError, Version


def _v(vid: str, kind: str = "chat", rnd: int = 1, parent: str | None = None) -> Version:
    return Version(vid, kind, f"llama.cpp:/models/{vid}.gguf", rnd, parent, "abc123", "judge-r1", {"win_rate": 0.6})


def test_versions_keep_their_lineage_across_instances(tmp_path: Path) -> None:
    Registry(tmp_path).add(_v("chat-r1"))
    Registry(tmp_path).add(_v("chat-r2", rnd=2, parent="chat-r1"))
    again = Registry(tmp_path)
    assert [v.id for v in again.versions("chat")] == ["chat-r1", "chat-r2"]
    assert again.get("chat-r2").parent == "chat-r1" and again.get("chat-r2").data_commit == "abc123"
    assert again.next_round() == 3
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


def test_the_gate_passes_only_when_every_measured_check_passes() -> None:
    gate = Gate(min_win_rate=0.5, max_loss_ratio=1.0, min_judge_auc=0.6, min_judge_gain=0.0)
    ok = apply_gate({"win_rate": 0.55, "loss_ratio": 0.97}, gate)
    assert ok.passed and not ok.reasons and ok.checks["judge_auc"]["passed"] is None
    worse = apply_gate({"win_rate": 0.45, "loss_ratio": 1.02}, gate)
    assert not worse.passed and len(worse.reasons) == 2 and "win_rate 0.450" in worse.reasons[0]
    assert not apply_gate({"judge_auc": 0.58, "judge_gain": 0.1}, gate).passed
    nothing = apply_gate({}, gate)
    assert not nothing.passed and nothing.reasons == ["nothing was measured"]


class FirstSlotJudge:
    """A judge that always prefers whichever answer is shown first (pure position bias)."""

    def next_token_probs(self, messages, choices, prefix=""):
        return {"A": 0.9, "B": 0.1}


class LongerAnswerJudge:
    def next_token_probs(self, messages, choices, prefix=""):
        import json

        quoted = json.loads(messages[1]["content"].split("\n\nWhich answer")[0])
        a, b = len(quoted["answer_A"]), len(quoted["answer_B"])
        return {"A": 0.8, "B": 0.2} if a > b else {"A": 0.2, "B": 0.8}


def test_both_answer_orders_cancel_position_bias() -> None:
    prompts, new, old = ["q1", "q2"], ["a long new answer", "same"], ["old", "same"]
    biased = pairwise_win_rate(FirstSlotJudge(), prompts, new, old)
    assert biased.win_rate == pytest.approx(0.5) and biased.ties == 1 and biased.position_bias == pytest.approx(0.9)
    prefers_new = pairwise_win_rate(LongerAnswerJudge(), prompts, new, old)
    assert prefers_new.win_rate == pytest.approx((0.8 + 0.5) / 2)
    assert prefers_new.examples[0]["p_new"] == pytest.approx(0.8)
