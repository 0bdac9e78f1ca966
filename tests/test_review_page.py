"""The review page over a real server on 127.0.0.1, a real store, the server's real dataset clone and a local bare
remote: refused without a valid token (and off without tokens), a verdict made on the page lands in the remote with
the reviewer as author and in the store after sync, bad input is refused with a reason, the page never runs the
conversation's text as markup, publishing and page verdicts at once leave the clone sound, and an approval made by
keyboard in headless Chromium."""

from __future__ import annotations

import contextlib
import hashlib
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from conftest import LiveServer, ScriptedEngine
from tests_helpers import git, judged

from thresher.config import Settings
from thresher.dataset_repo import DatasetRepo
from thresher.flywheel import publish
from thresher.review import sync
from thresher.store import Store

ADA = "Ada Lovelace <ada@example.org>"
ADA_TOKEN = "ada-secret-token-0123456789"
BOB_TOKEN = "bob-secret-token-9876543210"
TOKENS = [f"{ADA}:{ADA_TOKEN}", f"bob@example.org:{BOB_TOKEN}"]
HOSTILE = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2"> & "quotes"'


def store_of(live: LiveServer) -> Store:
    return live.server.config.app.state.rt.store


def clone_of(live: LiveServer) -> DatasetRepo:
    s = live.server.config.app.state.rt.settings
    return DatasetRepo(s.dataset_path, s.dataset_remote)


def publish_some(live: LiveServer, texts: list[tuple[str, str]]) -> list[str]:
    """Judge and publish conversations through the server's own clone, as its publishing loop would."""
    store = store_of(live)
    ids = [judged(store, user, answer, 9.0, rationale=f"Rationale for: {user}") for user, answer in texts]
    report = publish(store, clone_of(live).open(), threshold=8.0)
    assert sorted(report.published) == sorted(ids) and report.pushed
    return sorted(ids)


@contextlib.contextmanager
def signed_in(live: LiveServer, token: str = ADA_TOKEN) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live.url, follow_redirects=False, timeout=30) as client:
        r = client.post("/review/login", data={"token": token})
        assert r.status_code == 303 and r.headers["location"] == "/review", r.text
        yield client


def csrf(page: str) -> str:
    m = re.search(r'name="csrf" value="([0-9a-f]+)"', page)
    assert m, page
    return m.group(1)


# -- who may review ------------------------------------------------------------------------------------------------


def test_the_page_is_off_without_tokens(serve, remote: Path) -> None:
    for overrides in ({}, {"public": True, "admin_token": "an-admin-token-of-some-length"}):
        with serve(ScriptedEngine(), dataset_remote=str(remote), **overrides) as live:
            r = httpx.get(live.url + "/review")
            assert r.status_code == 403 and "review page is off" in r.text and 'name="token"' not in r.text
            r = httpx.post(live.url + "/review/login", data={"token": "anything-at-all-123456"})
            assert r.status_code == 403
            r = httpx.post(live.url + "/review/01ABC", data={"verdict": "approve"},
                           headers={"Authorization": "Bearer anything-at-all-123456"})
            assert r.status_code == 403
    assert git(remote, "rev-list", "--all", "--count") == "0"  # nothing was written anywhere


