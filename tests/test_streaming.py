"""Admission, queue positions and clients that leave, over a real server on 127.0.0.1: a full queue is a clean 503
with Retry-After (the API in the OpenAI shape, the chat page a plain "busy"), nothing is stored for a refused
request, the chat page is told how many are ahead, and a client that goes away (streaming or not, API or page)
stops its reply. Then a load test with the real model: fifty clients, every one answered or refused, none lost,
no work for those that left; and a SIGKILL under load loses no stored message."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from conftest import ScriptedEngine, free_port

from thresher.conversation import COMPLETE, INTERRUPTED
from thresher.engines import ChatParams, Chunk
from thresher.server.guard import ApiError
from thresher.server.streaming import Admission, relay
from thresher.store import Store

URL = "/v1/chat/completions"


@dataclass
class SlowEngine(ScriptedEngine):
    """A scripted engine that writes one reply at a time, slowly, says it waits first (`waits`), and counts the
    words it has written (what tells whether a reply went on after its client left)."""

    words: list[str] = field(default_factory=lambda: [f" w{i}" for i in range(400)])
    delay: float = 0.02
    n_parallel: int = 1
    waits: list[int] = field(default_factory=list)
    produced: int = 0

    def stream_chat(self, messages, params: ChatParams):
        for ahead in self.waits:
            yield Chunk(waiting=ahead)
        for chunk in super().stream_chat(messages, params):
            self.produced += bool(chunk.text)
            yield chunk


@dataclass
class PushingSlowEngine(SlowEngine):
    """The same, handing its chunks over as the llama.cpp engine does (`push_chat`, from a thread of its own), so
    the API reads it on its event loop."""

    def push_chat(self, messages, params: ChatParams, deliver):
        gone = threading.Event()

        def run() -> None:
            chunks = self.stream_chat(messages, params)
            try:
                while not gone.is_set():
                    chunk = next(chunks, None)
                    if chunk is None:
                        deliver(None)
                        return
                    if gone.is_set():
                        return
                    deliver(chunk)
            except Exception as e:  # as the real engine does: the error, handed over
                deliver(e)

        worker = threading.Thread(target=run, daemon=True)
        worker.start()

        def withdraw() -> None:
            gone.set()
            worker.join()  # nothing more is written once withdrawn (the real engine drops it at its next step)

        return withdraw


def rt_of(srv):
    return srv.server.config.app.state.rt


def api(srv, content: str, timeout: float | httpx.Timeout = 30, **body) -> httpx.Response:
    return httpx.post(srv.url + URL, json={"model": "scripted", "messages": [{"role": "user", "content": content}],
                                           **body}, timeout=timeout)


def sse_events(lines) -> list[tuple[str, dict]]:
    events, name = [], None
    for line in lines:
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            events.append((name, json.loads(line[6:])))
    return events


def wait_for(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_admission_bounds_the_replies_in_flight() -> None:
    admission, engine = Admission(max_queue=1), SlowEngine(n_parallel=2)
    tickets = [admission.admit(engine) for _ in range(3)]
    with pytest.raises(ApiError) as refused:
        admission.admit(engine)
    assert refused.value.status == 503 and refused.value.code == "server_busy"
    assert int(refused.value.headers["Retry-After"]) >= 1
    tickets.pop().release()
    tickets[0].release()
    tickets[0].release()  # giving a place back twice gives back one
    assert admission.held == 1
    del tickets  # a ticket dropped on the way gives its place back
    assert admission.held == 0


def test_a_full_queue_is_a_clean_503_and_stores_nothing(serve) -> None:
    engine = SlowEngine()
    with serve(engine, max_queue=0) as srv:
        with httpx.stream("POST", srv.url + URL, timeout=30, json={
                "model": "scripted", "stream": True, "messages": [{"role": "user", "content": "first"}]}) as held:
            wait_for(lambda: engine.produced > 0)
            refused = [api(srv, "second"), api(srv, "third", stream=True),
                       httpx.post(srv.url + "/api/chat", json={"content": "fourth"}, timeout=30)]
            for r in refused:
                assert r.status_code == 503
                assert int(r.headers["retry-after"]) >= 1
                error = r.json()["error"]
                assert set(error) == {"message", "type", "param", "code"} and error["code"] == "server_busy"
                assert "busy" in error["message"]
            held.close()
        wait_for(lambda: rt_of(srv).admission.held == 0)
        assert api(srv, "fifth", max_tokens=3).status_code == 200  # a place again
        stored = [m.content for c in rt_of(srv).store.list() for m in c.messages if m.role == "user"]
    assert sorted(stored) == ["fifth", "first"]


def test_the_chat_page_is_told_how_many_are_ahead(serve) -> None:
    with serve(SlowEngine(waits=[2, 1, 1, 0], words=["Hi", " there"])) as srv, httpx.stream(
            "POST", srv.url + "/api/chat", json={"content": "hello"}, timeout=30) as r:
        events = sse_events(r.iter_lines())
    names = [name for name, _ in events]
    assert names[:6] == ["meta", "queue", "queue", "queue", "queue", "delta"]
    assert [data["ahead"] for name, data in events if name == "queue"] == [2, 1, 0, None]
    assert names[-1] == "done" and events[-1][1]["finish_reason"] == "stop"


def test_a_relay_wakes_the_loop_once_for_what_arrived_meanwhile() -> None:
    """What the engine's thread hands over while the loop is busy (a step's pieces of every reply) arrives in one
    call on the loop, each reply's in order; anything later schedules another."""

    async def main() -> None:
        rl = relay()
        drains, drain = [], rl._drain
        rl._drain = lambda: (drains.append(1), drain())
        a, b = asyncio.Queue(), asyncio.Queue()
        sender = threading.Thread(target=lambda: [rl.send(q, i) for i in range(500) for q in (a, b)])
        sender.start()
        sender.join()  # holding the loop meanwhile, as a busy loop would be
        assert [await a.get() for _ in range(500)] == list(range(500)) == [await b.get() for _ in range(500)]
        assert len(drains) == 1 and a.empty() and b.empty()
        rl.send(a, "later")
        assert await a.get() == "later" and len(drains) == 2

    asyncio.run(main())


