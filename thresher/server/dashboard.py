"""`/dashboard`: the flywheel's figures for the operator, as a page of tables and PNG plots (`thresher.stats`).

With an admin token set (always, in public mode) the page needs it: sent as a Bearer token, or entered once in the
page's sign-in form, which keeps it in an HttpOnly, SameSite=Strict cookie scoped to /dashboard. Without one (only
possible outside public mode) the dashboard answers requests from this machine (loopback) and no one else.
Figures are computed at most every few seconds, and plots drawn at most that often, whoever asks.
"""

from __future__ import annotations

import hmac
import ipaddress
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.templating import Jinja2Templates
from starlette.concurrency import run_in_threadpool

from thresher import stats
from thresher.evidence import MIN_ROWS
from thresher.server.guard import ApiError, bearer, client_hash, read_body, secure_cookie

router = APIRouter()
templates = Jinja2Templates(directory=Path(__file__).parent / "templates")
COOKIE = "thresher_admin"
CACHE_SECONDS = 10.0
HEADERS = {  # no scripts on the page at all; only our own styles and images
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


class Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def _local(request: Request) -> bool:
    host = request.client.host if request.client else ""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check(request: Request) -> None:
    """Let the operator in, or raise Refused saying how to get in."""
    token = request.app.state.rt.settings.admin_token
    if not token:
        if _local(request):
            return
        raise Refused(403, "The dashboard is open only to this machine while no admin token is set: set "
                           "THRESHER_ADMIN_TOKEN (or admin_token in thresher.toml) to use it from elsewhere.")
    given = bearer(request) or request.cookies.get(COOKIE)
    if not given:
        raise Refused(401, "Sign in with the admin token to see the dashboard.")
    if not hmac.compare_digest(given.encode(), token.encode()):
        raise Refused(401, "That admin token is not valid. Sign in again.")


class _Cache:
    """The figures and plots, recomputed at most every CACHE_SECONDS; one computation at a time."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.figures: tuple[float, stats.Figures] | None = None
        self.plots: dict[str, tuple[float, bytes]] = {}

    def get_figures(self, request: Request) -> stats.Figures:
        rt = request.app.state.rt
        with self.lock:
            if self.figures is None or time.monotonic() - self.figures[0] > CACHE_SECONDS:
                s = rt.settings
                self.figures = (time.monotonic(), stats.collect(rt.store, s.data_dir, s.threshold(),
                                                                s.quorum_approvals))
                self.plots.clear()
            return self.figures[1]

    def get_plot(self, request: Request, name: str) -> bytes:
        figures = self.get_figures(request)
        with self.lock:
            hit = self.plots.get(name)
            if hit is None or time.monotonic() - hit[0] > CACHE_SECONDS:
                hit = self.plots[name] = (time.monotonic(), stats.plot(figures, name))
            return hit[1]


def _cache(request: Request) -> _Cache:
    state = request.app.state
    if not hasattr(state, "dashboard_cache"):
        state.dashboard_cache = _Cache()
    return state.dashboard_cache


def _page(request: Request, context: dict[str, Any], status: int = 200) -> HTMLResponse:
    response = templates.TemplateResponse(request, "dashboard.html", context, status_code=status)
    response.headers.update(HEADERS)
    return response


def _refusal(request: Request, refused: Refused) -> HTMLResponse:
    has_token = bool(request.app.state.rt.settings.admin_token)
    response = _page(request, {"view": "login" if has_token else "off", "error": refused.message}, refused.status)
    if refused.status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="thresher dashboard"'
        response.delete_cookie(COOKIE, path="/dashboard")
    return response


@router.get("/dashboard", response_class=HTMLResponse)
async def dashboard(request: Request) -> Response:
    try:
        _check(request)
    except Refused as r:
        return _refusal(request, r)
    figures = await run_in_threadpool(_cache(request).get_figures, request)
    if request.app.state.rt.model_problems:  # a promoted version that is not what serves, and what does
        figures = replace(figures, problems=[*figures.problems, *request.app.state.rt.model_problems.values()])
    s = request.app.state.rt.settings
    lineage = {v.id: stats.lineage(v, figures.versions) for v in figures.versions}
    return _page(request, {"view": "dashboard", "f": figures, "plots": stats.PLOTS, "labels": stats.STATUSES,
                           "review_labels": stats.REVIEWS, "bins": stats.SCORE_BINS, "lineage": lineage,
                           "signed_in": bool(s.admin_token), "rates": stats.rates_words,
                           "min_rows": MIN_ROWS})


@router.get("/dashboard/plots/{name}.png")
async def plot(request: Request, name: str) -> Response:
    try:
        _check(request)
    except Refused as r:
        raise ApiError(r.status, r.message, "invalid_admin_token" if r.status == 401 else "dashboard_off") from None
    if name not in stats.PLOTS:
        raise ApiError(404, f"no plot named {name!r}; the plots are {', '.join(stats.PLOTS)}", "not_found")
    png = await run_in_threadpool(_cache(request).get_plot, request, name)
    return Response(png, media_type="image/png", headers={"Cache-Control": f"private, max-age={int(CACHE_SECONDS)}"})


@router.post("/dashboard/login", response_class=HTMLResponse)
async def login(request: Request) -> Response:
    rt = request.app.state.rt
    if rt.settings.public:
        rt.limiter.check(client_hash(request, rt.salt))  # no guessing at speed
    token = rt.settings.admin_token
    if not token:
        return _refusal(request, Refused(403, "There is no admin token to sign in with: the dashboard is open only "
                                              "to this machine. Set THRESHER_ADMIN_TOKEN to use it from elsewhere."))
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/x-www-form-urlencoded":
        raise ApiError(415, "send the form as application/x-www-form-urlencoded", "unsupported_media_type")
    body = await read_body(request, 8 * 1024)
    try:
        given = parse_qs(body.decode("utf-8")).get("token", [""])[0].strip()
    except UnicodeDecodeError:
        raise ApiError(400, "the form is not UTF-8", "invalid_value") from None
    if not hmac.compare_digest(given.encode(), token.encode()):
        return _refusal(request, Refused(401, "That admin token is not valid. Check it and try again."))
    response = RedirectResponse("/dashboard", status_code=303)
    response.set_cookie(COOKIE, given, max_age=7 * 24 * 3600, path="/dashboard", httponly=True, samesite="strict",
                        secure=secure_cookie(request))
    return response


@router.post("/dashboard/logout")
async def logout() -> Response:
    response = RedirectResponse("/dashboard", status_code=303)
    response.delete_cookie(COOKIE, path="/dashboard")
    return response
