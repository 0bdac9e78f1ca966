"""The /v1 API over a real server on 127.0.0.1: OpenAI shapes, errors, limits, stitching and ending.

These tests are about the protocol, so a scripted engine answers; tests/test_openai_compat.py uses the real model."""

from __future__ import annotations

import json
import time

import httpx
import pytest
from conftest import ScriptedEngine

from thresher.config import Settings
from thresher.engines import ProbabilitiesUnavailable

URL = "/v1/chat/completions"


def ask(srv, messages, headers=None, **body):
    return httpx.post(srv.url + URL, json={"model": "scripted", "messages": messages, **body}, headers=headers,
                      timeout=30)


def store_of(srv):
    return srv.server.config.app.state.rt.store


def test_non_streaming_shape(serve) -> None:
    with serve(ScriptedEngine()) as srv:
        r = ask(srv, [{"role": "user", "content": "Hi"}])
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    assert body["model"] == "scripted"
    choice = body["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": "Hello there, friend.", "refusal": None,
                                 "annotations": []}
    assert choice["finish_reason"] == "stop"
    assert body["usage"]["completion_tokens"] == 5
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + 5
    assert r.headers["x-thresher-conversation"]


def test_streaming_shape_with_usage(serve) -> None:
    with serve(ScriptedEngine()) as srv:
        r = ask(srv, [{"role": "user", "content": "Hi"}], stream=True, stream_options={"include_usage": True})
    assert r.headers["content-type"].startswith("text/event-stream")
    lines = [ln[6:] for ln in r.text.split("\n") if ln.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    events = [json.loads(x) for x in lines[:-1]]
    assert events[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in events if e["choices"])
    assert text == "Hello there, friend."
    finishes = [e["choices"][0]["finish_reason"] for e in events if e["choices"]]
    assert finishes[-1] == "stop" and all(f is None for f in finishes[:-1])
    assert events[-1]["choices"] == [] and events[-1]["usage"]["completion_tokens"] == 5
    assert all(e["object"] == "chat.completion.chunk" for e in events)


def test_streaming_without_usage_has_no_usage_chunk(serve) -> None:
    with serve(ScriptedEngine()) as srv:
        r = ask(srv, [{"role": "user", "content": "Hi"}], stream=True)
    events = [json.loads(ln[6:]) for ln in r.text.split("\n") if ln.startswith("data: {")]
    assert all(e["choices"] for e in events)


def test_max_tokens_gives_length(serve) -> None:
    with serve(ScriptedEngine()) as srv:
        body = ask(srv, [{"role": "user", "content": "Hi"}], max_tokens=2).json()
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["choices"][0]["message"]["content"] == "Hello there"


def test_models(serve) -> None:
    with serve(ScriptedEngine()) as srv:
        listed = httpx.get(srv.url + "/v1/models").json()
        one = httpx.get(srv.url + "/v1/models/scripted")
        missing = httpx.get(srv.url + "/v1/models/gpt-9")
    assert listed["object"] == "list" and [m["id"] for m in listed["data"]] == ["scripted"]
    assert one.json()["id"] == "scripted"
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"messages": [{"role": "user", "content": "x"}]}, 400, "missing_model"),
        ({"model": "gpt-9", "messages": [{"role": "user", "content": "x"}]}, 404, "model_not_found"),
        ({"model": "scripted", "messages": []}, 400, "invalid_messages"),
        ({"model": "scripted"}, 400, "missing_messages"),
        ({"model": "scripted", "messages": [{"role": "wizard", "content": "x"}]}, 400, "invalid_messages"),
        ({"model": "scripted", "messages": [{"role": "user"}]}, 400, "invalid_messages"),
        ({"model": "scripted", "messages": [{"role": "user", "content": "  "}]}, 400, "invalid_messages"),
        ({"model": "scripted", "messages": [{"role": "user", "content": "x"}], "temperature": 9}, 422,
         "invalid_value"),
        ({"model": "scripted", "messages": [{"role": "user", "content": "x"}], "max_tokens": "lots"}, 422,
         "invalid_value"),
        ({"model": "scripted", "messages": [{"role": "user", "content": "x"}], "n": 3}, 400, "unsupported_value"),
        ({"model": "scripted", "messages": [{"role": "user", "content": "x"}], "max_tokens": 99999}, 400,
         "max_tokens_too_large"),
    ],
)
def test_errors_in_openai_shape(serve, body, status, code) -> None:
    with serve(ScriptedEngine()) as srv:
        r = httpx.post(srv.url + URL, json=body)
        assert r.status_code == status, r.text
        err = r.json()["error"]
        assert err["code"] == code and err["message"] and err["type"]
        assert store_of(srv).counts() == {}  # a refused request stores nothing