@pytest.mark.parametrize("how", ["api-stream", "api-plain", "page"])
@pytest.mark.parametrize("kind", [SlowEngine, PushingSlowEngine])
def test_a_client_that_leaves_stops_its_reply(serve, how: str, kind: type[SlowEngine]) -> None:
    engine = kind()
    with serve(engine) as srv:
        if how == "api-plain":
            with pytest.raises(httpx.ReadTimeout):  # the client gives up waiting and hangs up
                api(srv, "tell me", timeout=httpx.Timeout(30, read=0.5))
        else:
            url, body = ((srv.url + URL, {"model": "scripted", "stream": True,
                                          "messages": [{"role": "user", "content": "tell me"}]})
                         if how == "api-stream" else (srv.url + "/api/chat", {"content": "tell me"}))
            with httpx.stream("POST", url, json=body, timeout=30) as r:
                for line in r.iter_lines():
                    if "w0" in line:
                        break  # and hang up
        wait_for(lambda: rt_of(srv).admission.held == 0)
        produced = engine.produced
        time.sleep(0.3)
        assert engine.produced == produced < 100  # nothing more was written for it
        (conv,) = rt_of(srv).store.list()
    assert conv.messages[-1].status == INTERRUPTED and conv.messages[-1].content.startswith(" w0")


@pytest.mark.parametrize("kind", [SlowEngine, PushingSlowEngine])
def test_the_stop_button_stops_a_reply_and_continue_extends_it(serve, kind: type[SlowEngine]) -> None:
    engine = kind()
    with serve(engine) as srv, httpx.Client(base_url=srv.url, timeout=30) as page:  # the page's cookie kept
        with page.stream("POST", "/api/chat", json={"content": "count for me"}) as r:
            events, lines, conv_id = [], [], None
            for line in r.iter_lines():  # as they come
                lines.append(line)
                if not line.startswith("data: "):
                    continue
                events.append(name_data := sse_events(lines[-2:])[-1])
                if conv_id is None and name_data[0] == "delta" and "w3" in name_data[1]["text"]:
                    conv_id = events[0][1]["conversation_id"]
                    assert page.post(f"/api/conversations/{conv_id}/stop").json() == {"stopped": True}
        assert events[-1][0] == "done" and events[-1][1]["finish_reason"] == "interrupted"
        produced = engine.produced
        time.sleep(0.3)
        assert engine.produced == produced < 100
        store = rt_of(srv).store
        _, turns = store.thread(conv_id)
        stopped = turns[-1]
        assert stopped.status == INTERRUPTED and stopped.content.startswith(" w0 w1 w2 w3")
        engine.words = [" and", " more."]
        with page.stream("POST", f"/api/conversations/{conv_id}/continue", json={"message_id": stopped.id}) as r:
            events = sse_events(r.iter_lines())
        assert events[-1][0] == "done" and events[-1][1]["finish_reason"] == "stop"
        _, turns = store.thread(conv_id)
        assert (turns[-1].id, turns[-1].content, turns[-1].status) == (stopped.id, stopped.content + " and more.",
                                                                       COMPLETE)
        assert engine.prefixes[-1] == stopped.content  # the model was given the cut-off text to go on from


