"""The chat page at `/`, driven in headless Chromium (Debian's /usr/bin/chromium) through Playwright.

Each test runs a real server on 127.0.0.1 (the `serve` fixture) and a fresh browser context (fresh cookie),
and checks both what the page shows and what the store holds afterwards.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import LiveServer, ScriptedEngine

from thresher.engines import EngineError
from thresher.store import Store

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    pytest.skip(
        f"no Chromium at {CHROMIUM}: install Debian's package (`apt-get install chromium`); "
        "these tests never download a browser",
        allow_module_level=True,
    )

from playwright.sync_api import Browser, Page, expect, sync_playwright  # noqa: E402

pytestmark = pytest.mark.browser

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",  # we run as root
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    # no calls home: the test machine has no network and Chromium would otherwise retry endlessly
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
REPLY = "Hello there, friend."  # ScriptedEngine's default words, joined
WAIT_MS = 10_000  # generous: CI machines can be small and busy
expect.set_options(timeout=WAIT_MS)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def open_chat(browser: Browser, serve) -> Iterator[Callable[..., tuple[Page, LiveServer]]]:
    """open_chat(engine=None, **setting_overrides) -> (page at /, live server), in a new browser context."""
    with contextlib.ExitStack() as stack:

        def start(engine=None, **overrides) -> tuple[Page, LiveServer]:
            live = stack.enter_context(serve(engine or ScriptedEngine(delay=0.05), **overrides))
            context = browser.new_context(viewport={"width": 900, "height": 700}, color_scheme="light")
            stack.callback(context.close)
            context.set_default_timeout(WAIT_MS)
            page = context.new_page()
            page.goto(live.url + "/")
            return page, live

        yield start


def store_of(live: LiveServer) -> Store:
    return live.server.config.app.state.rt.store


def messages(live: LiveServer, conv_id: str) -> list[tuple[str, str, str]]:
    return [(m.role, m.content, m.status) for m in store_of(live).get(conv_id).messages]


def only_conversation(live: LiveServer) -> str:
    convs = store_of(live).list()
    assert len(convs) == 1, [c.id for c in convs]
    return convs[0].id


def wait_for(check: Callable[[], bool], timeout: float = WAIT_MS / 1000) -> None:
    """For store changes made by a request the page does not wait on (the publish switch)."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


def message_box(page: Page):
    return page.get_by_label("Message", exact=True)


def send(page: Page, text: str) -> None:
    box = message_box(page)
    box.fill(text)
    box.press("Enter")


def assistant_texts(page: Page):
    return page.get_by_role("log").locator(".msg.assistant .body")


def wait_reply_done(page: Page) -> None:
    expect(page.get_by_role("status")).to_have_text("Reply complete.")


RECORD_ASSISTANT_TEXT = """() => {
  window.__seen = [];
  const log = document.getElementById("log"), status = document.getElementById("status");
  new MutationObserver(() => {
    const bodies = log.querySelectorAll(".msg.assistant .body");
    if (bodies.length) window.__seen.push({
      text: bodies[bodies.length - 1].textContent, status: status.textContent,
      send: document.getElementById("send").disabled, new: document.getElementById("new").disabled,
    });
  }).observe(log, { childList: true, subtree: true, characterData: true });
}"""


def test_enter_sends_and_the_reply_streams_in(open_chat, tmp_path: Path) -> None:
    page, live = open_chat()
    page.evaluate(RECORD_ASSISTANT_TEXT)
    send(page, "Hi, who are you?")

    log = page.get_by_role("log")
    expect(log.locator(".msg.user .body")).to_have_text("Hi, who are you?")
    expect(assistant_texts(page)).to_have_text(REPLY)
    wait_reply_done(page)
    expect(message_box(page)).to_be_focused()
    expect(message_box(page)).to_have_value("")
    expect(page.get_by_role("button", name="New conversation")).to_be_enabled()

    # What the transcript showed at each change: the reply grew word by word while the stream was going, and
    # the page would not send another message or switch conversations until it was done.
    seen: list[dict] = page.evaluate("window.__seen")
    texts = [s["text"] for s in seen]
    partial = [s for s in seen if s["text"] and s["text"] != REPLY]
    assert len({s["text"] for s in partial}) >= 2, seen
    assert all(s["status"].startswith("The assistant is replying") for s in partial), seen
    assert all(s["send"] and s["new"] for s in partial), seen
    grown = [t for i, t in enumerate(texts) if i == 0 or t != texts[i - 1]]
    assert all(REPLY.startswith(t) for t in grown), grown
    assert all(len(a) < len(b) for a, b in zip(grown, grown[1:], strict=False)), grown
    assert texts[-1] == REPLY

    conv_id = only_conversation(live)
    assert messages(live, conv_id) == [
        ("user", "Hi, who are you?", "complete"),
        ("assistant", REPLY, "complete"),
    ]
    conv = store_of(live).get(conv_id)
    assert conv.source == "web" and not conv.ended and not conv.publish_allowed  # nobody said yes

    page.screenshot(path=tmp_path / "chat.png", full_page=True)

    # A second message continues the same conversation.
    send(page, "And again?")
    expect(assistant_texts(page)).to_have_count(2)
    wait_reply_done(page)
    expect(assistant_texts(page).nth(1)).to_have_text(REPLY)
    assert only_conversation(live) == conv_id
    assert [m[:2] for m in messages(live, conv_id)] == [
        ("user", "Hi, who are you?"), ("assistant", REPLY), ("user", "And again?"), ("assistant", REPLY),
    ]