def test_invalid_json_and_non_object(serve) -> None:
    with serve(ScriptedEngine()) as srv:
        bad = httpx.post(srv.url + URL, content=b"{not json", headers={"content-type": "application/json"})
        arr = httpx.post(srv.url + URL, json=[1, 2])
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_json"
    assert arr.status_code == 400


def test_oversized_body_413(serve) -> None:
    with serve(ScriptedEngine(), max_body_bytes=2048) as srv:
        r = ask(srv, [{"role": "user", "content": "x" * 5000}])
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"


def test_message_and_character_caps_413(serve) -> None:
    with serve(ScriptedEngine(), max_messages=3, max_chars=50) as srv:
        many = ask(srv, [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}] * 2
                   + [{"role": "user", "content": "c"}])
        long = ask(srv, [{"role": "user", "content": "y" * 60}])
    assert many.status_code == 413 and many.json()["error"]["code"] == "too_many_messages"
    assert long.status_code == 413 and long.json()["error"]["code"] == "too_many_characters"


def test_api_keys_401(serve) -> None:
    with serve(ScriptedEngine(), api_keys=["k-123"]) as srv:
        none = ask(srv, [{"role": "user", "content": "x"}])
        wrong = ask(srv, [{"role": "user", "content": "x"}], headers={"Authorization": "Bearer nope"})
        right = ask(srv, [{"role": "user", "content": "x"}], headers={"Authorization": "Bearer k-123"})
        models = httpx.get(srv.url + "/v1/models")
    assert none.status_code == 401 and none.json()["error"]["code"] == "invalid_api_key"
    assert wrong.status_code == 401
    assert right.status_code == 200
    assert models.status_code == 401


def test_rate_limit_requests_429(serve) -> None:
    with serve(ScriptedEngine(), public=True, admin_token="t", rate_limit_requests=2) as srv:
        codes = [ask(srv, [{"role": "user", "content": f"q{i}"}]).status_code for i in range(3)]
        last = ask(srv, [{"role": "user", "content": "again"}])
    assert codes == [200, 200, 429]
    assert last.json()["error"]["type"] == "rate_limit_error" and int(last.headers["retry-after"]) >= 1


def test_rate_limit_tokens_429(serve) -> None:
    with serve(ScriptedEngine(), public=True, admin_token="t", rate_limit_tokens=6) as srv:
        first = ask(srv, [{"role": "user", "content": "a"}])  # 5 tokens
        second = ask(srv, [{"role": "user", "content": "b"}])  # 10 tokens: over the budget after this
        third = ask(srv, [{"role": "user", "content": "c"}])
    assert (first.status_code, second.status_code, third.status_code) == (200, 200, 429)
    assert "tokens per minute" in third.json()["error"]["message"]


def test_rate_limits_off_in_local_mode(serve) -> None:
    with serve(ScriptedEngine(), rate_limit_requests=1) as srv:
        codes = [ask(srv, [{"role": "user", "content": f"q{i}"}]).status_code for i in range(3)]
    assert codes == [200, 200, 200]


