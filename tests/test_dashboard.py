"""The dashboard's figures (`thresher.stats`) from known data in a real store, round records and a registry; the
`/dashboard` page and its PNG plots on a real server (admin token, loopback-only without one, empty states); and the
page in headless Chromium with every plot loaded."""

from __future__ import annotations

import contextlib
import struct
from datetime import datetime, timedelta
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from conftest import ScriptedEngine
from tests_helpers import ended_conversations, judged

from thresher import stats
from thresher.conversation import Conversation, Message, utcnow
from thresher.evaluate import Gate, apply_gate
from thresher.judge import Judgment
from thresher.registry import Registry, Version
from thresher.store import Publication, Review, Store
from thresher.store.tables import PublicationRow
from thresher.train.state import RoundState

TOKEN = "dashboard-admin-token-123"
PNG = b"\x89PNG\r\n\x1a\n"
TODAY = utcnow().date()
PUBLIC = {"public": True, "admin_token": TOKEN, "follow_registry": False}  # the registry's models are not real files


def _review(cid: str, reviewer: str, verdict: str, score: int | None = None) -> Review:
    return Review(cid, reviewer, verdict, "because", utcnow(), score)


def build(store: Store, data_dir: Path) -> dict[str, str]:
    """Known data: conversations in every state, two judge versions, verdicts with and without scores, decisions on
    two days, two rounds (one finished, one stopped early) and three model versions."""
    ids = {name: judged(store, f"question {name}", f"answer {name}", score) for name, score in
           (("a", 9.0), ("b", 8.5), ("c", 9.5), ("d", 3.0), ("e", 4.0), ("f", 8.0), ("i", 6.0))}
    ids["g"] = ended_conversations(store, 1)[0]
    ids["h"] = store.create(Conversation(messages=[Message("user", "still talking")])).id
    for name, score in (("a", 5.0), ("b", 2.0)):  # a second judge version, on two of them
        store.save_judgment(ids[name], Judgment(score=score, status="ok", judge_id="judge@2", rubric_hash="r1"))
    store.set_publications([Publication(ids[n], "published", path=f"p/{n}.json", score=1.0) for n in "abcf"]
                           + [Publication(ids["d"], "rejected", "score 3.00 below the threshold 8"),
                              Publication(ids["e"], "rejected", "owner withdrew consent")])
    with store.session() as s:  # a and d were decided the day before
        s.execute(sa.update(PublicationRow).where(PublicationRow.conversation_id.in_([ids["a"], ids["d"]]))
                  .values(created_at=datetime.combine(TODAY - timedelta(days=1), datetime.min.time())
                          .replace(hour=12, tzinfo=utcnow().tzinfo)))
    store.save_reviews([_review(ids["a"], "ann", "approve", 9), _review(ids["a"], "bob", "approve"),
                        _review(ids["b"], "ann", "reject", 3), _review(ids["c"], "bob", "approve", 7)])

    one = RoundState(data_dir / "rounds" / "1")
    one.root.mkdir(parents=True)
    one.mark("pinned", {"commit": "c0ffee" * 7, "parent": None})
    one.mark("data", {"approved": 6, "train": 4, "heldout": 2})
    one.mark("judge", {"version": "judge-r1", "after_auc": 0.75, "gain": 0.25,
                       "by_family": {"all": 0.75, "family:relevance": 0.61, "family:refusal": 0.93, "swap": 0.6,
                                     "reviewers": 0.7}})
    one.mark("chat", {"version": "chat-r1"})
    one.mark("evaluated", {"win_rate": 0.6, "loss_ratio": 0.98})
    gate = Gate()
    one.mark("gated", {"chat": vars(apply_gate({"win_rate": 0.6, "loss_ratio": 0.98}, gate)),
                       "judge": vars(apply_gate({"judge_auc": 0.75, "judge_gain": -0.1}, gate))})
    (one.root / "round.json").write_text('{"round": 1, "promoted": ["chat-r1"]}')
    one.mark("published", {"pushed": True})
    two = RoundState(data_dir / "rounds" / "2")
    two.root.mkdir(parents=True)
    two.mark("pinned", {"commit": "beef" * 10, "parent": "chat-r1"})

    reg = Registry(data_dir / "models")
    reg.add(Version("chat-r1", "chat", "llama.cpp:x.gguf", round=1, data_commit="c0ffee" * 7,
                    judge_version="judge-r1"))
    reg.add(Version("judge-r1", "judge", "llama.cpp:j.gguf", round=1))
    reg.promote("chat-r1", "round 1: gate passed")
    reg.reject("judge-r1", "judge_gain -0.100 is not >= 0.0")
    reg.add(Version("chat-r2", "chat", "llama.cpp:y.gguf", round=2, parent="chat-r1"))
    return ids