# ------------------------------------------------------------------------------------------- with the real model


@dataclass
class Client:
    """One simulated user: what it sent, what came back, and whether it left early."""

    i: int
    kind: str  # "stream" (API, streaming), "plain" (API, one response), "page" (the chat page's SSE)
    leave: str | None = None  # None, "after-first" (text), "while-queued" (page only)
    status: int | None = None
    retry_after: str | None = None
    error: dict | None = None
    conv_id: str | None = None
    text: str = ""
    finished: bool = False
    left: bool = False
    queued: bool = False
    failure: str | None = None
    topic: str = "tell me one fact about the number"

    @property
    def content(self) -> str:
        return f"Client {self.i}: {self.topic} {self.i}."


def run_client(c: Client, url: str, max_tokens: int, start: threading.Barrier | None = None) -> None:
    messages = [{"role": "user", "content": c.content}]
    api_body = {"model": "SmolLM2-135M-Instruct", "messages": messages, "max_tokens": max_tokens}
    try:
        if start is not None:
            start.wait()
        if c.kind == "plain":
            timeout = httpx.Timeout(120, read=0.3) if c.leave else 120
            try:
                r = httpx.post(url + URL, json=api_body, timeout=timeout)
            except httpx.ReadTimeout:
                c.left = True
                return
            c.status, c.retry_after = r.status_code, r.headers.get("retry-after")
            c.conv_id = r.headers.get("x-thresher-conversation")
            if r.status_code == 200:
                c.text, c.finished = r.json()["choices"][0]["message"]["content"], True
            else:
                c.error = r.json().get("error")
            return
        target, body = ((url + URL, {**api_body, "stream": True}) if c.kind == "stream"
                        else (url + "/api/chat", {"content": c.content}))
        with httpx.stream("POST", target, json=body, timeout=120) as r:
            c.status, c.retry_after = r.status_code, r.headers.get("retry-after")
            c.conv_id = r.headers.get("x-thresher-conversation")
            if r.status_code != 200:
                r.read()
                c.error = r.json().get("error")
                return
            name = None
            for line in r.iter_lines():
                if line.startswith("event: "):
                    name = line[7:]
                    continue
                if not line.startswith("data: "):
                    continue
                data = line[6:]
                if c.kind == "stream":
                    if data == "[DONE]":
                        c.finished = True
                        break
                    event = json.loads(data)
                    piece = event["choices"][0]["delta"].get("content") if event.get("choices") else None
                else:
                    event = json.loads(data)
                    if name == "meta":
                        c.conv_id = event["conversation_id"]
                    if name == "queue" and event["ahead"] is not None:
                        c.queued = True
                        if c.leave == "while-queued":
                            c.left = True
                            return
                    if name == "done":
                        c.finished = True
                        break
                    piece = event.get("text") if name == "delta" else None
                if piece:
                    c.text += piece
                    if c.leave == "after-first":
                        c.left = True
                        return
    except Exception as e:  # recorded: the test says which client failed and how
        c.failure = f"{type(e).__name__}: {e}"


def start_all(clients: list[Client], url: str, max_tokens: int) -> list[threading.Thread]:
    start = threading.Barrier(len(clients))
    threads = [threading.Thread(target=run_client, args=(c, url, max_tokens, start)) for c in clients]
    for t in threads:
        t.start()
    return threads


