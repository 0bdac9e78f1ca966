"""A tiny real training round on the embedded model: killed mid-training and run again, it finishes; the exported
GGUF serves; the server switches to the promoted version without a restart; the registry can roll back."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from tests_helpers import bare_remote, git, judged

from thresher.config import Settings
from thresher.dataset_repo import DatasetRepo
from thresher.flywheel import publish
from thresher.registry import PROMOTED, Registry
from thresher.review import write_verdict
from thresher.store import Store

pytestmark = pytest.mark.slow

QA = [("What is the capital of France?", "The capital of France is Paris."),
      ("How many legs does a spider have?", "A spider has eight legs."),
      ("What gas do plants take in?", "Plants take in carbon dioxide and release oxygen."),
      ("What is 7 times 6?", "7 times 6 is 42."),
      ("Name a primary colour.", "Red is a primary colour, as are blue and yellow."),
      ("What is the boiling point of water in Fahrenheit?", "Water boils at 212 °F at sea level.")]


def _env(data_dir: Path, remote: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("THRESHER_")}
    return env | {"THRESHER_DATA_DIR": str(data_dir), "THRESHER_DATASET_REMOTE": str(remote), "THRESHER_JUDGE": "off",
                  "TOKENIZERS_PARALLELISM": "false"}


def approved_dataset(settings: Settings, remote: Path) -> None:
    """The QA conversations judged, published and approved by a reviewer, in the settings' store and dataset."""
    store = Store(settings.db_url)
    store.migrate()
    ids = [judged(store, q, a, 9.0) for q, a in QA]
    repo = DatasetRepo(settings.dataset_path, str(remote)).open()
    assert len(publish(store, repo, threshold=8.0).published) == len(QA)
    for conv_id in ids:
        write_verdict(repo, conv_id, "approve", "correct and clear", reviewer="ada")
    store.close()