def test_stitching_continues_the_same_conversation(serve) -> None:
    with serve(ScriptedEngine()) as srv:
        history = [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi"}]
        r1 = ask(srv, history)
        history += [r1.json()["choices"][0]["message"] | {}, {"role": "user", "content": "And then?"}]
        history[-2] = {"role": "assistant", "content": history[-2]["content"]}
        r2 = ask(srv, history)
        other = ask(srv, [{"role": "user", "content": "Hi"}])
        conv = store_of(srv).get(r1.headers["x-thresher-conversation"])
    assert r2.headers["x-thresher-conversation"] == r1.headers["x-thresher-conversation"]
    assert other.headers["x-thresher-conversation"] != r1.headers["x-thresher-conversation"]
    assert [m.role for m in conv.messages] == ["system", "user", "assistant", "user", "assistant"]
    assert conv.source == "api" and conv.model_version == "scripted@1"
    assert conv.client_hash and "127.0.0.1" not in conv.client_hash


def test_edited_history_starts_a_new_conversation(serve) -> None:
    with serve(ScriptedEngine()) as srv:
        r1 = ask(srv, [{"role": "user", "content": "Hi"}])
        r2 = ask(srv, [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "something else"},
                       {"role": "user", "content": "ok"}])
    assert r1.headers["x-thresher-conversation"] != r2.headers["x-thresher-conversation"]


def test_end_signal_header_and_route(serve) -> None:
    with serve(ScriptedEngine()) as srv:
        r = ask(srv, [{"role": "user", "content": "Hi"}], headers={"X-Thresher-End": "true"})
        cid = r.headers["x-thresher-conversation"]
        assert store_of(srv).get(cid).end_reason == "api"
        r2 = ask(srv, [{"role": "user", "content": "Yo"}])
        cid2 = r2.headers["x-thresher-conversation"]
        ended = httpx.post(f"{srv.url}/v1/conversations/{cid2}/end")
        missing = httpx.post(f"{srv.url}/v1/conversations/NOPE/end")
        conv2 = store_of(srv).get(cid2)
        # An ended conversation is not continued: the same history starts a new one.
        r3 = ask(srv, [{"role": "user", "content": "Yo"}, {"role": "assistant", "content": "Hello there, friend."},
                       {"role": "user", "content": "more"}])
    assert ended.status_code == 200 and ended.json()["ended"] is True
    assert conv2.ended and conv2.end_reason == "api" and conv2.status == "ended"
    assert missing.status_code == 404
    assert r3.headers["x-thresher-conversation"] not in (cid, cid2)


def test_publishing_is_opt_in_by_header_or_field(serve) -> None:
    with serve(ScriptedEngine()) as srv:
        default = ask(srv, [{"role": "user", "content": "unsaid"}])
        by_header = ask(srv, [{"role": "user", "content": "header yes"}], headers={"X-Thresher-Publish": "true"})
        by_field = ask(srv, [{"role": "user", "content": "field yes"}], thresher_publish=True)
        field_no = ask(srv, [{"role": "user", "content": "field no"}], thresher_publish=False)
        bad = ask(srv, [{"role": "user", "content": "x"}], headers={"X-Thresher-Publish": "maybe"})
        bad_field = ask(srv, [{"role": "user", "content": "x"}], thresher_publish="perhaps")
        clash = ask(srv, [{"role": "user", "content": "x"}], headers={"X-Thresher-Publish": "false"},
                    thresher_publish=True)
        st = store_of(srv)
        allowed = {r: st.get(r.headers["x-thresher-conversation"]).publish_allowed
                   for r in (default, by_header, by_field, field_no)}
        assert allowed == {default: False, by_header: True, by_field: True, field_no: False}
        # Saying no on a later turn of the same conversation sticks; so does yes.
        cid = by_header.headers["x-thresher-conversation"]
        history = [{"role": "user", "content": "header yes"}, {"role": "assistant", "content": "Hello there, friend."}]
        ask(srv, [*history, {"role": "user", "content": "now private"}], headers={"X-Thresher-Publish": "no"})
        assert st.get(cid).publish_allowed is False
        unsaid_cid = default.headers["x-thresher-conversation"]
        ask(srv, [{"role": "user", "content": "unsaid"}, {"role": "assistant", "content": "Hello there, friend."},
                  {"role": "user", "content": "go on then"}], thresher_publish=True)
        assert st.get(unsaid_cid).publish_allowed is True
        assert len(st.list()) == 4  # the refused requests stored nothing
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_header"
    assert bad_field.status_code == 422 and bad_field.json()["error"]["param"] == "thresher_publish"
    assert clash.status_code == 400 and clash.json()["error"]["code"] == "conflicting_publish_choice"