def test_a_token_is_refused_or_accepted(serve, remote: Path) -> None:
    with serve(ScriptedEngine(), dataset_remote=str(remote), reviewer_tokens=TOKENS) as live:
        (cid,) = publish_some(live, [("What do owls eat?", "Mostly small mammals and insects.")])
        r = httpx.get(live.url + "/review")
        assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
        assert "Sign in with your reviewer token" in r.text and 'name="token"' in r.text
        assert "What do owls eat" not in r.text
        r = httpx.get(live.url + "/review", headers={"Authorization": "Bearer not-a-real-token-at-all"})
        assert r.status_code == 401 and "not valid" in r.text
        r = httpx.get(live.url + "/review", cookies={"thresher_reviewer": ADA_TOKEN[:-1]})
        assert r.status_code == 401
        r = httpx.post(live.url + "/review/login", data={"token": BOB_TOKEN + "x"})
        assert r.status_code == 401 and "not valid" in r.text and BOB_TOKEN not in r.headers.get("set-cookie", "")
        r = httpx.post(live.url + "/review/login", content=b'{"token": "x"}',
                       headers={"Content-Type": "application/json"})
        assert r.status_code == 415 and "x-www-form-urlencoded" in r.text

        r = httpx.post(live.url + "/review/login", data={"token": ADA_TOKEN})
        assert r.status_code == 303
        cookie = r.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie and "path=/review" in cookie
        with signed_in(live) as client:
            page = client.get("/review")
            assert page.status_code == 200 and "Reviewing as <strong>ada-example.org</strong>" in page.text
            assert "What do owls eat?" in page.text and "1 conversation awaiting your review" in page.text
            assert page.headers["x-frame-options"] == "DENY" and page.headers["cache-control"] == "no-store"
            assert "default-src 'none'" in page.headers["content-security-policy"]
            # A form posted with the cookie but without the page's own form token (another site's) does nothing.
            r = client.post(f"/review/{cid}", data={"verdict": "approve", "reason": "forged"})
            assert r.status_code == 403 and "nothing was recorded" in r.text
            assert client.post("/review/logout").status_code == 303
        assert "reviews/" not in git(remote, "ls-tree", "-r", "--name-only", "main")
        # The same token works as a Bearer token for tools.
        r = httpx.get(live.url + "/review", headers={"Authorization": f"Bearer {BOB_TOKEN}"})
        assert r.status_code == 200 and "Reviewing as <strong>bob-example.org</strong>" in r.text


@pytest.mark.parametrize("entries, why", [
    (["ada@example.org:short"], "at least 16"),
    (["no-token-here"], "IDENTITY:TOKEN"),
    ([":a-token-long-enough-1234"], "IDENTITY:TOKEN"),
    (["ada@example.org:a token with spaces 1234"], "no spaces"),
    (["!!!:a-token-long-enough-1234"], "not a safe slug"),
    (["ada@example.org:a-token-long-enough-1234", "bob@example.org:a-token-long-enough-1234"], "share a token"),
])
def test_reviewer_token_settings_are_checked(settings: Settings, entries: list[str], why: str) -> None:
    with pytest.raises(ValueError, match=why):
        Settings(data_dir=settings.data_dir, reviewer_tokens=entries)