@pytest.mark.slow
def test_fifty_clients_are_answered_or_refused_and_none_is_lost(serve, embedded_engine) -> None:
    kinds = ["stream", "stream", "plain", "page", "stream"]
    clients = [Client(i, kinds[i % 5]) for i in range(50)]
    filling = [c for c in clients if c.kind == "stream"][:embedded_engine.n_parallel]  # the batch, full
    waiting = [c for c in clients if c.kind == "page"][:3]  # told they wait, they hang up
    rest = [c for c in clients if c not in filling and c not in waiting]
    for c in filling:
        c.topic = "write a very long story about the number"
    for c in waiting:
        c.leave = "while-queued"
    for c in rest[::6]:
        c.leave, c.topic = "after-first", "write a very long story about the number"
    with serve(embedded_engine, max_queue=8, max_tokens_default=24) as srv:
        rt = rt_of(srv)
        threads = start_all(filling, srv.url, 64)
        wait_for(lambda: embedded_engine.stats()["running"] == len(filling) or any(c.finished for c in filling), 30)
        threads += start_all(waiting, srv.url, 24)
        wait_for(lambda: all(c.left or c.failure or c.finished for c in waiting), 30)
        threads += start_all(rest, srv.url, 24)  # everyone else at once: more than the queue holds
        for t in threads:
            t.join(120)
        # Those refused come back after the Retry-After they were given (as new clients).
        again = [Client(100 + c.i, c.kind) for c in clients if c.status == 503]
        if again:
            time.sleep(min(5, max(int(c.retry_after or 1) for c in clients if c.status == 503)))
            for t in start_all(again, srv.url, 24):
                t.join(120)
        # Those in the crowd that meant to leave after the first words may all have been refused; two more leave
        # after their first words once there is room, so leaving mid-reply is always exercised.
        late = [Client(200 + k, kind, leave="after-first", topic="write a very long story about the number")
                for k, kind in enumerate(["stream", "page"])]
        for t in start_all(late, srv.url, 64):
            t.join(120)
        # A client that hung up gives its place back at once; the engine drops its sequence at its next step.
        wait_for(lambda: rt.admission.held == 0 and embedded_engine.stats()["running"] == 0, 20)
        stats = embedded_engine.stats()
        convs = {c.id: c for c in rt.store.list(limit=1000)}

    everyone = clients + again + late
    assert [c for c in everyone if c.failure] == []
    assert {c.status for c in everyone if c.status is not None} <= {200, 503}
    refused = [c for c in everyone if c.status == 503]
    answered = [c for c in everyone if c.status == 200 and not c.left]
    assert refused and len(answered) >= 16
    for c in refused:  # a clean refusal: OpenAI's error shape, a time to come back, nothing stored
        assert c.error is not None and c.error["code"] == "server_busy" and int(c.retry_after) >= 1
        assert c.conv_id is None
    stored_users = [m.content for conv in convs.values() for m in conv.messages if m.role == "user"]
    assert not {c.content for c in refused} & set(stored_users)
    for c in answered:  # none lost: what the client got is what the store holds
        assert c.finished, c
        user, reply = convs[c.conv_id].messages
        assert user.content == c.content and reply.status == COMPLETE and reply.content == c.text
    assert any(c.queued for c in waiting) and all(c.left for c in waiting if c.queued)
    leavers = [c for c in everyone if c.left]
    assert any(c.leave == "after-first" for c in leavers)
    for c in leavers:  # no work for clients that left: their replies stopped where they were
        mine = [conv for conv in convs.values() if conv.messages[0].content == c.content]
        if not mine:  # a plain request refused after its client had already hung up
            continue
        reply = mine[0].messages[-1]
        assert reply.status == INTERRUPTED, (c, reply)
        if c.leave == "while-queued":
            assert reply.content == ""  # never decoded
    assert stats["running"] == 0 and stats["waiting"] == 0


@pytest.mark.slow
def test_sigkill_under_load_loses_no_stored_message(tmp_path: Path) -> None:
    from test_crash import start_server

    data, port = tmp_path / "data", free_port()
    proc = start_server(data, port)
    url = f"http://127.0.0.1:{port}"
    clients = [Client(i, "stream") for i in range(20)]
    short, long = clients[:6], clients[6:]  # these finish before the kill; of those, some wait in the queue
    try:
        threads = [threading.Thread(target=run_client, args=(c, url, 6)) for c in short]
        for t in threads:
            t.start()
        wait_for(lambda: all(c.finished or c.failure for c in short), 60)
        threads += [threading.Thread(target=run_client, args=(c, url, 400)) for c in long]
        for t in threads[len(short):]:
            t.start()
        wait_for(lambda: sum(bool(c.text) for c in long) >= 8 and all(c.status for c in long), 60)
        time.sleep(1.0)  # the server goes on writing the growing replies
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        for t in threads:
            t.join(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    proc = start_server(data, port)  # the restart marks the cut-off replies interrupted
    try:
        st = Store(f"sqlite:///{data / 'thresher.db'}")
        convs = {c.id: c for c in st.list(limit=1000)}
        st.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    admitted = [c for c in clients if c.status == 200]
    assert len(admitted) == len(clients) == len(convs)  # the queue holds them all; each one is stored
    for c in admitted:
        user, reply = convs[c.conv_id].messages
        assert user.content == c.content
        if c.finished:
            assert reply.status == COMPLETE and reply.content == c.text
        else:  # cut off: kept as far as it was saved (every half second), marked interrupted
            assert reply.status == INTERRUPTED
            assert c.text.startswith(reply.content) or reply.content.startswith(c.text)