def test_figures_from_known_data(store: Store, tmp_path: Path) -> None:
    build(store, tmp_path)
    f = stats.collect(store, tmp_path, threshold=8.0, min_approvals=1)

    assert f.statuses == {"open": 1, "ended": 1, "judged": 1, "published": 4, "rejected": 2}
    assert list(f.statuses) == ["open", "ended", "judged", "published", "rejected"]  # the order of the flow
    assert f.reviews == {"approved": 2, "rejected": 1, "pending": 1}
    # e's rejection was the owner's choice: not counted against the conversations' quality
    assert [(d.day, d.accepted, d.rejected, d.rate) for d in f.acceptance] == [
        (TODAY - timedelta(days=1), 1, 1, 0.5), (TODAY, 3, 0, 1.0)]
    assert f.histograms == {"judge@1": [0, 0, 1, 1, 0, 1, 0, 2, 2], "judge@2": [0, 1, 0, 0, 1, 0, 0, 0, 0]}

    one, two = f.agreement
    assert (one.judge, one.verdicts, one.agree, one.rate) == ("judge@1", 3, 2, 2 / 3)
    assert (one.judge_accept_reviewers_reject, one.judge_reject_reviewers_approve) == (1, 0)
    assert one.auc == 1.0  # approved 9.0 and 9.5 both above the rejected 8.5
    # judge (9.0, 8.5, 9.5) against the reviewers' mean given scores (9, 3, 7): ranks (2,1,3) vs (3,1,2)
    assert one.spearman == pytest.approx(0.5) and one.scored == 3
    assert (two.judge, two.verdicts, two.agree, two.judge_reject_reviewers_approve) == ("judge@2", 2, 1, 1)
    assert two.auc == 1.0 and two.spearman == pytest.approx(1.0) and two.scored == 2

    r1, r2 = f.rounds
    assert (r1.n, r1.finished, r1.approved, r1.win_rate, r1.loss_ratio, r1.judge_auc, r1.judge_gain) == (
        1, True, 6, 0.6, 0.98, 0.75, 0.25)
    assert (r1.chat_gate, r1.judge_gate, r1.promoted) == (True, False, ["chat-r1"])
    assert r1.reasons == ["judge: judge_gain -0.100 is not >= 0.0"]
    assert r1.judge_families == {"relevance": 0.61, "refusal": 0.93, "reviewers": 0.7}
    assert (r2.n, r2.finished, r2.stages, r2.commit, r2.chat_gate) == (2, False, ["pinned"], "beef" * 10, None)

    by_id = {v.id: v for v in f.versions}
    assert [by_id[k].status for k in ("chat-r1", "judge-r1", "chat-r2")] == ["promoted", "rejected", "candidate"]
    assert stats.lineage(by_id["chat-r2"], f.versions) == ["chat-r2", "chat-r1", "base"]
    assert f.problems == []
    assert not any(f.empty(name) for name in stats.PLOTS)


def test_quorum_and_threshold_change_the_figures(store: Store, tmp_path: Path) -> None:
    ids = build(store, tmp_path)
    store.save_reviews([_review(ids["f"], "ann", "approve")])
    two = stats.collect(store, tmp_path, threshold=9.0, min_approvals=2)
    assert two.reviews == {"approved": 1, "rejected": 1, "pending": 2}  # only a has two approvals
    one = next(a for a in two.agreement if a.judge == "judge@1")
    # at threshold 9 the judge turns b down (agreeing) and keeps a; c (one approval) is pending now
    assert (one.verdicts, one.agree, one.judge_accept_reviewers_reject) == (2, 2, 0)


