"""The review page, `/review`: `thresher review` in a browser, for people the operator gave a reviewer token.

A reviewer signs in with their token (kept in an HttpOnly, SameSite=Strict cookie scoped to /review; scripts and
tools may send it as a Bearer token instead), sees the published conversations they have not judged yet, one at a
time, as published (scrubbed), with the judge's score and rationale and any thumbs the user gave, and approves or
rejects with a reason and an optional score. The verdict is the same file `thresher review` writes,
`reviews/<id>/<reviewer>.json`, committed in the server's clone with the reviewer as author and pushed, holding the
clone's lock (the publishing loop and `thresher publish` write there too). Without tokens configured the page is off.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode

from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.templating import Jinja2Templates
from starlette.concurrency import run_in_threadpool

from thresher.dataset_repo import DatasetRepo, GitError, RepoBusy
from thresher.review import (
    VERDICTS,
    InvalidVerdict,
    pending,
    reviewer_author,
    reviewer_slug,
    verdicts_on,
    write_verdict,
)
from thresher.server.guard import ApiError, bearer, client_hash, read_body, secure_cookie

log = logging.getLogger("thresher.server.review")
router = APIRouter()
# Autoescapes .html: conversation text is untrusted.
templates = Jinja2Templates(directory=Path(__file__).parent / "templates")
COOKIE = "thresher_reviewer"
LOCK_WAIT = 20.0  # seconds a page waits for a publish in progress before saying "busy"
MAX_REASON = 2000
HEADERS = {  # the page shows strangers' text and carries approve buttons: no scripts, no framing, no caching
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; form-action 'self'; frame-ancestors 'none'; "
    "base-uri 'none'",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


OFF = "The review page is off: the operator has given no reviewer tokens (the reviewer_tokens setting)."


class Reviewer:
    def __init__(self, identity: str, token: str, via_cookie: bool) -> None:
        self.identity, self.token, self.via_cookie = identity, token, via_cookie
        self.slug = reviewer_slug(identity)
        self.author = reviewer_author(identity)


def _page(request: Request, context: dict[str, Any], status: int = 200) -> HTMLResponse:
    response = templates.TemplateResponse(request, "review.html", context, status_code=status)
    response.headers.update(HEADERS)
    return response


def _refusal(request: Request, status: int, message: str, off: bool = False) -> HTMLResponse:
    """The sign-in form with why, or only why when the page is off."""
    response = _page(request, {"view": "off" if off else "login", "error": message}, status)
    if status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="thresher review"'
        response.delete_cookie(COOKIE, path="/review")
    return response


class Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def _reviewer(request: Request) -> Reviewer:
    tokens: dict[str, str] = request.app.state.rt.settings.reviewers
    if not tokens:
        raise Refused(403, OFF)
    token, via_cookie = bearer(request), False
    if token is None:
        token, via_cookie = request.cookies.get(COOKIE), True
    if not token:
        raise Refused(401, "Sign in with your reviewer token to review conversations.")
    for known, identity in tokens.items():
        if hmac.compare_digest(token.encode(), known.encode()):
            return Reviewer(identity, token, via_cookie)
    raise Refused(401, "That reviewer token is not valid (it may have been withdrawn). Sign in again.")


def _csrf(request: Request, token: str) -> str:
    return hmac.new(request.app.state.rt.salt.encode(), f"review:{token}".encode(), hashlib.sha256).hexdigest()


def _repo(request: Request) -> DatasetRepo:
    s = request.app.state.rt.settings
    return DatasetRepo(s.dataset_path, s.dataset_remote)


async def _form(request: Request) -> dict[str, str]:
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/x-www-form-urlencoded":
        raise ApiError(415, "send the form as application/x-www-form-urlencoded", "unsupported_media_type")
    body = await read_body(request, 64 * 1024)
    try:
        fields = parse_qs(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
    except UnicodeDecodeError:
        raise ApiError(400, "the form is not UTF-8", "invalid_value") from None
    return {k: v[0] for k, v in fields.items()}


# -- what a reviewer sees -------------------------------------------------------------------------------------------


def _rating(value: Any) -> str | None:
    if value in (True, 1, "1", "+1", "up", "thumbs_up", "good", "positive"):
        return "up"
    if value in (False, -1, "-1", "down", "thumbs_down", "bad", "negative"):
        return "down"
    return None


def _thumbs(item: Any) -> dict[str, str] | None:
    """One piece of user feedback, whatever reasonable shape the published file gives it: {"rating": "up",
    "reason": "..."}, a bare "up"/"down", +1/-1 or true/false."""
    if isinstance(item, dict):
        rating = _rating(next((item[k] for k in ("rating", "thumb", "thumbs", "value", "vote") if k in item), None))
        reason = next((item[k] for k in ("reason", "comment", "text") if isinstance(item.get(k), str)), "")
    else:
        rating, reason = _rating(item), ""
    return {"rating": rating, "reason": reason} if rating else None


def _view(rec: dict[str, Any]) -> dict[str, Any]:
    """A published conversation file as the template shows it (values only; the template escapes them)."""
    messages = []
    for m in rec.get("messages") or []:
        if isinstance(m, dict):
            messages.append({"role": str(m.get("role", "?")), "content": str(m.get("content", "")),
                             "feedback": _thumbs(m["feedback"]) if "feedback" in m else None})
    general = []
    top = rec.get("feedback")
    for item in top if isinstance(top, list) else [top] if top is not None else []:
        fb = _thumbs(item)
        index = item.get("message") if isinstance(item, dict) else None
        if fb and isinstance(index, int) and not isinstance(index, bool) and 0 <= index < len(messages) \
                and messages[index]["feedback"] is None:
            messages[index]["feedback"] = fb
        elif fb:
            general.append(fb)
    score = rec.get("score")
    return {
        "id": str(rec.get("id", "")),
        "score": f"{score:.2f}" if isinstance(score, int | float) and not isinstance(score, bool) else None,
        "judge": rec.get("judge"),
        "rationale": rec.get("rationale"),
        "flags": [str(f) for f in rec.get("flags") or []],
        "published_at": rec.get("published_at"),
        "messages": messages,
        "feedback": general,
    }


def _next(repo: DatasetRepo, reviewer: Reviewer, after: str | None, conv_id: str | None = None
          ) -> tuple[int, dict[str, Any] | None, bool]:
    """(how many await this reviewer, the conversation to show, whether any were passed over)."""
    todo = pending(repo, reviewer.slug)
    ids = [p.rsplit("/", 1)[-1].removesuffix(".json") for p in todo]
    if conv_id is not None:
        chosen = [p for i, p in zip(ids, todo, strict=True) if i == conv_id]
    else:
        chosen = [p for i, p in zip(ids, todo, strict=True) if after is None or i > after]
    if not chosen:
        return len(todo), None, bool(todo)
    rec = repo.read(chosen[0], at="HEAD")
    view = _view(rec if isinstance(rec, dict) else {})
    view["id"] = chosen[0].rsplit("/", 1)[-1].removesuffix(".json")
    view["others"] = [{"reviewer": v.reviewer, "verdict": v.verdict, "reason": v.reason, "score": v.score}
                      for v in verdicts_on(repo, view["id"])]
    return len(todo), view, False


def _load(repo: DatasetRepo, reviewer: Reviewer, after: str | None, conv_id: str | None = None
          ) -> tuple[int, dict[str, Any] | None, bool]:
    if not (repo.path / ".git").is_dir():
        repo.open()
    with repo.lock(timeout=LOCK_WAIT):
        return _next(repo, reviewer, after, conv_id)


DONE = {"approve": "Approved", "reject": "Rejected"}
PUSHED = {"1": "committed and pushed.", "0": "committed; the push failed and will be retried with the next publish.",
          "local": "committed to the local dataset (no remote is set)."}


def _done_message(params: dict[str, str]) -> str | None:
    done, verdict = params.get("done"), params.get("verdict")
    if not done or verdict not in DONE:
        return None
    where = PUSHED.get(params.get("pushed", ""), "")
    return f"{DONE[verdict]} {done}: {where}".strip()


@router.get("/review", response_class=HTMLResponse)
async def review_page(request: Request) -> Response:
    try:
        reviewer = _reviewer(request)
    except Refused as e:
        return _refusal(request, e.status, e.message, off=e.status == 403)
    params = dict(request.query_params)
    after = params.get("after") or None
    try:
        count, conv, passed = await run_in_threadpool(_load, _repo(request), reviewer, after)
    except RepoBusy:
        return _page(request, {"view": "busy", "reviewer": reviewer, "csrf": _csrf(request, reviewer.token)}, 503)
    return _page(request, {"view": "review", "reviewer": reviewer, "csrf": _csrf(request, reviewer.token),
                           "count": count, "conv": conv, "passed": passed, "done": _done_message(params),
                           "reason": "", "score": None})


@router.post("/review/login", response_class=HTMLResponse)
async def login(request: Request) -> Response:
    rt = request.app.state.rt
    if rt.settings.public:
        rt.limiter.check(client_hash(request, rt.salt))  # no guessing at speed
    if not rt.settings.reviewers:
        return _refusal(request, 403, OFF, off=True)
    token = (await _form(request)).get("token", "").strip()
    if not any(hmac.compare_digest(token.encode(), t.encode()) for t in rt.settings.reviewers):
        return _refusal(request, 401, "That reviewer token is not valid. Check it and try again.")
    response = RedirectResponse("/review", status_code=303)
    response.set_cookie(COOKIE, token, max_age=30 * 24 * 3600, path="/review", httponly=True, samesite="strict",
                        secure=secure_cookie(request))
    return response


@router.post("/review/logout")
async def logout(request: Request) -> Response:
    response = RedirectResponse("/review", status_code=303)
    response.delete_cookie(COOKIE, path="/review")
    return response


def _decide(repo: DatasetRepo, reviewer: Reviewer, conv_id: str, verdict: str, reason: str,
            score: int | None) -> str:
    """Write the verdict under the lock; returns how far it got ('1' pushed, '0' not pushed, 'local')."""
    if not (repo.path / ".git").is_dir():
        repo.open()
    with repo.lock(timeout=LOCK_WAIT):
        try:
            repo.pull()  # what others said meanwhile, so our file lands on top of theirs
        except GitError as e:
            log.warning("could not pull the dataset before a verdict (pushing later): %s", e)
        if conv_id not in repo.conversations():
            raise LookupError(conv_id)
        written = write_verdict(repo, conv_id, verdict, reason, score, reviewer=reviewer.slug, author=reviewer.author)
    log.info("%s: %s %s on the review page", reviewer.slug, verdict, conv_id)
    return "local" if not repo.remote else "1" if written.pushed else "0"


@router.post("/review/{conv_id}", response_class=HTMLResponse)
async def give_verdict(conv_id: str, request: Request) -> Response:
    try:
        reviewer = _reviewer(request)
    except Refused as e:
        return _refusal(request, e.status, e.message, off=e.status == 403)
    form = await _form(request)
    if reviewer.via_cookie and not hmac.compare_digest(form.get("csrf", "").encode(),
                                                       _csrf(request, reviewer.token).encode()):
        return _refusal(request, 403, "This form did not come from the review page (or has expired); nothing was "
                                      "recorded. Reload the page and try again.")
    verdict, reason, score_text = form.get("verdict", ""), form.get("reason", "").strip(), form.get("score", "")
    error, score = None, None
    if verdict not in VERDICTS:
        error = "Choose Approve or Reject."
    elif len(reason) > MAX_REASON:
        error = f"The reason is too long ({len(reason)} characters; at most {MAX_REASON})."
    elif score_text.strip():
        score = int(score_text) if score_text.strip().isdigit() else 0
        if not 1 <= score <= 10:
            error, score = "The score must be a whole number from 1 to 10, or none.", None
    if error is None:
        try:
            pushed = await run_in_threadpool(_decide, _repo(request), reviewer, conv_id, verdict, reason, score)
        except InvalidVerdict as e:
            error = str(e)[0].upper() + str(e)[1:] + "."
        except LookupError:
            return _page(request, {"view": "review", "reviewer": reviewer, "csrf": _csrf(request, reviewer.token),
                                   "error": f"There is no published conversation {conv_id} (it may have been taken "
                                            "down).", "count": None, "conv": None, "passed": False}, 404)
        except RepoBusy:
            return _page(request, {"view": "busy", "reviewer": reviewer,
                                   "csrf": _csrf(request, reviewer.token)}, 503)
        else:
            query = urlencode({"after": conv_id, "done": conv_id, "verdict": verdict, "pushed": pushed})
            return RedirectResponse(f"/review?{query}", status_code=303)
    # Show the same conversation again, with what was typed and what is wrong.
    try:
        count, conv, _ = await run_in_threadpool(_load, _repo(request), reviewer, None, conv_id)
    except RepoBusy:
        count, conv = None, None
    return _page(request, {"view": "review", "reviewer": reviewer, "csrf": _csrf(request, reviewer.token),
                           "count": count, "conv": conv, "passed": False, "error": error, "reason": reason,
                           "score": score}, 400)
