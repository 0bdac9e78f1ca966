"""The chat page at `/`, driven in headless Chromium (Debian's /usr/bin/chromium) through Playwright.

Each test runs a real server on 127.0.0.1 (the `serve` fixture) and a fresh browser context (fresh cookie, fresh
local storage: a first visit), and checks both what the page shows and what the store holds afterwards. Screenshots
of the page (light and dark, phone and desktop) are kept in tests/artifacts/.
"""

from __future__ import annotations

import contextlib
import re
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
ARTIFACTS = Path(__file__).parent / "artifacts"  # screenshots; ignored by git (its own .gitignore)
DESKTOP = {"width": 1100, "height": 760}
PHONE = {"width": 390, "height": 844}
expect.set_options(timeout=WAIT_MS)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def open_chat(browser: Browser, serve) -> Iterator[Callable[..., tuple[Page, LiveServer]]]:
    """open_chat(engine=None, *, phone=False, dark=False, answer="no"|"yes"|None, **setting_overrides)
    -> (page at /, live server), in a new browser context. `answer` replies to the first-visit notice."""
    with contextlib.ExitStack() as stack:

        def start(engine=None, *, phone: bool = False, dark: bool = False, answer: str | None = "no",
                  live: LiveServer | None = None, **overrides) -> tuple[Page, LiveServer]:
            if live is None:
                live = stack.enter_context(serve(engine or ScriptedEngine(delay=0.03), **overrides))
            context = browser.new_context(
                viewport=PHONE if phone else DESKTOP, color_scheme="dark" if dark else "light",
                has_touch=phone, is_mobile=phone,
            )
            stack.callback(context.close)
            context.set_default_timeout(WAIT_MS)
            page = context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            stack.callback(lambda: _no_page_errors(errors))
            page.goto(live.url + "/")
            if answer is not None:
                name = "Yes, my conversations may be published" if answer == "yes" else "No, keep them private"
                page.get_by_role("button", name=name).click()
                expect(page.get_by_role("region", name="Before you chat")).to_be_hidden()
            return page, live

        yield start


def _no_page_errors(errors: list[str]) -> None:
    assert errors == [], errors


def store_of(live: LiveServer) -> Store:
    return live.server.config.app.state.rt.store


def messages(live: LiveServer, conv_id: str) -> list[tuple[str, str, str]]:
    return [(m.role, m.content, m.status) for m in store_of(live).get(conv_id).messages]


def only_conversation(live: LiveServer) -> str:
    convs = store_of(live).list()
    assert len(convs) == 1, [c.id for c in convs]
    return convs[0].id


def wait_for(check: Callable[[], bool], timeout: float = WAIT_MS / 1000) -> None:
    """For store changes made by a request the page does not wait on."""
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


def transcript(page: Page):
    return page.get_by_role("log")


def replies(page: Page):
    return transcript(page).locator(".msg.assistant .body")


def wait_reply_done(page: Page, said: str = "Reply complete.") -> None:
    expect(page.get_by_role("status")).to_have_text(said)


def end_conversation(page: Page) -> None:
    """Press End and confirm in the dialog that says what ending does."""
    page.get_by_role("button", name="End conversation").click()
    page.get_by_role("dialog", name="End this conversation?").get_by_role("button", name="End it").click()


def shoot(page: Page, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / ".gitignore").write_text("*\n")
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=path, full_page=False)
    print(f"screenshot: {path}")
    return path


RECORD = """() => {
  window.__seen = []; window.__said = [];
  const log = document.getElementById("log"), status = document.getElementById("status");
  new MutationObserver(() => {
    const bodies = log.querySelectorAll(".msg.assistant .body");
    if (bodies.length) window.__seen.push({
      text: bodies[bodies.length - 1].textContent, status: status.textContent,
      send: document.getElementById("send").disabled, new: document.getElementById("new").disabled,
    });
  }).observe(log, { childList: true, subtree: true, characterData: true });
  new MutationObserver(() => window.__said.push(status.textContent))
    .observe(status, { childList: true, subtree: true, characterData: true });
}"""


# --- sending and reading --------------------------------------------------------------------------------------------

def test_enter_sends_and_the_reply_streams_in(open_chat) -> None:
    page, live = open_chat()
    page.evaluate(RECORD)
    send(page, "Hi, who are you?")

    expect(transcript(page).locator(".msg.user .body")).to_have_text("Hi, who are you?")
    expect(replies(page)).to_have_text(REPLY)
    wait_reply_done(page)
    expect(message_box(page)).to_be_focused()  # focus comes back to the input after a reply
    expect(message_box(page)).to_have_value("")

    # The reply grew word by word (appended, so it can be selected while it streams); the page would not send
    # another message or switch conversations meanwhile.
    seen: list[dict] = page.evaluate("window.__seen")
    partial = [s for s in seen if s["text"] and s["status"].startswith("The assistant is replying")]
    assert len({s["text"] for s in partial}) >= 3, seen
    assert all(s["send"] and s["new"] for s in partial), seen
    grown = [s["text"] for s in partial]
    assert all(REPLY.startswith(t) for t in grown), grown
    # Announced politely at the start and the end only, never token by token.
    said = [s for s in page.evaluate("window.__said") if s]
    assert said == ["The assistant is replying…", "Reply complete."], said
    expect(transcript(page)).to_have_attribute("aria-live", "off")

    conv_id = only_conversation(live)
    assert messages(live, conv_id) == [("user", "Hi, who are you?", "complete"), ("assistant", REPLY, "complete")]
    conv = store_of(live).get(conv_id)
    assert conv.source == "web" and not conv.ended and conv.publish_allowed is False  # the user said no

    send(page, "And again?")
    expect(replies(page)).to_have_count(2)
    wait_reply_done(page)
    assert only_conversation(live) == conv_id
    assert [m[:2] for m in messages(live, conv_id)] == [
        ("user", "Hi, who are you?"), ("assistant", REPLY), ("user", "And again?"), ("assistant", REPLY)]