@pytest.fixture(scope="module")
def finished_round(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    """Publish and approve a few conversations, start `thresher round --tiny`, kill it (SIGKILL) once the chat
    model has written a checkpoint, run it again to the end. Returns (data dir, remote, the second run's output)."""
    root = tmp_path_factory.mktemp("round")
    data_dir, remote = root / "data", bare_remote(root / "remote.git")
    approved_dataset(Settings(data_dir=data_dir, dataset_remote=str(remote), judge="off"), remote)

    cmd = [sys.executable, "-m", "thresher", "round", "--tiny"]
    first = subprocess.Popen(cmd, env=_env(data_dir, remote), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True, start_new_session=True)
    checkpoint = data_dir / "rounds" / "1" / "chat" / "checkpoints" / "checkpoint-1"
    deadline = time.monotonic() + 900
    while not (checkpoint / "trainer_state.json").exists():
        assert first.poll() is None, f"the round ended before its first checkpoint:\n{first.stdout.read()}"
        assert time.monotonic() < deadline, "no checkpoint within 15 minutes"
        time.sleep(0.5)
    time.sleep(1.0)  # let the checkpoint's files land; the kill may still hit mid-write, which resume must survive
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    first.stdout.close()
    second = subprocess.run(cmd, env=_env(data_dir, remote), capture_output=True, text=True, timeout=1800)
    assert second.returncode == 0, second.stdout + second.stderr
    return data_dir, remote, second.stdout


def test_a_killed_round_continues_from_its_checkpoint_and_finishes(finished_round) -> None:
    data_dir, remote, out = finished_round
    assert "round 1: continuing" in out
    chat_train = json.loads((data_dir / "rounds" / "1" / "chat" / "train.json").read_text())
    assert chat_train["resumed_from"] and chat_train["resumed_from"].endswith(("checkpoint-1", "checkpoint-2"))
    assert (data_dir / "rounds" / "1" / "judge" / "judge.json").exists()  # the judge's stage was done before
    state = json.loads((data_dir / "rounds" / "1" / "state.json").read_text())["stages"]
    assert list(state) == ["pinned", "data", "judge", "sft", "pairs", "dpo", "chat", "evaluated", "gated",
                           "published"]
    assert state["data"]["approved"] == len(QA)
    # Preference pairs from the SFT model's own replies, judged by the round's judge, then DPO from the SFT model
    pairs = [json.loads(x) for x in (data_dir / "rounds" / "1" / "pairs.jsonl").read_text().splitlines()]
    assert pairs and state["pairs"]["pairs"] == len(pairs) and {p["source"] for p in pairs} == {"on-policy"}
    assert all(p["chosen"] != p["rejected"] and p["prompt"][-1]["role"] == "user" for p in pairs)
    assert state["dpo"]["pairs"] == len(pairs) and (data_dir / "rounds" / "1" / "dpo" / "adapter").is_dir()
    assert state["chat"]["stage"] == "dpo" and "/dpo/export" in state["chat"]["spec"]
    # Evaluated by the frozen judge shipped with thresher, not by the judge this round trained
    ev = state["evaluated"]
    assert ev["eval_judge"] != state["judge"]["version"] and ev["eval_judge"].startswith("head-")
    assert ev["position_bias"] == 0.5 and ev["judge_mean_new"] is not None
    assert (data_dir / "rounds" / "1" / "chat" / "loss.png").stat().st_size > 1000


def test_the_round_is_recorded_in_the_dataset_repository(finished_round, tmp_path: Path) -> None:
    data_dir, remote, _ = finished_round
    clone = tmp_path / "check"
    subprocess.run(["git", "clone", "-q", str(remote), str(clone)], check=True)
    record = json.loads((clone / "rounds" / "1.json").read_text())
    assert record["commit"] == git(clone, "rev-list", "-n1", "HEAD~1")  # the pinned commit precedes the record
    assert record["counts"]["approved"] == len(QA)
    assert record["judge"]["before_auc"] is not None and record["judge"]["after_auc"] is not None
    assert "family:relevance" in record["judge"]["by_family"]  # the same figures, by failure family
    assert set(record["gate"]) == {"chat", "judge"} and 0 <= record["evaluation"]["win_rate"] <= 1
    # The on-policy pairs are published beside the record, each traced to the conversation its prompt came from
    pairs = [json.loads(x) for x in (clone / "rounds" / "1-pairs.jsonl").read_text().splitlines()]
    assert pairs and record["pairs"]["pairs"] == len(pairs)
    published = {p.name.removesuffix(".json") for p in (clone / "conversations").rglob("*.json")}
    assert all(p["source"] == "on-policy" and (p["conversation"] is None or p["conversation"] in published)
               for p in pairs)


def test_versions_carry_lineage_and_the_export_serves(finished_round, embedded_engine) -> None:
    from thresher.engines import ChatParams, load

    data_dir, _, _ = finished_round
    reg = Registry(data_dir / "models")
    chat, judge = reg.versions("chat")[0], reg.versions("judge")[0]
    assert chat.status == PROMOTED and judge.status == PROMOTED  # the tiny round's gate lets anything through
    assert chat.judge_version == judge.id and chat.round == 1 and chat.data_commit
    export = Path(chat.path)
    card = (export / "README.md").read_text()
    assert chat.data_commit in card and "base_model:" in card
    assert "dpo" in card and "preference pairs" in card  # the candidate is the DPO model ...
    assert "## Evaluation" in card and "frozen evaluation judge" in card and "noise" in card  # ... with its figures
    assert (export / "hf" / "model.safetensors").exists()
    engine = load(chat.spec)
    reply = "".join(c.text for c in engine.stream_chat([{"role": "user", "content": "What is 2 + 2?"}],
                                                       ChatParams(max_tokens=12, temperature=0.0, seed=0)))
    assert reply.strip()  # a GGUF that llama.cpp loads and that answers


def test_the_server_switches_to_the_promoted_version_and_back_without_a_restart(finished_round, tmp_path: Path,
                                                                                  embedded_engine,
                                                                                  monkeypatch) -> None:
    from conftest import LiveServer

    from thresher import follow
    from thresher.server import create_app

    data_dir, remote, _ = finished_round
    reg = Registry(data_dir / "models")
    chat = reg.current("chat")
    monkeypatch.setattr(follow, "FOLLOW_SECONDS", 0.5)
    settings = Settings(data_dir=data_dir, judge="off", dataset_remote=str(remote))
    store = Store(settings.db_url)
    with LiveServer(create_app(settings, engine=embedded_engine)) as live:
        def served() -> str:
            model = httpx.get(f"{live.url}/v1/models", timeout=60).json()["data"][0]["id"]
            r = httpx.post(f"{live.url}/v1/chat/completions", timeout=60, json={
                "model": model, "max_tokens": 4, "messages": [{"role": "user", "content": "Hi"}],
                "thresher_publish": False})
            assert r.status_code == 200, r.text
            return store.get(r.headers["x-thresher-conversation"]).model_version

        def wait_for(version: str) -> None:
            deadline = time.monotonic() + 60
            while served() != version:
                assert time.monotonic() < deadline, f"still not serving {version}"
                time.sleep(0.5)

        wait_for(load_version(chat.spec))
        reg.rollback("chat")
        wait_for(embedded_engine.version)
    store.close()


def load_version(spec: str) -> str:
    from thresher.engines import file_version

    return file_version(Path(spec.removeprefix("llama.cpp:")))


def test_with_few_approved_conversations_preference_training_starts_from_the_serving_model(tmp_path: Path) -> None:
    """No SFT below `sft_min_approved`: the pairs are the serving model's own replies and DPO starts from its
    weights; with too few pairs for DPO as well, the round falls back to SFT so there is still a candidate."""
    from dataclasses import replace

    from thresher.train.round import RoundConfig, run_round

    remote = bare_remote(tmp_path / "remote.git")
    settings = Settings(data_dir=tmp_path / "data", dataset_remote=str(remote), judge="off")
    approved_dataset(settings, remote)
    said: list[str] = []
    record = run_round(settings, replace(RoundConfig.tiny(), sft_min_approved=100), progress=said.append)
    state = json.loads((settings.data_dir / "rounds" / "1" / "state.json").read_text())["stages"]
    assert state["sft"]["skipped"] == f"{state['data']['train']} approved conversations, fewer than 100"
    assert state["sft"]["spec"] == "embedded" and not (settings.data_dir / "rounds" / "1" / "chat").exists()
    assert any("no SFT" in m for m in said) and any("sampling" in m for m in said)
    assert record.chat.stage == "dpo" and record.chat.examples == 0 and state["dpo"]["pairs"] > 0
    assert "/rounds/1/dpo/export" in record.chat.spec
    # Round 2, from the promoted DPO model, finds no pair it may train on: SFT after all
    record = run_round(settings, replace(RoundConfig.tiny(), sft_min_approved=100, min_pairs=10**6),
                       progress=said.append)
    state = json.loads((settings.data_dir / "rounds" / "2" / "state.json").read_text())["stages"]
    assert state["sft"]["skipped"] is None and state["dpo"]["skipped"] and record.chat.stage == "sft"
    assert record.chat.examples > 0 and "/rounds/2/chat/export" in record.chat.spec
    assert any("SFT on the approved conversations after all" in m for m in said)


def test_a_rounds_stages_are_typed_records_and_older_state_files_still_read(tmp_path: Path) -> None:
    from thresher.evaluate import Gate, apply_gate
    from thresher.train.state import DataStage, Evaluation, GateStage, JudgeStage, Pin, RoundState, SftStage

    state = RoundState(tmp_path)
    pin = Pin(commit="c0ffee", base="hf/base", base_gguf=None, parent=None, serving="embedded",
              serving_judge="head:/j", serving_judge_id="judge-1")
    state.mark("pinned", pin)
    assert RoundState(tmp_path).pin() == pin  # through state.json
    # A state file from before the judge was pinned (a killed round resumed after an upgrade)
    older = {"commit": None, "base": "hf/base", "base_gguf": "/m.gguf", "parent": "chat-1",
             "serving": "llama.cpp:/m.gguf"}
    (tmp_path / "state.json").write_text(json.dumps({"stages": {"pinned": older}}))
    old = RoundState(tmp_path).pin()
    assert (old.serving_judge, old.serving_judge_id, old.base_gguf) == ("llama.cpp:/m.gguf", None, "/m.gguf")
    judge = JudgeStage("judge-r1-x", before_auc=0.7, after_auc=0.8, gain=0.1, by_family={"all": 0.8})
    state = RoundState(tmp_path)
    state.mark("judge", judge)
    state.data["stages"]["sft"] = {"spec": "hf:/x", "hf": "/x", "out": "/o", "examples": 3, "tokens_per_second": 9.0,
                                   "final_loss": 1.5, "a_field_gone_since": 1}  # as a newer or older run wrote it
    state.mark("data", {"approved": 3})  # writes the file, with the sft record above
    again = RoundState(tmp_path)
    assert again.get("judge") == judge and again.get("sft") == SftStage("hf:/x", "/x", "/o", 3, 9.0, 1.5)
    assert again.get("data") == DataStage(approved=3)
    # The evaluation and the gate read back typed, from the JSON the dashboard reads too
    ev = Evaluation(win_rate=0.55, lc_win_rate=0.52, prompts=60, replies_new={"loop_rate": 0.1, "cutoff_rate": 0.2},
                    replies_serving={"loop_rate": 0.02, "cutoff_rate": 0.3}, heldout_conversations=4)
    gate = GateStage(apply_gate({"win_rate": 0.52, **ev.increases()}, Gate()), apply_gate({"judge_auc": 0.4}, Gate()))
    again.mark("evaluated", ev)
    again.mark("gated", gate)
    again.mark("by_hand", {"note": "x"})
    last = RoundState(tmp_path)
    assert last.get("evaluated") == ev and last.get("gated") == gate
    assert ev.increases() == pytest.approx({"loop_increase": 0.08, "cutoff_increase": -0.1})
    assert not gate.chat.passed and gate.chat.reasons == ["loop_increase 0.080 is not <= 0.05"]
    assert not gate.judge.passed and gate.judge.reasons == ["judge_auc 0.400 is not >= 0.5"]
    assert last.get("by_hand") == {"note": "x"} and last.raw("evaluated")["lc_win_rate"] == 0.52  # as written


def test_the_base_models_reply_rates_are_measured_once_and_kept_for_later_rounds(tmp_path: Path) -> None:
    from thresher.config import Settings
    from thresher.engines import ChatParams
    from thresher.train.round import RoundConfig, _base_rates
    from thresher.train.state import Pin

    settings, config = Settings(data_dir=tmp_path), RoundConfig.tiny()
    params = ChatParams(temperature=settings.temperature)
    first = Pin(commit=None, base="/m", base_gguf=None, parent=None, serving="embedded", serving_judge="embedded",
                serving_judge_id=None)
    served = {"loop_rate": 0.1, "cutoff_rate": 0.2, "empty_rate": 0.0, "off_language_rate": 0.0, "mean_words": 30.0}
    prompts = ["What is the capital of France?", "Name a primary colour."]
    assert _base_rates(settings, config, tmp_path, first, prompts, params, served) == {}  # the serving model's
    later = Pin(**{**vars(first), "parent": "chat-r1", "serving": "llama.cpp:/r1.gguf"})
    assert _base_rates(settings, config, tmp_path, later, prompts, params, {}) == served  # kept, not measured again
    kept = json.loads((tmp_path / "base_rates.json").read_text())
    other = _base_rates(settings, config, tmp_path, later, prompts[:1], params, {})  # other prompts: measured now
    assert set(other) == set(served) and 0 < other["mean_words"] <= config.eval_tokens
    assert len(json.loads((tmp_path / "base_rates.json").read_text())) == len(kept) + 1
    (tmp_path / "base_rates.json").write_text("{torn")
    assert _base_rates(settings, config, tmp_path, first, prompts, params, served) == {}
    assert list(json.loads((tmp_path / "base_rates.json").read_text()).values()) == [served]


def test_a_round_measures_its_judge_against_the_one_the_server_judges_with(tmp_path: Path) -> None:
    """After a chat model without a head of its own is promoted, the server goes on judging with the head shipped
    for the embedded model, over the embedded model's states; a round compares its new judge with that head (it
    compared with the promoted model's rubric rating, found nothing to compare, and promoted a 160-row judge)."""
    from thresher.config import Settings
    from thresher.reward import default_head_path
    from thresher.train.preference import serving_judge
    from thresher.train.state import Pin

    after_promotion = Pin(commit="c", base="/m/r2/hf", base_gguf=None, parent="chat-r2", serving="llama.cpp:/r2.gguf",
                          serving_judge="llama.cpp:/r2.gguf", serving_judge_id=None)
    assert serving_judge(Settings(data_dir=tmp_path), after_promotion.promoted_judge) == f"head:{default_head_path()}"
    promoted_judge = Pin(**{**vars(after_promotion), "serving_judge": "head:/j3", "serving_judge_id": "judge-r3"})
    assert serving_judge(Settings(data_dir=tmp_path), promoted_judge.promoted_judge) == "head:/j3"
    assert serving_judge(Settings(data_dir=tmp_path, model="hf:some/model"), None) == "serving"
    # a judge named in the settings is what the server judges with (`follow.judge_from_settings`), so the round too
    assert serving_judge(Settings(data_dir=tmp_path, model="hf:some/model", judge="head:/mine"), None) == "head:/mine"