def test_operator_may_publish_api_conversations_by_default(serve) -> None:
    with serve(ScriptedEngine(), api_publish_by_default=True) as srv:
        yes = ask(srv, [{"role": "user", "content": "unsaid"}])
        no = ask(srv, [{"role": "user", "content": "no"}], headers={"X-Thresher-Publish": "false"})
        st = store_of(srv)
        assert st.get(yes.headers["x-thresher-conversation"]).publish_allowed is True
        assert st.get(no.headers["x-thresher-conversation"]).publish_allowed is False


def test_idle_conversations_end(serve) -> None:
    with serve(ScriptedEngine(), idle_timeout_minutes=1 / 60) as srv:  # one second
        cid = ask(srv, [{"role": "user", "content": "Hi"}]).headers["x-thresher-conversation"]
        deadline = time.monotonic() + 10
        while not store_of(srv).get(cid).ended and time.monotonic() < deadline:
            time.sleep(0.2)
        conv = store_of(srv).get(cid)
    assert conv.ended and conv.end_reason == "idle"


def test_context_length_exceeded_400(serve) -> None:
    with serve(ScriptedEngine(), n_ctx=256) as srv:
        r = ask(srv, [{"role": "user", "content": "word " * 300}])
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"


def test_healthz_and_admin(serve) -> None:
    with serve(ScriptedEngine(), admin_token="sekrit") as srv:
        ask(srv, [{"role": "user", "content": "Hi"}])
        health = httpx.get(srv.url + "/healthz").json()
        denied = httpx.get(srv.url + "/admin/conversations")
        ok = httpx.get(srv.url + "/admin/conversations", headers={"Authorization": "Bearer sekrit"})
    assert health["status"] == "ok" and health["conversations"] == {"open": 1}
    assert denied.status_code == 401
    assert ok.status_code == 200 and len(ok.json()["data"]) == 1


def test_admin_routes_off_without_token(serve) -> None:
    with serve(ScriptedEngine()) as srv:
        r = httpx.get(srv.url + "/admin/stats", headers={"Authorization": "Bearer anything"})
    assert r.status_code == 403 and "THRESHER_ADMIN_TOKEN" in r.json()["error"]["message"]


def test_public_mode_refuses_to_start_without_admin_token(settings: Settings) -> None:
    with pytest.raises(ValueError, match="admin token"):
        Settings(data_dir=settings.data_dir, public=True)


def test_rate_limiter_forgets_quiet_clients() -> None:
    from thresher.server.guard import RateLimiter

    limiter = RateLimiter(5, 0, window=0.05)
    for i in range(10_001):
        limiter.check(f"client{i}")
    time.sleep(0.06)
    limiter.check("late")
    assert len(limiter._requests) == 1


# -- whose conversation a request continues -------------------------------------------------------------------------


HI = [{"role": "user", "content": "Hi"}]
HISTORY_HI = [*HI, {"role": "assistant", "content": "Hello there, friend."}]


def _web_chat(srv, text: str) -> tuple[httpx.Client, str]:
    """A browser's conversation on the chat page (cookie kept in the returned client); returns it and its id."""
    browser = httpx.Client(base_url=srv.url, timeout=30)
    r = browser.post("/api/chat", json={"content": text})
    return browser, json.loads(r.text.split("data: ", 2)[1].split("\n", 1)[0])["conversation_id"]