def test_the_page_follows_a_long_reply(open_chat) -> None:
    """The newest text stays in sight above the sticky composer, however long the transcript grows."""
    page, _ = open_chat(ScriptedEngine(words=[f"line {i}\n" for i in range(30)], delay=0.005))
    page.set_viewport_size({"width": 600, "height": 500})
    for n in range(2):
        send(page, f"Tell me a long story, part {n}.")
        wait_reply_done(page)
    last = assistant_texts(page).nth(1)
    expect(last).to_contain_text("line 29")
    assert page.evaluate("window.scrollY") > 0
    reply_box, composer = last.bounding_box(), page.locator("#composer").bounding_box()
    assert reply_box is not None and composer is not None
    # the end of the reply is not hidden under the composer
    assert reply_box["y"] + reply_box["height"] <= composer["y"]
    expect(page.get_by_role("status")).to_be_in_viewport()


def test_a_refused_message_goes_back_in_the_box(open_chat) -> None:
    page, live = open_chat(ScriptedEngine(), max_chars=20)
    long = "This message is far too long."
    send(page, long)
    expect(page.get_by_role("status")).to_contain_text("message too long")
    expect(message_box(page)).to_have_value(long)
    expect(page.get_by_role("log").locator(".msg")).to_have_count(0)  # it never joined the conversation
    assert store_of(live).list() == []

    send(page, "Shorter.")
    wait_reply_done(page)
    expect(page.get_by_role("log").locator(".msg .body")).to_have_text(["Shorter.", REPLY])


class FailingEngine(ScriptedEngine):
    def stream_chat(self, messages, params):
        yield from list(super().stream_chat(messages, params))[:2]
        raise EngineError("out of memory")


def test_a_model_failure_is_reported(open_chat) -> None:
    page, live = open_chat(FailingEngine())
    send(page, "Hello")
    expect(page.get_by_role("status")).to_contain_text("the model failed: out of memory")
    expect(page.get_by_role("log").locator(".msg.assistant")).to_have_count(0)
    expect(message_box(page)).to_have_value("Hello")
    expect(page.get_by_role("button", name="Send")).to_be_enabled()
    conv = store_of(live).get(only_conversation(live))
    assert [(m.role, m.content, m.status) for m in conv.messages] == [
        ("user", "Hello", "complete"), ("assistant", "Hello there", "interrupted"),
    ]


def test_shift_enter_adds_a_line_instead_of_sending(open_chat) -> None:
    page, live = open_chat(ScriptedEngine())
    box = message_box(page)
    box.click()
    page.keyboard.type("first line")
    page.keyboard.press("Shift+Enter")
    page.keyboard.type("second line")
    expect(box).to_have_value("first line\nsecond line")
    expect(page.get_by_role("log").locator(".msg")).to_have_count(0)
    assert store_of(live).list() == []

    box.press("Enter")
    wait_reply_done(page)
    expect(page.get_by_role("log").locator(".msg.user .body")).to_have_text("first line\nsecond line")
    assert messages(live, only_conversation(live))[0] == ("user", "first line\nsecond line", "complete")


