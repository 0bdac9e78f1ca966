"""What stands between the public and the model, over a real server on 127.0.0.1 (or the real app in process for
the fuzzing): no 500 from any input (non-ASCII secrets, lone surrogates, deep nesting, and bodies and headers drawn by
hypothesis), tokens counted as they are generated, security headers on every response, the chat page's cookie Secure
over https, and no state change from another site."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import httpx
import pytest
from conftest import ScriptedEngine
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from thresher.server import create_app

URL = "/v1/chat/completions"
HI = [{"role": "user", "content": "Hi"}]
REVIEWER_TOKEN = "ada-secret-token-0123456789"
TEMPLATES = Path(__file__).parent.parent / "thresher" / "server" / "templates"


def ask(srv, messages=HI, headers=None, **body):
    return httpx.post(srv.url + URL, json={"model": "scripted", "messages": messages, **body}, headers=headers,
                      timeout=30)


def post_raw(srv, path: str, raw: bytes, headers: dict | None = None) -> httpx.Response:
    return httpx.post(srv.url + path, content=raw, headers={"content-type": "application/json", **(headers or {})},
                      timeout=30)


def store_of(srv):
    return srv.server.config.app.state.rt.store


def assert_openai_error(r: httpx.Response, status: int, code: str | None = None) -> None:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"] and err["type"]
    if code is not None:
        assert err["code"] == code, err


# -- no 500 from input ----------------------------------------------------------------------------------------------


def test_non_ascii_secrets_are_refused_not_a_crash(serve) -> None:
    wrong = {"Authorization": "Bearer clé".encode("latin-1")}
    with serve(ScriptedEngine(), api_keys=["k-123"], admin_token="sekrit",
               reviewer_tokens=[f"ada@example.org:{REVIEWER_TOKEN}"]) as srv:
        assert_openai_error(ask(srv, headers=wrong), 401, "invalid_api_key")
        assert_openai_error(httpx.get(srv.url + "/v1/models", headers=wrong), 401, "invalid_api_key")
        assert_openai_error(httpx.get(srv.url + "/admin/stats", headers=wrong), 401, "invalid_admin_token")
        verdict = httpx.post(srv.url + "/review/01ABC", content="verdict=approve&csrf=%C3%A9t%C3%A9",
                             headers={"content-type": "application/x-www-form-urlencoded",
                                      "cookie": f"thresher_reviewer={REVIEWER_TOKEN}"})
        assert verdict.status_code == 403 and "did not come from the review page" in verdict.text
        assert ask(srv, headers={"Authorization": "Bearer k-123"}).status_code == 200


def test_lone_surrogates_are_refused(serve) -> None:
    lone = b'{"model": "scripted", "messages": [{"role": "user", "content": "a\\ud800b"}]}'
    with serve(ScriptedEngine()) as srv:
        assert_openai_error(post_raw(srv, URL, lone), 400, "invalid_json")
        assert_openai_error(post_raw(srv, URL, b'{"model": "\\udfff", "messages": []}'), 400, "invalid_json")
        assert_openai_error(post_raw(srv, "/api/chat", b'{"content": "x", "conversation_id": "\\ud800"}'), 422)
        assert_openai_error(post_raw(srv, "/api/chat", b'{"content": "\\ud800"}'), 422)
        assert store_of(srv).counts() == {}  # nothing was stored
        pair = b'{"model": "scripted", "messages": [{"role": "user", "content": "\\ud83d\\ude00"}]}'
        assert post_raw(srv, URL, pair).status_code == 200  # a whole surrogate pair is an ordinary character


def test_deep_nesting_is_refused_before_anything_else(serve) -> None:
    deep = b"[" * 10_000 + b"]" * 10_000
    inside = b'{"model": "scripted", "messages": ' + b"[" * 70 + b"]" * 70 + b"}"
    with serve(ScriptedEngine(), public=True, admin_token="t", rate_limit_requests=1) as srv:
        assert_openai_error(post_raw(srv, URL, deep), 400, "invalid_json")
        assert_openai_error(post_raw(srv, URL, inside), 400, "invalid_json")
        assert_openai_error(post_raw(srv, "/api/chat", deep), 400)
        # Brackets inside strings are text, not nesting.
        assert ask(srv, [{"role": "user", "content": "[" * 5000}]).status_code == 200  # the limiter's one request
        assert ask(srv).status_code == 429


def test_unknown_routes_and_methods_answer_in_the_openai_shape(serve) -> None:
    with serve(ScriptedEngine()) as srv:
        assert_openai_error(httpx.get(srv.url + "/v1/nothing-here"), 404, "not_found")
        assert_openai_error(httpx.get(srv.url + URL), 405, "method_not_allowed")


def mostly(typical: st.SearchStrategy, other: st.SearchStrategy) -> st.SearchStrategy:
    """Three times in four a typical value (so requests get far), else the other kind."""
    return st.sampled_from([typical, typical, typical, other]).flatmap(lambda chosen: chosen)


# Text as JSON can carry it: any code point, lone surrogates included (json.dumps escapes them), and now and then
# one of the texts known to have broken something.
ODD_TEXT = st.sampled_from(["\ud800", "a\udfffb", "\udc00\ud800", "clé", "\x00", "[[[{", "\\u0000", "\u2028"])
TEXT = mostly(st.text(st.characters(exclude_categories=()), max_size=12), ODD_TEXT)
SCALARS = st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False) | TEXT
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
                      max_leaves=12)


def chat_body(wrap) -> st.SearchStrategy:
    """Chat requests whose every field is `wrap(a valid value)`: valid ones get answered, mixed ones get far."""
    message = st.fixed_dictionaries({"role": wrap(st.sampled_from(["user", "user", "assistant", "system"])),
                                     "content": wrap(mostly(st.text(st.characters(exclude_categories=()),
                                                                    min_size=1), ODD_TEXT))})
    return st.fixed_dictionaries(
        {"model": wrap(st.just("scripted")), "messages": wrap(st.lists(message, min_size=1, max_size=3))},
        optional={name: wrap(valid) for name, valid in {
            "stream": st.booleans(), "stream_options": st.just({"include_usage": True}),
            "max_tokens": st.integers(1, 50), "max_completion_tokens": st.integers(1, 50),
            "temperature": st.floats(0, 2), "top_p": st.floats(0.01, 1), "stop": st.lists(TEXT, max_size=3),
            "seed": st.integers(-2**63, 2**63 - 1), "n": st.just(1), "logprobs": st.booleans(),
            "top_logprobs": st.integers(0, 20), "tools": st.just([]), "tool_choice": st.sampled_from(["none", "auto"]),
            "response_format": st.just({"type": "text"}), "thresher_publish": st.booleans()}.items()})


def as_json(strategy: st.SearchStrategy) -> st.SearchStrategy:
    return strategy.map(lambda body: json.dumps(body).encode())  # lone surrogates become \udXXX escapes


BODIES = st.one_of(as_json(chat_body(lambda s: s)), as_json(chat_body(lambda s: mostly(s, VALUES))),
                   as_json(VALUES), st.binary(),
                   st.integers(60, 20_000).map(lambda n: b'{"messages": ' + b"[" * n + b"]" * n + b"}"))
HEADER_TEXT = mostly(st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"),
                             max_size=20), st.sampled_from(["Bearer clé", "Bearer \xff", "bearer", "Bearer  "]))
HEADERS = st.fixed_dictionaries(
    {"authorization": mostly(st.just("Bearer k-123"), HEADER_TEXT)},  # mostly the right key: bodies get read
    optional={name: HEADER_TEXT | st.sampled_from(["true", "no", "application/json", "same-origin",
                                                   "http://testserver"])
              for name in ("x-thresher-publish", "x-thresher-end", "content-type", "origin", "sec-fetch-site")},
).map(lambda h: {k: v.strip().encode("latin-1") for k, v in h.items()})
FUZZ = hsettings(max_examples=150, deadline=None, database=None,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _no_server_error(r: httpx.Response) -> None:
    assert r.status_code < 500, r.text[:500]
    if r.status_code >= 400 and r.headers.get("content-type", "").startswith("application/json"):
        assert set(r.json()["error"]) == {"message", "type", "param", "code"}


def test_fuzzed_api_requests_never_get_a_server_error(settings) -> None:
    app = create_app(settings.model_copy(update={"api_keys": ["k-123"]}), engine=ScriptedEngine())
    with TestClient(app) as client:

        @FUZZ
        @given(body=BODIES, headers=HEADERS)
        def check(body: bytes, headers: dict[str, bytes]) -> None:
            _no_server_error(client.post(URL, content=body, headers=headers))

        check()


WEB_ROUTES = ["/api/chat", "regenerate", "edit", "continue", "switch", "publish", "end", "stop", "title", "settings",
              "feedback"]
WEB_BODY = st.fixed_dictionaries({}, optional={
    name: mostly(typical, VALUES) for name, typical in {
        "content": TEXT, "conversation_id": TEXT, "message_id": st.integers(-1, 10), "publish": st.booleans(),
        "allowed": st.booleans(), "rating": st.sampled_from(["up", "down"]), "reason": TEXT, "title": TEXT,
        "system": TEXT, "settings": st.just({"temperature": 0.5}), "temperature": st.floats(-1, 3),
        "max_tokens": st.integers(-1, 5000)}.items()})


BROWSER = st.fixed_dictionaries({}, optional={
    "origin": mostly(st.just("http://testserver"), HEADER_TEXT | st.just("http://[")),
    "sec-fetch-site": mostly(st.just("same-origin"), HEADER_TEXT)}).map(
    lambda h: {k: v.strip().encode("latin-1") for k, v in h.items()})


def test_fuzzed_chat_page_requests_never_get_a_server_error(settings) -> None:
    app = create_app(settings, engine=ScriptedEngine())
    with TestClient(app) as client:
        first = client.post("/api/chat", json={"content": "Hi"})
        conv_id = re.search(r'"conversation_id": "(\w+)"', first.text)[1]
        turns = client.get(f"/api/conversations/{conv_id}").json()["messages"]

        @FUZZ
        @given(route=st.sampled_from(WEB_ROUTES), body=as_json(WEB_BODY) | BODIES,
               message=st.sampled_from([t["id"] for t in turns]) | st.integers(-1, 10**6), headers=BROWSER)
        def check(route: str, body: bytes, message: int, headers: dict[str, bytes]) -> None:
            path = route if route.startswith("/") else f"/api/conversations/{conv_id}/{route}"
            if route == "feedback":
                path = f"/api/conversations/{conv_id}/messages/{message}/feedback"
            _no_server_error(client.post(path, content=body, headers={"content-type": "application/json", **headers}))

        check()


# -- tokens count as they are generated -----------------------------------------------------------------------------


@pytest.mark.parametrize("route", ["api", "web"])
def test_tokens_count_as_generated_even_when_the_stream_is_dropped(serve, route: str) -> None:
    engine = ScriptedEngine(words=["word "] * 60, delay=0.02)
    with serve(engine, public=True, admin_token="t", rate_limit_tokens=10) as srv:
        if route == "api":
            request = {"url": srv.url + URL, "json": {"model": "scripted", "messages": HI, "stream": True}}
            delta = '"content": "word '
        else:
            request = {"url": srv.url + "/api/chat", "json": {"content": "Hi"}}
            delta = "event: delta"
        seen = 0
        with httpx.stream("POST", timeout=30, **request) as r:
            for line in r.iter_lines():
                seen += delta in line
                if seen == 12:
                    break  # the client goes away long before the reply's end
        deadline = time.monotonic() + 10  # the server notices, and keeps what was written
        while store_of(srv).list()[0].messages[-1].status != "interrupted" and time.monotonic() < deadline:
            time.sleep(0.05)
        again = ask(srv)
    assert again.status_code == 429 and "tokens per minute" in again.json()["error"]["message"]


# -- headers, cookies, other sites ----------------------------------------------------------------------------------


def test_every_response_carries_the_security_headers(serve) -> None:
    with serve(ScriptedEngine()) as srv:
        responses = {"page": httpx.get(srv.url + "/"), "static": httpx.get(srv.url + "/static/chat.js"),
                     "api": ask(srv), "stream": ask(srv, stream=True), "error": httpx.get(srv.url + "/v1/models/x"),
                     "missing": httpx.get(srv.url + "/nothing"), "health": httpx.get(srv.url + "/healthz")}
        review = httpx.get(srv.url + "/review")
    for name, r in responses.items():
        csp = r.headers.get("content-security-policy", "")
        assert "script-src 'self'" in csp and "style-src 'self'" in csp and "frame-ancestors 'none'" in csp, name
        assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
        assert r.headers["x-content-type-options"] == "nosniff" and r.headers["x-frame-options"] == "DENY", name
    # A page with a stricter policy of its own keeps it.
    assert review.headers["content-security-policy"].startswith("default-src 'none'")
    assert review.headers["x-content-type-options"] == "nosniff"


def test_the_pages_have_no_inline_scripts_or_styles(serve) -> None:
    """What the Content-Security-Policy allows: scripts and styles from files only."""
    inline = re.compile(r"<script(?![^>]*\bsrc=)[^>]*>|<style\b|\sstyle=|\son[a-z]+=|javascript:", re.IGNORECASE)
    for template in TEMPLATES.glob("*.html"):
        assert not inline.search(template.read_text()), template.name
    with serve(ScriptedEngine()) as srv:
        assert not inline.search(httpx.get(srv.url + "/").text)


def _session_cookie(r: httpx.Response) -> str:
    return next(c for c in r.headers.get_list("set-cookie") if c.startswith("thresher_session="))


def test_the_session_cookie_is_secure_over_https(serve) -> None:
    with serve(ScriptedEngine()) as srv:
        plain = _session_cookie(httpx.get(srv.url + "/"))
        # uvicorn believes X-Forwarded-Proto from a trusted proxy (127.0.0.1 here, `trusted_proxies` in serve)
        proxied = _session_cookie(httpx.get(srv.url + "/", headers={"X-Forwarded-Proto": "https"}))
        sent = httpx.post(srv.url + "/api/chat", json={"content": "Hi"}, headers={"X-Forwarded-Proto": "https"})
    assert "secure" not in plain.lower() and "httponly" in plain.lower()
    assert "; secure" in proxied.lower() and "; secure" in _session_cookie(sent).lower()
    with serve(ScriptedEngine(), public=True, admin_token="an-admin-token-of-some-length",
               reviewer_tokens=[f"ada@example.org:{REVIEWER_TOKEN}"]) as srv:
        assert "; secure" in _session_cookie(httpx.get(srv.url + "/")).lower()
        # the review page's and the dashboard's sign-in cookies too, in public mode even over plain http
        for path, token in (("/review/login", REVIEWER_TOKEN), ("/dashboard/login", "an-admin-token-of-some-length")):
            r = httpx.post(srv.url + path, data={"token": token})
            assert r.status_code == 303 and "; secure" in r.headers["set-cookie"].lower(), (path, r.headers)


def test_changes_from_another_site_are_refused(serve) -> None:
    evil = [{"Origin": "https://evil.example"}, {"Origin": "null"}, {"Origin": "http://["},
            {"Sec-Fetch-Site": "cross-site"}, {"Sec-Fetch-Site": "same-site"},
            {"Sec-Fetch-Site": "cross-site", "Origin": "http://127.0.0.1"}]
    with serve(ScriptedEngine(), admin_token="sekrit", reviewer_tokens=[f"ada@example.org:{REVIEWER_TOKEN}"]) as srv:
        own = {"Origin": srv.url}
        with httpx.Client(base_url=srv.url, timeout=30) as browser:
            page = browser.post("/api/chat", json={"content": "Hi"}, headers=own | {"Sec-Fetch-Site": "same-origin"})
            conv_id = re.search(r'"conversation_id": "(\w+)"', page.text)[1]
            for headers in evil:
                for method, path in (("POST", "/api/chat"), ("POST", f"/api/conversations/{conv_id}/end"),
                                     ("DELETE", f"/api/conversations/{conv_id}"), ("POST", "/review/login"),
                                     ("POST", "/dashboard/login")):
                    r = browser.request(method, path, json={"content": "Hi"}, headers=headers)
                    assert_openai_error(r, 403, "cross_site_request")
            assert len(store_of(srv).list()) == 1 and not store_of(srv).get(conv_id).ended
            # the page itself, a browser that says nothing, and a tool: all fine
            assert browser.post(f"/api/conversations/{conv_id}/publish", json={"allowed": True},
                                headers=own).status_code == 200
            assert browser.post(f"/api/conversations/{conv_id}/end", headers={"Sec-Fetch-Site": "same-origin"}
                                ).status_code == 200
            assert browser.get("/api/conversations", headers=evil[0]).status_code == 200  # reading changes nothing
        assert ask(srv, headers=evil[0]).status_code == 200  # /v1 is for programs, with keys; no cookies to abuse


def test_the_chat_pages_routes_refuse_an_oversized_body(serve) -> None:
    """The chat page's JSON routes have the API's body cap: by Content-Length, and sent in chunks without one."""
    with serve(ScriptedEngine(), max_body_bytes=2048) as srv:
        big = httpx.post(srv.url + "/api/chat", json={"content": "x" * 5000})

        def chunks():
            yield b'{"content": "'
            for _ in range(10):
                yield b"y" * 500
            yield b'"}'

        chunked = httpx.post(srv.url + "/api/chat", content=chunks(), headers={"content-type": "application/json"})
        small = httpx.post(srv.url + "/api/chat", json={"content": "hello"})
        stored = [m.content for c in store_of(srv).list() for m in c.messages if m.role == "user"]
    for r in (big, chunked):
        assert_openai_error(r, 413, "request_too_large")
    assert small.status_code == 200 and stored == ["hello"]  # under the cap, as before; nothing else stored