def test_table_alignment_survives_the_pages_security_policy(open_chat) -> None:
    """Markdown's column alignment arrives as classes: the policy forbids inline styles, which it would block."""
    page, _ = open_chat(ScriptedEngine(words=["| item | price |\n", "|:--|--:|\n", "| tea | 3 |\n"]))
    send(page, "A table please")
    wait_reply_done(page)
    cell = replies(page).first.locator("td").nth(1)
    expect(cell).to_have_text("3")
    expect(cell).to_have_css("text-align", "right")


def test_markdown_and_code_render_with_a_copy_button(open_chat) -> None:
    words = ["Some **bold** text.\n\n", "```python\n", "def f(x):\n", "    return x * 2\n", "```\n"]
    page, _ = open_chat(ScriptedEngine(words=words, delay=0.01))
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    send(page, "Show me code")
    wait_reply_done(page)
    reply = replies(page).first
    expect(reply.locator("strong")).to_have_text("bold")
    expect(reply.locator("pre code .k").first).to_have_text("def")  # highlighted by Pygments on the server
    reply.get_by_role("button", name="Copy code").click()
    expect(page.get_by_role("status")).to_have_text("Code copied.")
    assert page.evaluate("navigator.clipboard.readText()") == "def f(x):\n    return x * 2\n"


def test_a_reply_carrying_markup_is_shown_inert(open_chat) -> None:
    evil = ["<script>window.__pwned = 1</script>", " <img src=x onerror=\"window.__pwned = 2\">",
            " [click](javascript:window.__pwned=3)", "\n\n<b onmouseover=\"window.__pwned=4\">bold?</b>"]
    page, live = open_chat(ScriptedEngine(words=evil, delay=0.01))
    send(page, "Say something nasty")
    wait_reply_done(page)
    reply = replies(page).first
    expect(reply).to_contain_text("<script>window.__pwned = 1</script>")  # shown as text
    expect(reply).to_contain_text('onerror="window.__pwned = 2"')
    assert reply.locator("script, img, b, a[href^=javascript]").count() == 0
    assert page.evaluate("document.querySelectorAll('#log [onerror], #log [onmouseover], #log script').length") == 0
    reply.hover()
    page.mouse.click(5, 5)
    assert page.evaluate("window.__pwned") is None
    # The text itself is kept exactly as the model wrote it.
    assert messages(live, only_conversation(live))[1][1] == "".join(evil)


def test_the_page_follows_a_long_reply_until_the_reader_scrolls_up(open_chat) -> None:
    page, _ = open_chat(ScriptedEngine(words=[f"line {i}\n\n" for i in range(60)], delay=0.02))
    page.set_viewport_size({"width": 700, "height": 500})
    send(page, "Tell me a long story.")
    expect(replies(page).first).to_contain_text("line 20")
    scroller = page.locator("#scroller")
    at_bottom = "el => el.scrollHeight - el.scrollTop - el.clientHeight < 60"
    assert scroller.evaluate(at_bottom)  # following while it streams
    scroller.evaluate("el => el.scrollTo(0, 0)")  # the reader scrolls up to read something
    jump = page.get_by_role("button", name="Jump to the newest message")
    expect(jump).to_be_visible()
    wait_reply_done(page)
    assert scroller.evaluate("el => el.scrollTop") < 50  # left where the reader is
    jump.click()
    expect(jump).to_be_hidden()
    assert scroller.evaluate(at_bottom)
    expect(replies(page).first).to_contain_text("line 59")
    expect(replies(page).first.get_by_text("line 59")).to_be_in_viewport()


# --- errors: nothing typed is lost ----------------------------------------------------------------------------------

def test_a_refused_message_goes_back_in_the_box_with_retry(open_chat) -> None:
    page, live = open_chat(ScriptedEngine(), max_chars=20)
    long = "This message is far too long."
    send(page, long)
    alert = page.get_by_role("alert")
    expect(alert).to_contain_text("message too long")
    expect(message_box(page)).to_have_value(long)
    expect(transcript(page).locator(".msg")).to_have_count(0)  # it never joined the conversation
    assert store_of(live).list() == []

    message_box(page).fill("Shorter.")
    alert.get_by_role("button", name="Retry").click()
    wait_reply_done(page)
    expect(transcript(page).locator(".msg .body")).to_have_text(["Shorter.", REPLY])
    expect(page.get_by_role("alert")).to_have_count(0)


def test_a_message_sent_while_the_server_is_down_is_kept(open_chat) -> None:
    page, live = open_chat(ScriptedEngine())
    page.route("**/api/chat", lambda route: route.abort("connectionrefused"))
    send(page, "Are you there?")
    expect(page.get_by_role("alert")).to_contain_text("could not be reached")
    expect(message_box(page)).to_have_value("Are you there?")
    page.unroute("**/api/chat")
    page.get_by_role("alert").get_by_role("button", name="Retry").click()
    wait_reply_done(page)
    assert messages(live, only_conversation(live)) == [
        ("user", "Are you there?", "complete"), ("assistant", REPLY, "complete")]