def test_the_api_never_continues_a_chat_page_conversation(serve) -> None:
    with serve(ScriptedEngine()) as srv:
        browser, web_id = _web_chat(srv, "Hi")
        replay = ask(srv, [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there, friend."},
                           {"role": "user", "content": "and now through the API"}])
        ended = httpx.post(f"{srv.url}/v1/conversations/{web_id}/end")  # the same address, not the same owner
        web = store_of(srv).get(web_id)
        browser.close()
    assert replay.status_code == 200 and replay.headers["x-thresher-conversation"] != web_id
    assert [m.content for m in web.messages] == ["Hi", "Hello there, friend."] and not web.ended
    assert ended.status_code == 404 and ended.json()["error"]["code"] == "conversation_not_found"


def test_with_api_keys_a_conversation_belongs_to_its_key(serve) -> None:
    a, b = {"Authorization": "Bearer key-a"}, {"Authorization": "Bearer key-b"}
    history = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there, friend."},
               {"role": "user", "content": "more"}]
    with serve(ScriptedEngine(), api_keys=["key-a", "key-b"]) as srv:
        cid = ask(srv, history[:1], headers=a).headers["x-thresher-conversation"]
        by_b = ask(srv, history, headers=b).headers["x-thresher-conversation"]
        b_ends = httpx.post(f"{srv.url}/v1/conversations/{cid}/end", headers=b)
        by_a = ask(srv, history, headers=a).headers["x-thresher-conversation"]
        a_ends = httpx.post(f"{srv.url}/v1/conversations/{cid}/end", headers=a)
        conv = store_of(srv).get(cid)
    assert by_b != cid and by_a == cid
    assert b_ends.status_code == 404 and b_ends.json()["error"]["message"] == f"no conversation {cid}"
    assert a_ends.status_code == 200 and conv.ended and len(conv.messages) == 4
    assert "key-a" not in (conv.owner_hash or "") and conv.owner_hash != conv.client_hash


def test_without_keys_another_address_owns_nothing_here(serve) -> None:
    with serve(ScriptedEngine()) as srv:
        cid = ask(srv, HI).headers["x-thresher-conversation"]
        # uvicorn trusts X-Forwarded-For from 127.0.0.1: the request now comes from another address
        elsewhere = {"X-Forwarded-For": "203.0.113.9"}
        continued = ask(srv, [*HISTORY_HI, {"role": "user", "content": "more"}], headers=elsewhere)
        ended = httpx.post(f"{srv.url}/v1/conversations/{cid}/end", headers=elsewhere)
        assert not store_of(srv).get(cid).ended
        own = httpx.post(f"{srv.url}/v1/conversations/{cid}/end")
    assert continued.headers["x-thresher-conversation"] != cid and ended.status_code == 404
    assert own.status_code == 200


# -- OpenAI fields: logprobs, what is refused, empty stop strings ---------------------------------------------------


def test_logprobs_in_the_openai_shape(serve) -> None:
    with serve(ScriptedEngine()) as srv:
        plain = ask(srv, HI).json()["choices"][0]
        body = ask(srv, HI, logprobs=True, top_logprobs=2).json()
        only = ask(srv, HI, logprobs=True).json()["choices"][0]["logprobs"]["content"]
        stream = ask(srv, HI, logprobs=True, top_logprobs=1, stream=True)
    assert plain["logprobs"] is None
    content = body["choices"][0]["logprobs"]["content"]
    assert [t["token"] for t in content] == ["Hello", " there", ",", " friend", "."]
    assert content[1] == {"token": " there", "logprob": -0.25, "bytes": list(b" there"),
                          "top_logprobs": [{"token": " there", "logprob": -0.25, "bytes": list(b" there")},
                                           {"token": "é", "logprob": -2.5, "bytes": [0xC3, 0xA9]}]}
    assert body["choices"][0]["logprobs"]["refusal"] is None
    assert all(t["top_logprobs"] == [] for t in only)
    events = [json.loads(ln[6:]) for ln in stream.text.split("\n") if ln.startswith("data: {")]
    deltas = [e["choices"][0] for e in events if e["choices"] and e["choices"][0]["delta"].get("content")]
    assert [d["logprobs"]["content"][0]["token"] for d in deltas] == ["Hello", " there", ",", " friend", "."]
    assert all(len(d["logprobs"]["content"][0]["top_logprobs"]) == 1 for d in deltas)