def test_reviewer_token_settings(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("THRESHER_REVIEWER_TOKENS", f'["{ADA}:{ADA_TOKEN}"]')
    assert Settings(data_dir=settings.data_dir).reviewers == {ADA_TOKEN: ADA}
    monkeypatch.delenv("THRESHER_REVIEWER_TOKENS")
    assert Settings(data_dir=settings.data_dir, reviewer_tokens=TOKENS).reviewers == {
        ADA_TOKEN: ADA, BOB_TOKEN: "bob@example.org"}


# -- verdicts ------------------------------------------------------------------------------------------------------


def test_a_verdict_on_the_page_lands_in_the_remote_and_the_store(serve, remote: Path, tmp_path: Path) -> None:
    with serve(ScriptedEngine(), dataset_remote=str(remote), reviewer_tokens=TOKENS) as live:
        first, second = publish_some(live, [(f"Tell me about tides. {HOSTILE}", "The moon pulls the sea."),
                                            ("Tell me about glass.", "Glass is an amorphous solid.")])
        store = store_of(live)
        # The published file of the first also carries the user's thumbs (as the chat page records them).
        repo = clone_of(live)
        path = next(p for p in git(repo.path, "ls-tree", "-r", "--name-only", "HEAD").splitlines() if first in p)
        rec = repo.read(path)
        rec["messages"][1]["feedback"] = {"rating": "down", "reason": f"too short {HOSTILE}"}
        repo.write(path, rec)
        repo.commit([path], "Feedback")
        assert repo.push()

        with signed_in(live) as client:
            page = client.get("/review").text
            assert f"Conversation <code>{first}</code>" in page and "2 conversations awaiting" in page
            assert "9.00" in page and "Rationale for: Tell me about tides." in page
            assert "The user rated this reply" in page and "thumbs down" in page and "too short" in page
            # Public text is shown as text, never as markup.
            assert "<script>window.__pwned" not in page and "<img src=x" not in page
            assert "&lt;script&gt;window.__pwned = 1&lt;/script&gt;" in page and "&amp; &#34;quotes&#34;" in page
            token = csrf(page)

            # Bad input is refused, with why, and nothing is written.
            for form, why in (({"verdict": "reject", "reason": "  "}, "A rejection needs a reason."),
                              ({"verdict": "maybe"}, "Choose Approve or Reject."),
                              ({"verdict": "approve", "score": "11"}, "from 1 to 10"),
                              ({"verdict": "approve", "score": "nine"}, "from 1 to 10"),
                              ({"verdict": "approve", "reason": "x" * 2001}, "too long")):
                r = client.post(f"/review/{first}", data=form | {"csrf": token})
                assert r.status_code == 400 and why in r.text, (form, r.text)
                assert f"Conversation <code>{first}</code>" in r.text  # the same one, to correct
            r = client.post("/review/01ZZZZZZZZZZZZZZZZZZZZZZZZ", data={"verdict": "approve", "csrf": token})
            assert r.status_code == 404 and "no published conversation" in r.text
            assert "reviews/" not in git(remote, "ls-tree", "-r", "--name-only", "main")

            r = client.post(f"/review/{first}", data={"verdict": "approve", "reason": "Accurate <b>and</b> kind.",
                                                      "score": "9", "csrf": token})
            assert r.status_code == 303
            query = parse_qs(urlsplit(r.headers["location"]).query)
            assert query == {"after": [first], "done": [first], "verdict": ["approve"], "pushed": ["1"]}
            page = client.get(r.headers["location"]).text
            assert f"Approved {first}: committed and pushed." in page
            assert f"Conversation <code>{second}</code>" in page and "1 conversation awaiting" in page

        verdict_file = f"reviews/{first}/ada-example.org.json"
        assert verdict_file in git(remote, "ls-tree", "-r", "--name-only", "main")
        assert git(remote, "log", "-1", "--format=%an <%ae>", "main", "--", verdict_file) == ADA
        assert git(remote, "log", "-1", "--format=%s", "main") == f"Approve {first}: Accurate <b>and</b> kind."

        # Bob, with a Bearer token and no form token, rejects the second; the verdicts reach the store on sync.
        r = httpx.post(f"{live.url}/review/{second}", data={"verdict": "reject", "reason": "copied"},
                       headers={"Authorization": f"Bearer {BOB_TOKEN}"})
        assert r.status_code == 303
        assert git(remote, "log", "-1", "--format=%an <%ae>", "main") == "bob <bob@example.org>"
        report = sync(store, DatasetRepo(tmp_path / "elsewhere", str(remote)).open())
        assert (report.new, report.approved, report.rejected, report.problems) == (2, 1, 1, [])
        (ada,) = store.reviews(first)
        assert (ada.reviewer, ada.verdict, ada.reason, ada.score) == ("ada-example.org", "approve",
                                                                     "Accurate <b>and</b> kind.", 9)
        assert [(r.reviewer, r.verdict) for r in store.reviews(second)] == [("bob-example.org", "reject")]
        with signed_in(live) as client:
            page = client.get("/review").text
            assert f"Conversation <code>{second}</code>" in page and "1 conversation awaiting" in page
            assert "<strong>bob-example.org</strong> rejected: copied" in page  # what others said
            r = client.post(f"/review/{second}", data={"verdict": "reject", "reason": "agreed", "csrf": csrf(page)})
            page = client.get(r.headers["location"]).text
            assert "Nothing awaits your review" in page and "0 conversations awaiting" in page


def distinct(seed: str) -> tuple[str, str]:
    """A question and answer unlike any other seed's, so de-duplication lets every one through."""
    words = [hashlib.sha256(f"{seed}/{n}".encode()).hexdigest()[:7] for n in range(12)]
    return f"What do {' '.join(words[:6])} mean?", f"They mean {' '.join(words[6:])}, in short."


def published_by_the_loop(store: Store, ids: list[str]) -> None:
    deadline = time.monotonic() + 30
    while any(store.get(c).status != "published" for c in ids):
        assert time.monotonic() < deadline, [store.get(c).status for c in ids]
        time.sleep(0.05)


def test_publishing_and_page_verdicts_at_once_keep_the_clone_sound(serve, remote: Path) -> None:
    """The server's publishing loop, a `thresher publish`-style run on the same clone, and verdicts on the page,
    all at once: every commit holds only its own files, nothing is lost, git stays sound."""
    with serve(ScriptedEngine(), dataset_remote=str(remote), reviewer_tokens=TOKENS, judge="serving",
               judge_interval_seconds=0.05, judge_threshold=5.0, publish_interval_seconds=0.05) as live:
        store = store_of(live)
        ids = sorted(judged(store, *distinct(f"comets {i}"), 9.0) for i in range(8))
        published_by_the_loop(store, ids)
        errors: list[BaseException] = []
        more: list[str] = []

        def by_hand() -> None:  # new conversations judged by the loop, published by the loop and by hand
            try:
                for i in range(6):
                    conv = judged(store, *distinct(f"maps {i}"), 9.0)
                    more.append(conv)
                    publish(store, DatasetRepo(live.server.config.app.state.rt.settings.dataset_path,
                                               str(remote)), threshold=5.0)  # as the loop
            except BaseException as e:  # surfaced below
                errors.append(e)

        def reviewing(token: str, verdict: str) -> None:
            try:
                with signed_in(live, token) as client:
                    form = csrf(client.get("/review").text)
                    for cid in ids:
                        r = client.post(f"/review/{cid}", data={"verdict": verdict, "reason": "checked",
                                                                "csrf": form})
                        assert r.status_code == 303, r.text
            except BaseException as e:
                errors.append(e)

        threads = [threading.Thread(target=by_hand), threading.Thread(target=reviewing, args=(ADA_TOKEN, "approve")),
                   threading.Thread(target=reviewing, args=(BOB_TOKEN, "reject"))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert errors == []
        published_by_the_loop(store, more)
        with clone_of(live).lock(timeout=30):  # the loop is quiet while we look
            repo = clone_of(live)
            assert repo.push() or repo.unpushed() == 0
            assert git(repo.path, "status", "--porcelain") == ""
            assert git(repo.path, "rev-parse", "HEAD") == git(remote, "rev-parse", "main")
            assert not (repo.path / ".git" / "index.lock").exists()
        for where in (repo.path, remote):
            assert "error" not in git(where, "fsck", "--no-progress", "--strict").lower()
        files = git(remote, "ls-tree", "-r", "--name-only", "main").splitlines()
        assert all(any(c in f for f in files if f.startswith("conversations/")) for c in ids + more)
        # Each commit holds only its own kind of file: a verdict commit one verdict by its author, a publish
        # commit only conversations by the publisher.
        log = git(remote, "log", "--format=%x00%an|%s", "--name-only", "main").split("\0")[1:]
        for entry in log:
            head, *paths = [line for line in entry.splitlines() if line]
            author, subject = head.split("|", 1)
            if subject.startswith(("Approve", "Reject")):
                assert len(paths) == 1 and paths[0].startswith("reviews/"), entry
                assert author == ("Ada Lovelace" if subject.startswith("Approve") else "bob"), entry
            elif subject.startswith("Publish"):
                assert paths and all(p.startswith("conversations/") for p in paths), entry
        reviews = [f for f in files if f.startswith("reviews/")]
        assert sorted(reviews) == sorted(f"reviews/{c}/{who}.json" for c in ids
                                         for who in ("ada-example.org", "bob-example.org"))


# -- in a browser ----------------------------------------------------------------------------------------------------


CHROMIUM = Path("/usr/bin/chromium")


@pytest.mark.browser
@pytest.mark.skipif(not CHROMIUM.exists(), reason=f"no Chromium at {CHROMIUM}: `apt-get install chromium`; "
                    "these tests never download a browser")
def test_approve_by_keyboard_in_the_browser(serve, remote: Path, tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright
    from test_web_browser import CHROMIUM_ARGS, WAIT_MS

    with serve(ScriptedEngine(), dataset_remote=str(remote), reviewer_tokens=TOKENS) as live, \
            sync_playwright() as p:
        first, second = publish_some(live, [(f"Tell me about tea. {HOSTILE}", "Tea is a brewed leaf."),
                                            ("Tell me about bread.", "Bread is baked dough.")])
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.set_default_timeout(WAIT_MS)
            dialogs: list[str] = []
            page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
            page.goto(live.url + "/review")
            expect(page.get_by_role("alert")).to_contain_text("Sign in with your reviewer token")
            token = page.get_by_label("Reviewer token")
            expect(token).to_be_focused()
            page.keyboard.type(ADA_TOKEN)
            page.keyboard.press("Enter")

            expect(page.get_by_role("heading", name=f"Conversation {first}")).to_be_visible()
            expect(page.get_by_text("2 conversations awaiting your review.")).to_be_visible()
            expect(page.locator(".msg.user .text")).to_have_text(f"Tell me about tea. {HOSTILE}")
            assert page.evaluate("window.__pwned") is None and dialogs == []

            page.get_by_label("Reason").focus()
            page.keyboard.type("Clear and correct.")
            page.keyboard.press("Tab")
            expect(page.get_by_label("Your score")).to_be_focused()
            page.keyboard.press("Tab")
            approve = page.get_by_role("button", name="Approve")
            expect(approve).to_be_focused()
            page.keyboard.press("Enter")

            expect(page.get_by_role("status")).to_have_text(f"Approved {first}: committed and pushed.")
            expect(page.get_by_role("heading", name=f"Conversation {second}")).to_be_visible()
            expect(page.get_by_role("button", name="Reject")).to_be_visible()
            page.screenshot(path=tmp_path / "review.png", full_page=True)
        finally:
            browser.close()
        assert git(remote, "log", "-1", "--format=%an <%ae>|%s", "main") == f"{ADA}|Approve {first}: Clear and correct."
        rec = git(remote, "show", f"main:reviews/{first}/ada-example.org.json")
        assert '"verdict": "approve"' in rec and '"reason": "Clear and correct."' in rec


@pytest.mark.browser
@pytest.mark.skipif(not CHROMIUM.exists(), reason=f"no Chromium at {CHROMIUM}: `apt-get install chromium`; "
                    "these tests never download a browser")
@pytest.mark.parametrize("dark", [False, True], ids=["light", "dark"])
def test_on_a_phone_nothing_runs_off_the_right_edge(serve, remote: Path, dark: bool) -> None:
    """A 26-character id and a long judge name wrap inside 390 px instead of widening the page."""
    from playwright.sync_api import expect, sync_playwright
    from test_web_browser import ARTIFACTS, CHROMIUM_ARGS, PHONE, WAIT_MS

    with serve(ScriptedEngine(), dataset_remote=str(remote), reviewer_tokens=TOKENS) as live, \
            sync_playwright() as p:
        (cid,) = publish_some(live, [("What do owls eat?", "Mostly small mammals and insects.")])
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport=PHONE, is_mobile=True, has_touch=True,
                                          color_scheme="dark" if dark else "light",
                                          extra_http_headers={"Authorization": f"Bearer {ADA_TOKEN}"})
            page = context.new_page()
            page.set_default_timeout(WAIT_MS)
            page.goto(live.url + "/review")
            expect(page.get_by_role("heading", name=f"Conversation {cid}")).to_be_visible()
            assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=ARTIFACTS / f"review-phone-{'dark' if dark else 'light'}.png", full_page=True)
        finally:
            browser.close()