class FailingEngine(ScriptedEngine):
    """Fails after two words on its first reply; answers normally afterwards."""

    failed = False

    def stream_chat(self, messages, params):
        if self.failed:
            yield from super().stream_chat(messages, params)
            return
        self.failed = True
        yield from list(super().stream_chat(messages, params))[:2]
        raise EngineError("out of memory")


def test_a_model_failure_shows_an_inline_error_with_retry(open_chat) -> None:
    page, live = open_chat(FailingEngine())
    send(page, "Hello")
    alert = page.get_by_role("alert")
    expect(alert).to_contain_text("the model failed: out of memory")
    expect(transcript(page).locator(".msg.user .body")).to_have_text("Hello")  # the message is in and stored
    expect(replies(page)).to_have_text("Hello there")  # the partial reply is kept, marked cut off
    cid = only_conversation(live)
    assert messages(live, cid) == [("user", "Hello", "complete"), ("assistant", "Hello there", "interrupted")]
    alert.get_by_role("button", name="Retry").click()
    wait_reply_done(page)
    expect(replies(page)).to_have_text(REPLY)
    expect(transcript(page).locator(".count")).to_have_text("2 / 2")  # the failed attempt is kept as version 1
    assert messages(live, cid)[-1] == ("assistant", REPLY, "complete")


# --- controls -------------------------------------------------------------------------------------------------------

def test_shift_enter_and_ime_composition_never_send(open_chat) -> None:
    page, live = open_chat(ScriptedEngine())
    box = message_box(page)
    box.click()
    page.keyboard.type("first line")
    page.keyboard.press("Shift+Enter")
    page.keyboard.type("second line")
    # An input method confirming a candidate with Enter (isComposing, or keyCode 229) must not send.
    for init in ("{key: 'Enter', isComposing: true, bubbles: true, cancelable: true}",
                 "{key: 'Enter', keyCode: 229, bubbles: true, cancelable: true}"):
        box.evaluate(f"el => el.dispatchEvent(new KeyboardEvent('keydown', {init}))")
    expect(box).to_have_value("first line\nsecond line")
    page.wait_for_timeout(200)
    expect(transcript(page).locator(".msg")).to_have_count(0)
    assert store_of(live).list() == []

    box.press("Enter")
    wait_reply_done(page)
    assert messages(live, only_conversation(live))[0] == ("user", "first line\nsecond line", "complete")


def test_stop_keeps_the_partial_reply_and_continue_extends_it(open_chat) -> None:
    engine = ScriptedEngine(words=[f"w{i} " for i in range(200)], delay=0.02)
    page, live = open_chat(engine)
    send(page, "Count for me")
    expect(replies(page).first).to_contain_text("w3")
    page.get_by_role("button", name="Stop").click()
    wait_reply_done(page, "Reply stopped. The text so far is kept.")
    cid = only_conversation(live)
    (user, reply) = messages(live, cid)
    assert user == ("user", "Count for me", "complete")
    assert reply[2] == "interrupted" and reply[1].startswith("w0 w1 w2 w3") and len(reply[1].split()) < 150
    expect(replies(page).first).to_have_text(reply[1].strip())
    expect(transcript(page).locator(".cut")).to_contain_text("stopped")
    expect(message_box(page)).to_be_focused()

    engine.words, engine.delay = ["and", " more."], 0.01
    page.get_by_role("button", name="Continue reply").click()
    wait_reply_done(page)
    (_, grown) = messages(live, cid)
    assert grown == ("assistant", reply[1] + "and more.", "complete")
    expect(transcript(page).locator(".cut")).to_have_count(0)


def test_escape_stops_generating(open_chat) -> None:
    page, live = open_chat(ScriptedEngine(words=[f"w{i} " for i in range(200)], delay=0.02))
    send(page, "Go on")
    expect(replies(page).first).to_contain_text("w2")
    page.keyboard.press("Escape")
    wait_reply_done(page, "Reply stopped. The text so far is kept.")
    assert messages(live, only_conversation(live))[1][2] == "interrupted"


def test_regenerate_keeps_every_version_and_switches_between_them(open_chat) -> None:
    engine = ScriptedEngine(words=["First", " answer."], delay=0.01)
    page, live = open_chat(engine)
    send(page, "Question?")
    wait_reply_done(page)
    engine.words = ["Second", " answer."]
    page.get_by_role("button", name="Regenerate reply").click()
    wait_reply_done(page)
    expect(replies(page)).to_have_text("Second answer.")
    expect(transcript(page).locator(".count")).to_have_text("2 / 2")
    page.get_by_role("button", name="Previous version of this reply").click()
    expect(replies(page)).to_have_text("First answer.")
    expect(transcript(page).locator(".count")).to_have_text("1 / 2")
    cid = only_conversation(live)
    assert [m[1] for m in messages(live, cid)] == ["Question?", "First answer."]  # the store follows the switch
    page.get_by_role("button", name="Next version of this reply").click()
    expect(replies(page)).to_have_text("Second answer.")
    assert [m[1] for m in messages(live, cid)] == ["Question?", "Second answer."]