class NoLogprobsEngine(ScriptedEngine):
    """An engine whose server refuses logprobs, as the OpenAI-compatible engine says when its remote does."""

    def stream_chat(self, messages, params):
        if params.logprobs is not None:
            raise ProbabilitiesUnavailable("http://remote/v1 answered 400: logprobs are not supported")
        yield from super().stream_chat(messages, params)


def test_logprobs_a_model_cannot_give_are_refused_clearly(serve) -> None:
    with serve(NoLogprobsEngine()) as srv:
        plain = ask(srv, HI, logprobs=True)
        streamed = ask(srv, HI, logprobs=True, stream=True)
        without = ask(srv, HI)
    assert plain.status_code == 400 and plain.json()["error"]["param"] == "logprobs"
    assert "logprobs are not supported" in plain.json()["error"]["message"]
    errors = [json.loads(ln[6:]) for ln in streamed.text.split("\n") if ln.startswith('data: {"error"')]
    assert errors and errors[0]["error"]["param"] == "logprobs"
    assert without.status_code == 200


@pytest.mark.parametrize(
    ("extra", "status", "param"),
    [
        ({"top_logprobs": 2}, 400, "top_logprobs"),  # without logprobs: true
        ({"logprobs": False, "top_logprobs": 2}, 400, "top_logprobs"),
        ({"logprobs": True, "top_logprobs": 21}, 422, "top_logprobs"),
        ({"logprobs": True, "top_logprobs": -1}, 422, "top_logprobs"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}, 400, "tools"),
        ({"tool_choice": "required"}, 400, "tool_choice"),
        ({"tool_choice": {"type": "function", "function": {"name": "f"}}}, 400, "tool_choice"),
        ({"functions": [{"name": "f"}]}, 400, "functions"),
        ({"response_format": {"type": "json_object"}}, 400, "response_format"),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}}, 400,
         "response_format"),
        ({"n": 2}, 400, "n"),
        ({"n": 0}, 400, "n"),
    ],
)
def test_what_is_not_supported_is_refused_by_name(serve, extra, status, param) -> None:
    with serve(ScriptedEngine()) as srv:
        r = ask(srv, HI, **extra)
        assert store_of(srv).counts() == {}
    assert r.status_code == status, r.text
    assert r.json()["error"]["param"] == param and param in r.json()["error"]["message"]


def test_what_asks_for_nothing_unsupported_is_answered(serve) -> None:
    with serve(ScriptedEngine()) as srv:
        for extra in ({"tools": []}, {"tool_choice": "none"}, {"tool_choice": "auto"}, {"n": 1}, {"n": None},
                      {"response_format": {"type": "text"}}, {"logprobs": False},
                      {"logprobs": True, "top_logprobs": 0}):
            assert ask(srv, HI, **extra).status_code == 200, extra


def test_an_empty_stop_string_is_ignored(serve) -> None:
    engine = ScriptedEngine()
    with serve(engine) as srv:
        one = ask(srv, HI, stop="").json()["choices"][0]["message"]["content"]
        listed = ask(srv, HI, stop=["", "zzz"]).json()["choices"][0]["message"]["content"]
    assert one == listed == "Hello there, friend."
    assert [p.stop for p in engine.params] == [[], ["zzz"]]


def test_sampling_defaults_come_from_the_settings_and_a_request_overrides_them(serve) -> None:
    engine = ScriptedEngine()
    with serve(engine, temperature=0.4, repetition_penalty=1.2) as srv:
        assert ask(srv, HI).status_code == 200
        assert ask(srv, HI, temperature=0.0, repetition_penalty=1.0).status_code == 200
        bad = ask(srv, HI, repetition_penalty=0)
        page = httpx.post(srv.url + "/api/chat", json={"content": "hello"}, timeout=30)
    assert page.status_code == 200
    assert [(p.temperature, p.repetition_penalty) for p in engine.params] == [(0.4, 1.2), (0.0, 1.0), (0.4, 1.2)]
    assert bad.status_code == 422 and "repetition_penalty" in bad.text  # as for every field out of range