def test_empty_and_unreadable_records(store: Store, tmp_path: Path) -> None:
    f = stats.collect(store, tmp_path, threshold=8.0)
    assert (f.statuses, f.reviews, f.acceptance, f.histograms, f.agreement, f.rounds, f.versions) == (
        {}, {}, [], {}, [], [], [])
    assert all(f.empty(name) for name in stats.PLOTS)
    for name in stats.PLOTS:
        assert stats.plot(f, name).startswith(PNG)
    with pytest.raises(ValueError, match="no plot named 'pie'"):
        stats.plot(f, "pie")

    (tmp_path / "rounds" / "3").mkdir(parents=True)
    (tmp_path / "rounds" / "3" / "state.json").write_text("{not json")
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "registry.json").write_text("[")
    f = stats.collect(store, tmp_path, threshold=8.0)
    assert f.rounds == [] and f.versions == []
    assert len(f.problems) == 2
    assert "registry.json is not valid JSON" in f.problems[0] and "3/state.json could not be read" in f.problems[1]


def test_every_plot_draws_real_data(store: Store, tmp_path: Path) -> None:
    build(store, tmp_path)
    f = stats.collect(store, tmp_path, threshold=8.0)
    images = {name: stats.plot(f, name) for name in stats.PLOTS}
    for png in images.values():
        assert png.startswith(PNG)
        assert struct.unpack(">II", png[16:24]) == (700, 360)  # IHDR: width, height
    assert len(set(images.values())) == len(stats.PLOTS)
    blank = stats.plot(stats.collect(store, tmp_path / "elsewhere", 8.0), "rounds")  # no rounds there
    assert blank != images["rounds"] and blank.startswith(PNG)


# -- the page ------------------------------------------------------------------------------------------------------


def _fill(settings) -> dict[str, str]:
    store = Store(settings.db_url)
    store.migrate()
    try:
        return build(store, settings.data_dir)
    finally:
        store.close()


def test_public_dashboard_needs_the_admin_token(serve, settings) -> None:
    _fill(settings)
    with serve(ScriptedEngine(), **PUBLIC) as live, httpx.Client(base_url=live.url) as c:
        page = c.get("/dashboard")
        assert page.status_code == 401 and 'name="token"' in page.text and "Sign in" in page.text
        assert c.get("/dashboard", headers={"Authorization": "Bearer wrong"}).status_code == 401
        plot = c.get("/dashboard/plots/scores.png")
        assert plot.status_code == 401 and plot.json()["error"]["code"] == "invalid_admin_token"

        bad = c.post("/dashboard/login", data={"token": "nope"})
        assert bad.status_code == 401 and "not valid" in bad.text and "thresher_admin" not in c.cookies
        wrong_type = c.post("/dashboard/login", content=b'{"token": 1}', headers={"content-type": "application/json"})
        assert wrong_type.status_code == 415 and "x-www-form-urlencoded" in wrong_type.json()["error"]["message"]

        ok = c.post("/dashboard/login", data={"token": TOKEN})
        assert ok.status_code == 303 and ok.headers["location"] == "/dashboard"
        cookie = ok.headers["set-cookie"].lower()
        assert "httponly" in cookie and "path=/dashboard" in cookie and "samesite=strict" in cookie
        assert "; secure" in cookie  # public mode is served over https: the browser sends it back only there
        c.cookies.set("thresher_admin", ok.cookies["thresher_admin"], path="/dashboard")  # as a browser over https
        page = c.get("/dashboard")
        assert page.status_code == 200
        assert "script-src" not in page.headers["content-security-policy"]
        for text in ("judge@2", "chat-r2 ← chat-r1 ← base", "judge: judge_gain -0.100 is not &gt;= 0.0",
                     "published, approved by reviewers", "running or stopped after pinned",
                     "by failure family", "<th scope=\"col\" class=\"n\">relevance</th>", "0.610"):
            assert text in page.text, text
        assert "No data yet" not in page.text
        for name in stats.PLOTS:
            assert f'src="/dashboard/plots/{name}.png"' in page.text
            png = c.get(f"/dashboard/plots/{name}.png")
            assert png.status_code == 200 and png.headers["content-type"] == "image/png"
            assert png.content.startswith(PNG)
        missing = c.get("/dashboard/plots/pie.png")
        assert missing.status_code == 404 and "the plots are statuses" in missing.json()["error"]["message"]

        out = c.post("/dashboard/logout")
        assert "max-age=0" in out.headers["set-cookie"].lower()  # the browser forgets it
        c.cookies.clear()
        assert c.get("/dashboard").status_code == 401
        by_header = httpx.get(live.url + "/dashboard/plots/rounds.png", headers={"Authorization": f"Bearer {TOKEN}"})
        assert by_header.status_code == 200 and by_header.content.startswith(PNG)