def test_edit_an_earlier_message_and_resend_as_a_branch(open_chat) -> None:
    engine = ScriptedEngine(words=["One."], delay=0.01)
    page, live = open_chat(engine)
    send(page, "First question")
    wait_reply_done(page)
    send(page, "Second question")
    expect(replies(page)).to_have_count(2)
    wait_reply_done(page)
    engine.words = ["Edited", " answer."]
    page.get_by_role("button", name="Edit message").first.click()
    editor = page.get_by_role("textbox", name="Edit your message")
    expect(editor).to_be_focused()
    editor.fill("First question, reworded")
    editor.press("Enter")
    wait_reply_done(page)
    expect(transcript(page).locator(".msg .body")).to_have_text(["First question, reworded", "Edited answer."])
    cid = only_conversation(live)
    assert [m[1] for m in messages(live, cid)] == ["First question, reworded", "Edited answer."]
    assert engine.prompts[-1] == [{"role": "user", "content": "First question, reworded"}]
    # The original branch is still there, one click away.
    page.get_by_role("button", name="Previous version of this message").click()
    expect(transcript(page).locator(".msg .body")).to_have_text(["First question", "One.", "Second question", "One."])


def test_end_conversation_then_start_a_new_one_with_the_shortcut(open_chat) -> None:
    page, live = open_chat()
    end = page.get_by_role("button", name="End conversation")
    expect(end).to_be_disabled()  # nothing to end yet
    send(page, "Hello")
    wait_reply_done(page)
    first = only_conversation(live)
    end_conversation(page)
    expect(page.get_by_role("status")).to_contain_text("Private: it will not be published")
    expect(message_box(page)).to_be_disabled()
    expect(page.get_by_role("button", name="Send")).to_be_disabled()
    assert store_of(live).get(first).end_reason == "button"

    page.keyboard.press("Control+Shift+O")
    expect(transcript(page).locator(".msg")).to_have_count(0)
    expect(message_box(page)).to_be_enabled()
    expect(message_box(page)).to_be_focused()
    send(page, "Fresh start")
    wait_reply_done(page)
    convs = {c.id for c in store_of(live).list()}
    assert len(convs) == 2 and first in convs
    (second,) = convs - {first}
    assert messages(live, second) == [("user", "Fresh start", "complete"), ("assistant", REPLY, "complete")]


def test_history_switch_and_delete(open_chat) -> None:
    page, live = open_chat(ScriptedEngine(words=["Ok."]))
    send(page, "About tea")
    wait_reply_done(page)
    page.get_by_role("button", name="New chat").click()
    send(page, "About owls")
    wait_reply_done(page)
    listed = page.get_by_role("complementary", name="Your conversations").locator(".open")
    expect(listed).to_have_count(2)
    expect(listed.first).to_contain_text("About owls")  # newest first
    expect(listed.first).to_have_attribute("aria-current", "true")
    listed.nth(1).click()
    expect(transcript(page).locator(".msg.user .body")).to_have_text("About tea")
    # The list belongs to this browser: another browser sees nothing of it.
    other, _ = open_chat(live=live)
    expect(other.locator("#history li")).to_have_count(0)

    owls = next(c.id for c in store_of(live).list() if c.messages[0].content == "About owls")
    page.once("dialog", lambda d: d.accept())
    page.get_by_role("button", name="Delete conversation: About owls").click()
    expect(listed).to_have_count(1)
    expect(page.get_by_role("status")).to_have_text("Conversation deleted.")
    assert [c.messages[0].content for c in store_of(live).list()] == ["About tea"]
    with pytest.raises(LookupError):
        store_of(live).get(owls)
    # Reloading keeps the conversation shown (its id is in the address).
    page.reload()
    expect(transcript(page).locator(".msg.user .body")).to_have_text("About tea")


def test_feedback_with_a_reason_is_stored(open_chat) -> None:
    page, live = open_chat()
    send(page, "Hello")
    wait_reply_done(page)
    page.get_by_role("button", name="Bad reply").click()
    expect(page.get_by_role("button", name="Bad reply")).to_have_attribute("aria-pressed", "true")
    why = page.get_by_label("What was wrong? (optional)")
    expect(why).to_be_focused()
    expect(page.locator(".why")).to_contain_text("shown to the people who review the dataset")
    why.fill("Too generic")
    why.press("Enter")
    expect(page.get_by_role("status")).to_have_text("Reason saved.")
    cid = only_conversation(live)
    (rating,) = store_of(live).feedback([cid])[cid]
    assert (rating.rating, rating.reason, rating.position) == ("down", "Too generic", 1)
    page.get_by_role("button", name="Bad reply").click()  # pressing it again takes the rating back
    expect(page.get_by_role("status")).to_have_text("Rating removed.")
    assert store_of(live).feedback([cid]) == {}


# --- consent --------------------------------------------------------------------------------------------------------

def test_first_visit_notice_in_plain_words(open_chat) -> None:
    page, live = open_chat(ScriptedEngine(), answer=None, licence="CC0-1.0")
    notice = page.get_by_role("region", name="Before you chat")
    expect(notice).to_be_visible()
    for words in ("public dataset", "CC0-1.0", "personal data are replaced", "Turn it off at any time",
                  "takedown", "delete"):
        expect(notice).to_contain_text(words)
    switch = page.get_by_role("switch", name="Publish this conversation")
    expect(switch).not_to_be_checked()
    # Not answering is a no: nothing is published without a yes.
    send(page, "Hello before answering")
    wait_reply_done(page)
    assert store_of(live).get(only_conversation(live)).publish_allowed is False

    notice.get_by_role("button", name="Yes, my conversations may be published").click()
    expect(notice).to_be_hidden()
    wait_for(lambda: store_of(live).get(only_conversation(live)).publish_allowed is True)  # this one too
    page.reload()  # the answer is remembered in this browser, and new chats start with it
    expect(notice).to_be_hidden()
    page.keyboard.press("Control+Shift+O")
    expect(switch).to_be_checked()
    page.get_by_role("button", name="About publishing").click()
    expect(notice).to_be_visible()


