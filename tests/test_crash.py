"""`thresher serve` killed with SIGKILL mid-stream: after a restart the conversation and its partial answer are in
the store, the answer marked interrupted."""

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
from conftest import free_port

from thresher.conversation import INTERRUPTED, STREAMING
from thresher.store import Store

pytestmark = pytest.mark.slow


def start_server(data_dir: Path, port: int) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("THRESHER_")}
    log = data_dir.parent / "server.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "thresher", "serve", "--port", str(port), "--data-dir", str(data_dir)],
            env=env, stdout=out, stderr=subprocess.STDOUT, cwd=data_dir.parent,
        )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("server did not come up")


def test_sigkill_mid_stream_keeps_partial_answer(tmp_path: Path) -> None:
    data = tmp_path / "data"
    port = free_port()
    proc = start_server(data, port)
    received, conv_id = "", None
    try:
        body = {"model": "SmolLM2-135M-Instruct", "stream": True, "max_tokens": 1000, "seed": 11,
                "temperature": 0.8,
                "messages": [{"role": "user", "content": "Write a very long story about a dragon and a baker."}]}
        with httpx.stream("POST", f"http://127.0.0.1:{port}/v1/chat/completions", json=body, timeout=60) as r:
            conv_id = r.headers["x-thresher-conversation"]
            deltas = 0
            lines = r.iter_lines()  # kept open: leaving it would close the connection (a clean interrupt)
            for line in lines:
                if line.startswith("data: {"):
                    event = json.loads(line[6:])
                    piece = event["choices"][0]["delta"].get("content") if event["choices"] else None
                    if piece:
                        received += piece
                        deltas += 1
                if deltas == 20:
                    time.sleep(1.0)  # the server goes on generating and writes the growing reply
                    proc.send_signal(signal.SIGKILL)
                    proc.wait(timeout=30)
                    break
    finally:
        if proc.poll() is None:
            proc.kill()

    st = Store(f"sqlite:///{data / 'thresher.db'}")
    conv = st.get(conv_id)
    assert [m.role for m in conv.messages] == ["user", "assistant"]
    assert conv.messages[1].status == STREAMING  # nobody has cleaned up yet
    st.close()

    proc = start_server(data, port)  # the restart marks the cut-off reply interrupted
    try:
        st = Store(f"sqlite:///{data / 'thresher.db'}")
        partial = st.get(conv_id).messages[1]
        st.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert partial.status == INTERRUPTED
    assert len(partial.content) >= 20
    assert partial.content.startswith(received[:20]) and (
        received.startswith(partial.content) or partial.content.startswith(received)
    )