def test_without_a_token_only_this_machine_sees_it(serve) -> None:
    with serve(ScriptedEngine()) as live, httpx.Client(base_url=live.url) as c:
        page = c.get("/dashboard")
        assert page.status_code == 200
        assert page.text.count("No data yet") == 6 and "<img" not in page.text
        for name in stats.PLOTS:  # asked for anyway, each says so in the picture
            png = c.get(f"/dashboard/plots/{name}.png")
            assert png.status_code == 200 and png.content.startswith(PNG)
        assert c.post("/dashboard/login", data={"token": "x"}).status_code == 403
        # uvicorn trusts X-Forwarded-For from 127.0.0.1 by default: the request now comes from elsewhere
        away = {"X-Forwarded-For": "203.0.113.9"}
        far = c.get("/dashboard", headers=away)
        assert far.status_code == 403 and "THRESHER_ADMIN_TOKEN" in far.text
        assert c.get("/dashboard/plots/scores.png", headers=away).status_code == 403


# -- in a browser --------------------------------------------------------------------------------------------------

CHROMIUM = Path("/usr/bin/chromium")


@pytest.mark.browser
@pytest.mark.skipif(not CHROMIUM.exists(), reason=f"no Chromium at {CHROMIUM}; these tests never download one")
def test_dashboard_renders_in_chromium(serve, settings, tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright
    from test_web_browser import CHROMIUM_ARGS

    _fill(settings)
    with contextlib.ExitStack() as stack:
        live = stack.enter_context(serve(ScriptedEngine(), **PUBLIC))
        p = stack.enter_context(sync_playwright())
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        stack.callback(browser.close)
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        plots: dict[str, int] = {}  # plot URL -> status, as the browser fetched them
        page.on("response", lambda r: plots.__setitem__(r.url, r.status) if "/plots/" in r.url else None)
        page.goto(live.url + "/dashboard")
        page.get_by_label("Admin token").fill(TOKEN)
        page.get_by_role("button", name="Sign in").click()
        expect(page.get_by_role("heading", name="Training rounds")).to_be_visible(timeout=10_000)
        expect(page.locator("#statuses")).to_contain_text("published, awaiting review")
        images = page.locator("img")
        expect(images).to_have_count(len(stats.PLOTS))
        for i in range(len(stats.PLOTS)):
            img = images.nth(i)
            img.scroll_into_view_if_needed()
            page.wait_for_function("img => img.complete", arg=img.element_handle(), timeout=10_000)
            assert img.evaluate("img => img.naturalWidth") == 700, img.get_attribute("src")
        page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)  # to look at by hand
        assert errors == []
        assert sorted(plots) == sorted(f"{live.url}/dashboard/plots/{name}.png" for name in stats.PLOTS)
        assert set(plots.values()) == {200}


def test_status_prints_the_same_figures(settings) -> None:
    from typer.testing import CliRunner

    from thresher.cli import app

    runner = CliRunner()
    empty = runner.invoke(app, ["status", "--data-dir", str(settings.data_dir)])
    assert empty.exit_code == 0, empty.output
    assert empty.output.count(stats.NO_DATA) == 6

    _fill(settings)
    result = runner.invoke(app, ["status", "--data-dir", str(settings.data_dir)], env={"COLUMNS": "160"})
    assert result.exit_code == 0, result.output
    assert stats.NO_DATA not in result.output
    lines = [" ".join(line.replace("│", " ").split()) for line in result.output.splitlines()]
    for row in ("published, approved by reviewers 2", "published, awaiting review 1", "all 9",
                f"{TODAY - timedelta(days=1)} 1 1 50%", f"{TODAY} 3 0 100%",
                "judge@1 0 0 1 1 0 1 0 2 2 7", "judge@2 0 1 0 0 1 0 0 0 0 2",
                "judge@1 3 2 (67%) 1 0 1.00 0.50 (3)", "judge@2 2 1 (50%) 0 1 1.00 1.00 (2)",
                "chat-r2 chat 2 candidate chat-r2 <- chat-r1 <- base"):
        assert row in lines, f"{row!r} not in:\n{result.output}"
    assert any(line.startswith("1 finished c0ffeec0ffee 6 – 0.600 – 0.980 0.750 (+0.250) chat passed chat-r1")
               for line in lines), result.output
    assert "judge failed" in lines and "round 1, judge: judge_gain -0.100 is not >= 0.0" in lines