def test_switching_publication_on_and_off_mid_conversation(open_chat) -> None:
    page, live = open_chat()
    send(page, "Hello")
    wait_reply_done(page)
    cid = only_conversation(live)
    switch = page.get_by_role("switch", name="Publish this conversation")
    expect(page.locator("#pubstate")).to_have_text("Private: it will not be published.")
    switch.check()
    expect(page.get_by_role("status")).to_have_text("This conversation may be published.")
    wait_for(lambda: store_of(live).get(cid).publish_allowed is True)
    switch.uncheck()
    expect(page.get_by_role("status")).to_have_text("This conversation will not be published.")
    wait_for(lambda: store_of(live).get(cid).publish_allowed is False)


def test_withdrawal_before_publication_is_honoured_end_to_end(open_chat, remote: Path, tmp_path: Path) -> None:
    """Two conversations both allowed, ended and judged; the owner withdraws one before the publish run. The real
    publish to a bare git remote carries only the other; the published one's switch is then locked."""
    from tests_helpers import git

    from thresher.dataset_repo import DatasetRepo
    from thresher.flywheel import publish

    page, live = open_chat(answer="yes", judge="serving", judge_interval_seconds=0.1)
    ids = []
    for topic in ("tides", "owls"):
        page.keyboard.press("Control+Shift+O")
        send(page, f"Tell me about {topic}")
        wait_reply_done(page)
        end_conversation(page)
        expect(page.get_by_role("status")).to_contain_text(re.compile("rates it as training data|Rated 5.5"))
        ids.append(next(c.id for c in store_of(live).list() if c.messages[0].content.endswith(topic)))
    store = store_of(live)
    wait_for(lambda: all(store.get(i).status == "judged" for i in ids))  # 5.5 from the uniform scripted judge

    # Withdraw "tides" from its page (an ended conversation's switch still works until publication).
    page.locator("#history .open", has_text="Tell me about tides").click()
    switch = page.get_by_role("switch", name="Publish this conversation")
    expect(switch).to_be_checked()
    switch.uncheck()
    expect(page.locator("#pubstate")).to_have_text("Ended. Private: it will not be published.")

    repo = DatasetRepo(tmp_path / "clone", str(remote)).open()
    report = publish(store, repo, threshold=5.0)
    assert report.published == [ids[1]] and report.pushed
    names = git(remote, "log", "--all", "--name-only", "--format=")
    assert ids[1] in names and ids[0] not in names
    everything = git(remote, "log", "-p", "--all")
    assert "tides" not in everything and "owls" in everything

    page.locator("#history .open", has_text="Tell me about owls").click()
    expect(switch).to_be_disabled()
    expect(page.locator("#pubstate")).to_contain_text("Published in the public dataset")
    status = page.request.post(f"{live.url}/api/conversations/{ids[1]}/publish", data={"allowed": False}).status
    assert status == 409 and store.get(ids[1]).publish_allowed is True
    status = page.request.delete(f"{live.url}/api/conversations/{ids[1]}").status
    assert status == 409 and store.get(ids[1])  # deleting cannot unpublish: that is a takedown


# --- keyboard, phone, looks -----------------------------------------------------------------------------------------

def test_keyboard_only(open_chat) -> None:
    page, live = open_chat(ScriptedEngine(words=["Fine", " thanks."], delay=0.01), answer=None)
    # Tab from the top reaches the notice's answer, then the message box; every control in between is labelled.
    for _ in range(30):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.id") == "consent-no":
            break
    page.keyboard.press("Enter")
    message_box(page).focus()
    page.keyboard.type("How are you?")
    page.keyboard.press("Enter")
    wait_reply_done(page)
    expect(message_box(page)).to_be_focused()
    # Shift+Tab back into the reply's actions; regenerate it with the keyboard.
    for _ in range(20):
        page.keyboard.press("Shift+Tab")
        if page.evaluate("document.activeElement.getAttribute('aria-label')") == "Regenerate reply":
            break
    page.keyboard.press("Enter")
    wait_reply_done(page)
    expect(transcript(page).locator(".count")).to_have_text("2 / 2")
    assert len(store_of(live).thread(only_conversation(live))[1][1].versions) == 2
    unlabelled = page.evaluate("""[...document.querySelectorAll('button, input, textarea')]
        .filter(b => !b.hidden && b.offsetParent !== null)
        .filter(b => !(b.getAttribute('aria-label') || b.labels?.length || b.textContent.trim()))
        .map(b => b.outerHTML)""")
    assert unlabelled == []


