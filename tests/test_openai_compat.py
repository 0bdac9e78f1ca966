"""Real clients against a real server on 127.0.0.1 with the real embedded model: the official `openai` Python
client, the external conformance suite `llm-comply`, and Simon Willison's `llm` CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from openai import OpenAI

pytestmark = pytest.mark.slow

MODEL = "SmolLM2-135M-Instruct"


@pytest.fixture
def live(serve, embedded_engine):
    with serve(embedded_engine, max_tokens_default=96) as srv:
        yield srv


def client(srv) -> OpenAI:
    return OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0)


def test_openai_client_non_streaming(live) -> None:
    r = client(live).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "What is the capital of France?"}], max_tokens=40,
        seed=7, temperature=0.2,
    )
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content.strip()
    assert r.choices[0].finish_reason in ("stop", "length")
    assert r.usage.prompt_tokens > 10 and 0 < r.usage.completion_tokens <= 40
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_openai_client_streaming_with_usage(live) -> None:
    stream = client(live).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Name three colours."}], max_tokens=30, stream=True,
        stream_options={"include_usage": True}, seed=1,
    )
    pieces, usage, finish = [], None, None
    for event in stream:
        if event.choices:
            pieces.append(event.choices[0].delta.content or "")
            finish = event.choices[0].finish_reason or finish
        if event.usage:
            usage = event.usage
    assert len([p for p in pieces if p]) > 3  # really streamed, not one blob
    assert finish in ("stop", "length")
    assert usage is not None and usage.completion_tokens > 0


def test_openai_client_multi_turn_is_one_conversation(live) -> None:
    c = client(live)
    history = [{"role": "system", "content": "You are brief."}, {"role": "user", "content": "My name is Ada."}]
    first = c.chat.completions.with_raw_response.create(model=MODEL, messages=history, max_tokens=30, seed=3)
    history.append({"role": "assistant", "content": first.parse().choices[0].message.content})
    history.append({"role": "user", "content": "What is my name?"})
    second = c.chat.completions.with_raw_response.create(model=MODEL, messages=history, max_tokens=30, seed=3)
    cid = first.headers["x-thresher-conversation"]
    assert second.headers["x-thresher-conversation"] == cid
    conv = live.server.config.app.state.rt.store.get(cid)
    assert [m.role for m in conv.messages] == ["system", "user", "assistant", "user", "assistant"]
    assert conv.messages[-1].content == second.parse().choices[0].message.content


def test_openai_client_errors(live) -> None:
    import openai

    with pytest.raises(openai.NotFoundError):
        client(live).chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.BadRequestError):
        client(live).chat.completions.create(model=MODEL, messages=[])


def test_llm_comply_conformance(live, tmp_path: Path) -> None:
    tests = ["chat-basic-response", "chat-system-prompt", "chat-multi-turn", "chat-streaming-response",
             "chat-streaming-usage", "chat-error-handling"]
    out = subprocess.run(
        [str(Path(sys.executable).parent / "llm-comply"), "--format", "openai-chat", "-u", live.url + "/v1",
         "-k", "unused", "-m", MODEL, "-f", ",".join(tests), "--json"],
        capture_output=True, text=True, timeout=300,
    )
    assert out.stdout.strip(), out.stderr[-2000:]
    report = json.loads(out.stdout)
    by_id = {r["id"]: r for r in report["results"]}
    assert set(tests) <= set(by_id), out.stdout[:2000]
    failed = {t: by_id[t] for t in tests if by_id[t]["status"] != "passed"}
    assert not failed, json.dumps(failed, indent=1)[:3000]
    assert report["summary"]["passed"] == len(tests)


def test_llm_cli_chats_with_the_server(live, tmp_path: Path) -> None:
    (tmp_path / "extra-openai-models.yaml").write_text(
        f"- model_id: thresher\n  model_name: {MODEL}\n  api_base: \"{live.url}/v1\"\n"
    )
    env = os.environ | {"LLM_USER_PATH": str(tmp_path), "OPENAI_API_KEY": "unused"}
    llm = Path(sys.executable).parent / "llm"
    out = subprocess.run([str(llm), "-m", "thresher", "-o", "max_tokens", "30", "Say hello."],
                         capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip()
    convs = live.server.config.app.state.rt.store.list()
    assert any(c.messages[-1].content.strip() == out.stdout.strip() for c in convs)