def test_end_conversation_then_start_a_new_one(open_chat) -> None:
    page, live = open_chat()
    end = page.get_by_role("button", name="End conversation")
    expect(end).to_be_disabled()  # nothing to end yet

    send(page, "Hello")
    wait_reply_done(page)
    first = only_conversation(live)
    expect(end).to_be_enabled()
    end.click()

    expect(page.get_by_role("status")).to_contain_text("Conversation ended")
    expect(message_box(page)).to_be_disabled()
    expect(page.get_by_role("button", name="Send")).to_be_disabled()
    expect(end).to_be_disabled()
    conv = store_of(live).get(first)
    assert conv.ended and conv.end_reason == "button" and conv.status == "ended"

    page.get_by_role("button", name="New conversation").click()
    expect(page.get_by_role("log").locator(".msg")).to_have_count(0)
    expect(message_box(page)).to_be_enabled()
    expect(message_box(page)).to_be_focused()
    send(page, "Fresh start")
    wait_reply_done(page)
    convs = {c.id: c for c in store_of(live).list()}
    assert len(convs) == 2 and first in convs
    (second,) = set(convs) - {first}
    assert not convs[second].ended
    assert messages(live, second) == [("user", "Fresh start", "complete"), ("assistant", REPLY, "complete")]
    assert [m[1] for m in messages(live, first)] == ["Hello", REPLY]  # the ended one is untouched


def test_a_conversation_ended_in_the_page_is_judged(open_chat) -> None:
    page, live = open_chat(judge="serving", judge_interval_seconds=0.1)
    page.get_by_role("switch", name="Publish this conversation").check()  # only what may be published is judged
    send(page, "Hello")
    wait_reply_done(page)
    cid = only_conversation(live)
    page.get_by_role("button", name="End conversation").click()
    expect(page.get_by_role("status")).to_contain_text("Conversation ended")
    wait_for(lambda: bool(store_of(live).judgments(cid)))
    (judgment,) = store_of(live).judgments(cid)
    assert judgment.status == "ok" and judgment.score == pytest.approx(5.5)  # the scripted engine is uniform
    assert store_of(live).get(cid).status == "judged"


def test_nothing_is_published_without_a_yes(open_chat) -> None:
    page, live = open_chat(ScriptedEngine())
    switch = page.get_by_role("switch", name="Publish this conversation")
    expect(switch).not_to_be_checked()
    send(page, "Keep this private")
    wait_reply_done(page)
    first = only_conversation(live)
    assert store_of(live).get(first).publish_allowed is False
    page.get_by_role("button", name="End conversation").click()
    expect(page.get_by_role("status")).to_contain_text("You chose not to publish it")

    page.get_by_role("button", name="New conversation").click()
    switch.check()
    expect(page.get_by_role("status")).to_have_text("This conversation may be published.")
    send(page, "This one may be published")
    wait_reply_done(page)
    (second,) = {c.id for c in store_of(live).list()} - {first}
    assert store_of(live).get(second).publish_allowed is True


def test_switching_publication_on_mid_conversation_and_off_again(open_chat) -> None:
    page, live = open_chat(ScriptedEngine())
    send(page, "Hello")
    wait_reply_done(page)
    conv_id = only_conversation(live)
    store = store_of(live)
    assert store.get(conv_id).publish_allowed is False

    switch = page.get_by_role("switch", name="Publish this conversation")
    switch.check()
    expect(page.get_by_role("status")).to_have_text("This conversation may be published.")
    wait_for(lambda: store.get(conv_id).publish_allowed is True)

    switch.uncheck()
    expect(page.get_by_role("status")).to_have_text("This conversation will not be published.")
    wait_for(lambda: store.get(conv_id).publish_allowed is False)
    expect(switch).not_to_be_checked()


def test_consent_notice_names_the_licence(open_chat) -> None:
    page, _ = open_chat(ScriptedEngine())
    notice = page.get_by_role("note")
    expect(notice).to_be_visible()
    expect(notice).to_contain_text("public dataset")
    expect(notice).to_contain_text("CC-BY-4.0")
    expect(notice.get_by_role("switch", name="Publish this conversation")).to_be_visible()


def test_consent_notice_follows_the_configured_licence(open_chat) -> None:
    page, _ = open_chat(ScriptedEngine(), licence="CC0-1.0")
    expect(page.get_by_role("note")).to_contain_text("CC0-1.0")


@pytest.mark.slow
def test_the_real_model_answers_in_the_page(open_chat, embedded_engine) -> None:
    page, live = open_chat(embedded_engine, max_tokens_default=32)
    send(page, "Say hello.")
    expect(page.get_by_role("status")).to_have_text("Reply complete.", timeout=120_000)
    text = assistant_texts(page).inner_text().strip()
    assert text
    conv = store_of(live).get(only_conversation(live))
    assert [m.role for m in conv.messages] == ["user", "assistant"]
    assert conv.messages[0].content == "Say hello."
    assert conv.messages[1].content.strip() == text
    assert conv.messages[1].status == "complete"