def test_on_a_phone(open_chat) -> None:
    """390x844 with a touch keyboard: Enter makes a new line (Send sends), the list is a drawer."""
    page, live = open_chat(ScriptedEngine(words=["Ok."]), phone=True)
    box = message_box(page)
    box.tap()
    page.keyboard.type("line one")
    page.keyboard.press("Enter")
    page.keyboard.type("line two")
    expect(box).to_have_value("line one\nline two")
    assert store_of(live).list() == []
    page.get_by_role("button", name="Send").tap()
    wait_reply_done(page)
    assert messages(live, only_conversation(live))[0][1] == "line one\nline two"
    page.get_by_role("button", name="Regenerate reply").tap()
    wait_reply_done(page)
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]  # nothing spills sideways
    sidebar = page.get_by_role("complementary", name="Your conversations")
    expect(sidebar).to_be_hidden()
    page.get_by_role("button", name="Show your conversations").tap()
    expect(sidebar).to_be_visible()
    expect(sidebar.locator(".open")).to_have_count(1)
    sidebar.get_by_role("button", name="New chat").tap()
    expect(sidebar).to_be_hidden()
    expect(transcript(page).locator(".msg")).to_have_count(0)


@pytest.mark.parametrize("phone", [False, True], ids=["desktop", "phone"])
def test_screenshots_light_and_dark(open_chat, phone: bool) -> None:
    words = ["Here is a **list**:\n\n", "- one\n- two\n\n", "```python\n", "print('hello')\n", "```\n"]
    for dark in (False, True):
        page, _ = open_chat(ScriptedEngine(words=words, delay=0.0), phone=phone, dark=dark, answer=None)
        shoot(page, f"chat-{'phone' if phone else 'desktop'}-{'dark' if dark else 'light'}-notice")
        page.get_by_role("button", name="Yes, my conversations may be published").click()
        message_box(page).fill("Show me a list and some code")
        page.get_by_role("button", name="Send").click()
        wait_reply_done(page)
        background = page.evaluate("getComputedStyle(document.body).backgroundColor")
        assert (background == "rgb(24, 24, 27)") is dark, background  # follows the system setting
        assert shoot(page, f"chat-{'phone' if phone else 'desktop'}-{'dark' if dark else 'light'}").stat().st_size


@pytest.mark.slow
def test_the_real_model_answers_in_the_page(open_chat, embedded_engine) -> None:
    page, live = open_chat(embedded_engine, max_tokens_default=32)
    send(page, "Say hello.")
    # Complete, or cut off at the 32-token limit: either way the reply ends.
    expect(page.get_by_role("status")).to_have_text(re.compile(r"^Reply complete"), timeout=120_000)
    text = replies(page).inner_text().strip()
    assert text
    conv = store_of(live).get(only_conversation(live))
    assert [m.role for m in conv.messages] == ["user", "assistant"]
    assert conv.messages[0].content == "Say hello."
    assert conv.messages[1].status == "complete"


# --- the first hour: what a new chatter met (issue 16) --------------------------------------------------------------

def _in_view(page: Page, locator) -> bool:
    """Whether the element is wholly inside the window and not clipped by a scrolling box around it."""
    return locator.evaluate("""el => {
      const r = el.getBoundingClientRect();
      if (r.top < 0 || r.bottom > innerHeight || r.left < 0 || r.right > innerWidth) return false;
      for (let p = el.parentElement; p; p = p.parentElement) {
        const s = getComputedStyle(p);
        if (!/(auto|scroll|hidden)/.test(s.overflowY)) continue;
        const b = p.getBoundingClientRect();
        if (r.top < b.top || r.bottom > b.bottom) return false;
      }
      return true;
    }""")


@pytest.mark.parametrize("dark", [False, True], ids=["light", "dark"])
def test_on_a_phone_the_notice_answers_and_the_chrome_fit(open_chat, dark: bool) -> None:
    page, _ = open_chat(phone=True, dark=dark, answer=None)
    notice = page.get_by_role("region", name="Before you chat")
    for name in ("Yes, my conversations may be published", "No, keep them private"):
        assert _in_view(page, notice.get_by_role("button", name=name)), name  # no scrolling to answer
    shoot(page, f"first-hour-phone-{'dark' if dark else 'light'}-notice")
    notice.get_by_role("button", name="No, keep them private").tap()
    chrome = page.evaluate("document.querySelector('header').offsetHeight + "
                           "document.getElementById('pubbar').offsetHeight")
    assert chrome <= 110, chrome  # was ~170 of 844 px
    placeholder = message_box(page).get_attribute("placeholder")
    assert "Enter" not in placeholder, placeholder  # on a touch keyboard Enter adds a line
    send_button = page.get_by_role("button", name="Send")
    message_box(page).fill("Hello from a phone")
    send_button.tap()
    wait_reply_done(page)
    shoot(page, f"first-hour-phone-{'dark' if dark else 'light'}-chat")


def test_on_a_desktop_the_placeholder_says_enter_sends(open_chat) -> None:
    page, _ = open_chat()
    expect(message_box(page)).to_have_attribute("placeholder", re.compile("Enter sends"))


def test_changing_a_rating_drops_the_reason_given_for_the_other(open_chat) -> None:
    page, live = open_chat()
    send(page, "Hi")
    wait_reply_done(page)
    page.get_by_role("button", name="Good reply").click()
    page.get_by_label("What was good? (optional)").fill("Short and correct")
    page.get_by_role("button", name="Save reason").click()
    expect(page.get_by_role("status")).to_have_text("Reason saved.")
    page.get_by_role("button", name="Bad reply").click()
    expect(page.get_by_label("What was wrong? (optional)")).to_have_value("")
    cid = only_conversation(live)
    wait_for(lambda: [(f.rating, f.reason) for f in store_of(live).feedback([cid])[cid]] == [("down", None)])