def test_figures_say_the_threshold_decisions_were_made_at(store: Store, tmp_path: Path) -> None:
    """Conversations published at threshold 1 (as the demo does) while 8 is configured: the figures say both, and
    the judge's agreement with reviewers counts what it really accepted."""
    ids = [judged(store, f"question {n}", f"answer {n}", 4.0) for n in range(3)]
    store.set_publications([Publication(i, "published", path=f"p/{i}.json", score=4.0, judge_id="judge@1",
                                        threshold=1.0) for i in ids])
    store.save_reviews([_review(i, "ann", "approve") for i in ids])
    f = stats.collect(store, tmp_path, threshold=8.0)
    assert f.decided_at == {1.0: 3}
    assert f.threshold_note() == "threshold in force 8; decisions so far were made at 1 (3 conversations)"
    (a,) = f.agreement
    assert (a.agree, a.judge_reject_reviewers_approve) == (3, 0)  # it accepted all three, and reviewers agreed


def test_a_trained_judge_has_its_registry_name_everywhere(store: Store, tmp_path: Path) -> None:
    cid = judged(store, "question", "answer", 7.0)
    store.save_judgment(cid, Judgment(score=6.0, status="ok", judge_id="head-4c1d7194f1@abc", rubric_hash="h"))
    store.save_judgment(cid, Judgment(score=5.0, status="ok", judge_id="head-99aa@abc", rubric_hash="h"))
    reg = Registry(tmp_path / "models")
    reg.add(Version("judge-r1-4c1d7194f1", "judge", "head:x", 1))  # an older record: matched by its digest
    reg.add(Version("judge-r2-77", "judge", "head:y", 2, metrics={"judge_id": "head-99aa@abc"}))
    f = stats.collect(store, tmp_path, threshold=8.0)
    assert {"judge-r1-4c1d7194f1", "judge-r2-77"} <= set(f.histograms)
    assert not any(k.startswith("head-") for k in f.histograms)


def test_the_score_plot_keeps_its_threshold_and_legend_clear_of_the_frame_and_bars() -> None:
    from matplotlib.figure import Figure

    f = stats.Figures(1.0, 1, {}, {}, [], {"judge-r1": [9, 1, 0, 0, 0, 0, 0, 0, 3]}, [], [], [], decided_at={1.0: 4})
    fig = Figure(figsize=(7, 3.6), dpi=100)
    ax = fig.add_subplot()
    stats._scores(f, ax)
    fig.tight_layout()
    fig.canvas.draw()
    low, high = ax.get_xlim()
    assert low < 1.0 < high <= 10.5  # a threshold of 1 is not on the frame; no axis running to 11
    legend, frame = ax.get_legend().get_window_extent(), ax.get_window_extent()
    assert legend.x0 >= frame.x1 - 1  # beside the plot, not over the bars
    assert legend.x1 <= fig.bbox.x1 + 1  # and inside the picture


def test_a_rounds_reply_rates_and_length_controlled_win_rate_are_shown(store: Store, tmp_path: Path) -> None:
    r = RoundState(tmp_path / "rounds" / "1")
    r.root.mkdir(parents=True)
    r.mark("chat", {"version": "chat-r1-x", "pairs": 14})
    r.mark("evaluated", {"win_rate": 0.55, "lc_win_rate": 0.51, "prompts": 8,
                         "replies_new": {"loop_rate": 0.125, "cutoff_rate": 0.25, "mean_words": 98.0},
                         "replies_serving": {"loop_rate": 0.5, "cutoff_rate": 0.375, "mean_words": 120.4}})
    f = stats.collect(store, tmp_path, threshold=8.0)
    (one,) = f.rounds
    assert (one.lc_win_rate, one.loop_rate, one.serving_loop_rate) == (0.51, 0.125, 0.5)
    from rich.console import Console

    out = Console(width=220, record=True)
    for part in stats.tables(f):
        out.print(part)
    text = out.export_text()
    assert "0.550 (0.510) (noise: 8 prompts)" in text and "50% -> 12%, 38% -> 25%; 120 -> 98 words" in text
    assert one.pairs == 14
    assert stats.plot(f, "rounds").startswith(PNG)