def test_end_says_what_it_does_asks_first_and_then_shows_the_rating(open_chat) -> None:
    from thresher.flywheel import judge_pending

    page, live = open_chat(answer="yes", judge="serving", judge_interval_seconds=3600)
    send(page, "Hello")
    wait_reply_done(page)
    end = page.get_by_role("button", name="End conversation")
    expect(end).to_have_accessible_description(re.compile("nothing more can be added"))
    end.click()
    dialog = page.get_by_role("dialog", name="End this conversation?")
    expect(dialog).to_contain_text("the model now rates it as training data")
    dialog.get_by_role("button", name="Keep chatting").click()
    expect(dialog).to_be_hidden()
    cid = only_conversation(live)
    assert not store_of(live).get(cid).ended  # cancelled: still open
    end_conversation(page)
    expect(page.get_by_role("status")).to_contain_text("The model rates it as training data shortly")
    expect(page.locator("#pubstate")).not_to_contain_text("once it ends")
    rt = live.server.config.app.state.rt
    assert judge_pending(rt.store, rt.judge) == 1  # the judge loop's work, done now (the scripted judge: 5.5)
    # Without a reload, the page learns the rating and that it stays private (the default bar is 8).
    expect(page.locator("#pubstate")).to_contain_text("Rated 5.5 out of 10", timeout=20_000)
    expect(page.locator("#pubstate")).to_contain_text("stays private")


def test_history_titles_dates_badges_search_and_rename(open_chat) -> None:
    page, live = open_chat(answer="yes")
    long_title = "Tell me everything about the migration of arctic terns across the oceans"
    for text in (long_title, "Quick question about owls"):
        page.keyboard.press("Control+Shift+O")
        send(page, text)
        wait_reply_done(page)
    item = page.locator("#history .open", has_text="arctic terns")
    expect(item).to_have_attribute("title", re.compile("^Tell me everything about the migration of arctic"))
    expect(item.locator(".meta")).to_contain_text("may publish")  # shown on a desktop, beside the date
    assert item.locator(".t").evaluate("e => e.getBoundingClientRect().width") > 180  # not cut at 18 characters
    page.get_by_label("Search your conversations").fill("owls")
    expect(page.locator("#history li:visible")).to_have_count(1)
    page.get_by_label("Search your conversations").fill("nothing like it")
    expect(page.get_by_text("No conversation matches.")).to_be_visible()
    page.get_by_label("Search your conversations").fill("")
    page.get_by_role("button", name="Rename conversation: Quick question about owls").click()
    box = page.get_by_label("New title (empty: its first message)")
    box.fill("Owl facts")
    box.press("Enter")
    expect(page.locator("#history .open .t", has_text="Owl facts")).to_have_count(1)
    owls = next(c for c in store_of(live).list() if c.messages[0].content.startswith("Quick"))
    assert store_of(live).conversations_of(owls.owner_hash)[0].title == "Owl facts"


def test_an_edited_first_message_retitles_the_conversation(open_chat) -> None:
    page, _ = open_chat()
    send(page, "Frist question")
    wait_reply_done(page)
    page.get_by_role("button", name="Edit message").click()
    box = page.get_by_label("Edit your message")
    box.fill("First question")
    box.press("Enter")
    wait_reply_done(page)
    expect(page.locator("#history .open .t")).to_have_text("First question")


def test_a_continued_reply_grows_on_its_own_line(open_chat) -> None:
    engine = ScriptedEngine(words=[f"w{i} " for i in range(200)], delay=0.02)
    page, _ = open_chat(engine)
    send(page, "Count")
    expect(replies(page).first).to_contain_text("w3")
    page.get_by_role("button", name="Stop").click()
    wait_reply_done(page, "Reply stopped. The text so far is kept.")
    before = replies(page).first.text_content()
    engine.words, engine.delay = [" and", " more", " words"] * 20, 0.05
    page.get_by_role("button", name="Continue reply").click()
    expect(replies(page).first).to_contain_text("and more")
    # While it streams: one body, the old text followed directly by the new (no second block, no line break).
    reply = transcript(page).locator(".msg.assistant").first
    expect(reply.locator(".body")).to_have_count(1)
    assert reply.locator(".body").text_content().startswith(before.rstrip())
    wait_reply_done(page)


def test_chat_settings_reach_the_model_and_the_store(open_chat) -> None:
    engine = ScriptedEngine()
    page, live = open_chat(engine)
    page.get_by_role("button", name="Chat settings and export").click()
    page.get_by_label("Instructions for the assistant").fill("Answer like a pirate.")
    page.get_by_label("Creativity (temperature)").fill("0.2")
    page.get_by_label("Longest reply (tokens)").fill("64")
    page.get_by_label("Longest reply (tokens)").press("Tab")
    send(page, "Hello")
    wait_reply_done(page)
    assert engine.prompts[-1][0] == {"role": "system", "content": "Answer like a pirate."}
    assert (engine.params[-1].temperature, engine.params[-1].max_tokens) == (0.2, 64)
    cid = only_conversation(live)
    assert store_of(live).reply_settings(cid) == {"temperature": 0.2, "max_tokens": 64}
    expect(page.get_by_label("Instructions for the assistant")).to_be_disabled()  # set when a chat starts
    page.get_by_label("Longest reply (tokens)").fill("32")
    page.get_by_label("Longest reply (tokens)").press("Tab")
    expect(page.get_by_role("status")).to_have_text("Settings saved for this conversation.")
    page.get_by_role("button", name="Regenerate reply").click()
    wait_reply_done(page)
    assert engine.params[-1].max_tokens == 32  # applies to the next reply, regenerated ones too
    too_long = page.request.post(f"{live.url}/api/conversations/{cid}/settings", data={"max_tokens": 10**6})
    assert too_long.status == 400 and "max_tokens" in too_long.text()


def test_export_as_markdown_and_json(open_chat, tmp_path: Path) -> None:
    import json

    page, _ = open_chat()
    send(page, "Export me")
    wait_reply_done(page)
    page.get_by_role("button", name="Chat settings and export").click()
    with page.expect_download() as got:
        page.get_by_role("button", name="Export as Markdown").click()
    md = tmp_path / "c.md"
    got.value.save_as(md)
    text = md.read_text()
    assert text.startswith("# Export me") and "**You**" in text and REPLY in text
    with page.expect_download() as got:
        page.get_by_role("button", name="Export as JSON").click()
    js = tmp_path / "c.json"
    got.value.save_as(js)
    data = json.loads(js.read_text())
    assert [(m["role"], m["content"]) for m in data["messages"]] == [("user", "Export me"), ("assistant", REPLY)]
    assert all(m["created_at"] for m in data["messages"])


def test_theme_switch_starters_growing_box_timestamps_and_quiet_actions(open_chat) -> None:
    page, live = open_chat(dark=False)
    starters = page.get_by_label("Ideas to start with")
    expect(starters.get_by_role("button")).to_have_count(4)
    box = message_box(page)
    one_line = box.evaluate("e => e.offsetHeight")
    box.fill("one\ntwo\nthree\nfour")
    box.dispatch_event("input")
    assert box.evaluate("e => e.offsetHeight") > one_line * 1.5  # the box grows as you type
    box.fill("")
    starters.get_by_role("button").first.click()
    wait_reply_done(page)
    expect(starters).to_be_hidden()
    assert messages(live, only_conversation(live))[0][1] == "Explain photosynthesis in two sentences."
    expect(transcript(page).locator(".msg.user .who time")).to_have_count(1)
    # Actions stay out of the way on a desktop until the pointer or the focus comes to a message, except the newest.
    page.keyboard.press("Control+Shift+O")
    send(page, "Second")
    wait_reply_done(page)
    user_actions = transcript(page).locator(".msg.user .actions")
    assert user_actions.evaluate("e => getComputedStyle(e).opacity") == "0"
    transcript(page).locator(".msg.user").hover()
    expect(user_actions).to_have_css("opacity", "1")
    expect(transcript(page).locator(".msg.assistant.latest .actions")).to_have_css("opacity", "1")

    theme = page.get_by_label("Theme")
    theme.select_option("dark")
    assert page.evaluate("getComputedStyle(document.body).backgroundColor") == "rgb(24, 24, 27)"
    page.reload()  # remembered in this browser
    assert page.evaluate("getComputedStyle(document.body).backgroundColor") == "rgb(24, 24, 27)"
    shoot(page, "first-hour-desktop-chosen-dark")
    page.get_by_label("Theme").select_option("system")
    assert page.evaluate("getComputedStyle(document.body).backgroundColor") != "rgb(24, 24, 27)"


# --- a busy server ---------------------------------------------------------------------------------------------------

def test_a_waiting_reply_says_how_many_are_ahead_and_a_full_server_says_busy(open_chat) -> None:
    import threading
    from dataclasses import dataclass, field

    import httpx

    from thresher.engines import Chunk

    @dataclass
    class Queueing(ScriptedEngine):  # says it waits behind two, then one, before it answers
        waits: list[int] = field(default_factory=lambda: [2, 1])

        def stream_chat(self, messages, params):
            for ahead in self.waits:
                yield Chunk(waiting=ahead)
                time.sleep(0.6)
            yield from super().stream_chat(messages, params)

    engine = Queueing(delay=0.02)
    page, live = open_chat(engine, max_queue=0)
    send(page, "Hello?")
    expect(page.get_by_role("status")).to_have_text("Waiting: 2 ahead of you.")
    expect(page.get_by_role("status")).to_have_text("Waiting: 1 ahead of you.")
    wait_reply_done(page)

    # Another client's reply takes the only place: the page is told plainly, and keeps what was typed.
    engine.words, engine.waits = ["word "] * 500, []
    holding, started = threading.Event(), threading.Event()

    def hold() -> None:
        body = {"model": "scripted", "stream": True, "messages": [{"role": "user", "content": "go on"}]}
        with httpx.stream("POST", live.url + "/v1/chat/completions", json=body, timeout=30) as r:
            for _ in r.iter_lines():
                started.set()
                if holding.wait(0):
                    break

    other = threading.Thread(target=hold)
    other.start()
    assert started.wait(10)
    send(page, "Are you free?")
    expect(page.get_by_role("alert")).to_contain_text("the server is busy")
    expect(message_box(page)).to_have_value("Are you free?")
    holding.set()
    other.join(10)
    engine.words = ["Yes", "."]
    wait_for(lambda: live.server.config.app.state.rt.admission.held == 0)
    page.get_by_role("alert").get_by_role("button", name="Retry").click()
    wait_reply_done(page)
