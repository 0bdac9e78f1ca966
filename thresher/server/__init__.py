"""The FastAPI app: the chat page, the OpenAI-compatible /v1 API, the review page, admin routes and /healthz.

Thin over the library: routes validate and format; `thresher.chat.ChatService` and `thresher.store.Store` do the
work. `create_app` takes an engine and a store so tests can hand in their own; otherwise both come from settings
when the app starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import timedelta

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from thresher import follow
from thresher.chat import ChatService
from thresher.config import Settings
from thresher.conversation import utcnow
from thresher.deployment import Deployment
from thresher.engines import Engine
from thresher.judge import SwitchableJudge
from thresher.server.guard import ApiError, BodyCap, RateLimiter, SameOrigin, SecurityHeaders
from thresher.server.streaming import Admission
from thresher.store import Store

log = logging.getLogger("thresher.server")


@dataclass
class Runtime:
    """Everything a request handler needs, hung on app.state.rt."""

    settings: Settings
    store: Store
    engine: Engine
    chat: ChatService
    limiter: RateLimiter
    salt: str

    started_as: str | None = None  # the engine's id at start: the name clients use survives a model switch
    judge: SwitchableJudge | None = None  # what rates ended conversations (its threshold is what publishes)
    # Why a promoted version is not what serves, by kind ("chat", "judge"): the model follower's one warning, which
    # the dashboard shows too.
    model_problems: dict[str, str] = field(default_factory=dict)
    admission: Admission = field(default_factory=lambda: Admission(0))  # the bound on replies in flight

    @property
    def model_name(self) -> str:
        return self.settings.model_name or self.started_as or self.engine.model_id


def end_idle(store: Store, idle_minutes: float) -> list[str]:
    return store.end_idle(utcnow() - timedelta(minutes=idle_minutes))


async def _idle_loop(rt: Runtime) -> None:
    period = max(1.0, min(60.0, rt.settings.idle_timeout_minutes * 60 / 4))
    while True:
        await asyncio.sleep(period)
        try:
            ended = await run_in_threadpool(end_idle, rt.store, rt.settings.idle_timeout_minutes)
            if ended:
                log.info("ended %d idle conversation(s)", len(ended))
        except Exception:  # keep the loop alive; the next tick retries
            log.exception("idle check failed")


def create_app(settings: Settings, engine: Engine | None = None, store: Store | None = None) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        deployment = Deployment(settings, store=store, engine=engine)
        st = await run_in_threadpool(lambda: deployment.store)  # migrated
        recovered = await run_in_threadpool(st.recover_interrupted)
        if recovered:
            log.warning("kept %d reply(ies) cut off by a crash, marked interrupted", recovered)
        eng = await run_in_threadpool(deployment.engine)
        limiter = RateLimiter(
            settings.rate_limit_requests if settings.public else 0,
            settings.rate_limit_tokens if settings.public else 0,
        )
        app.state.rt = Runtime(settings, st, eng, ChatService(st, eng, settings.licence), limiter, settings.salt(),
                               started_as=eng.model_id, admission=Admission(settings.max_queue))
        tasks = [asyncio.create_task(_idle_loop(app.state.rt))]
        judge = await run_in_threadpool(deployment.judge, eng)
        app.state.rt.judge = judge
        worker = deployment.worker(judge, serving=app.state.rt) if judge is not None or settings.follow_registry \
            else None
        app.state.follower = worker.follower if worker is not None else None
        stop, loop = threading.Event(), None
        if worker is not None:
            # The flywheel's loop, in its own thread: judging and publishing block, chats go on meanwhile.
            loop = threading.Thread(target=worker.run, args=(stop,), name="thresher-worker", daemon=True,
                                    kwargs={"publish_first": False, "follow_seconds": follow.FOLLOW_SECONDS})
            loop.start()
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            stop.set()
            if loop is not None:
                loop.join(timeout=5)  # mid-judgment it finishes on its own; its work is saved as it goes
            deployment.close()  # the store, unless it was handed in

    app = FastAPI(title="thresher", lifespan=lifespan, docs_url=None, redoc_url=None)

    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(HTTPException)
    async def _http_error(_request: Request, exc: HTTPException) -> JSONResponse:
        code = {400: "invalid_body", 404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        return ApiError(exc.status_code, str(exc.detail), code, headers=exc.headers).response()

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        param = ".".join(str(p) for p in first.get("loc", ())[1:]) or None
        return ApiError(422, f"{param or 'request'}: {first.get('msg', 'invalid')}", "invalid_value", param).response()

    from thresher.server import api, dashboard, review_page, web

    app.include_router(api.router)
    app.include_router(web.router)
    app.include_router(review_page.router)
    app.include_router(dashboard.router)
    app.mount("/static", StaticFiles(directory=web.HERE / "static"), name="static")
    app.add_middleware(BodyCap, limit=settings.max_body_bytes)
    app.add_middleware(SameOrigin)
    app.add_middleware(SecurityHeaders)  # added last, so outermost: refusals carry the headers too
    return app


def serve(settings: Settings, engine: Engine, say: Callable[[str], None] = print) -> None:
    """`thresher serve`: say what is served and what is on, then serve `engine`'s model until stopped."""
    import uvicorn

    s = settings
    say(f"Serving {s.model_name or engine.model_id} ({engine.version}) at http://{s.host}:{s.port}  ·  data in "
        f"{s.data_dir}  ·  {'public' if s.public else 'local'} mode")
    for line in serving_lines(s):
        say("  " + line)
    uvicorn.run(create_app(s, engine=engine), host=s.host, port=s.port, proxy_headers=True,
                forwarded_allow_ips=s.trusted_proxies, log_level="info",
                access_log=not s.public)  # access lines carry client addresses; public mode keeps none


def serving_lines(s: Settings) -> list[str]:
    """What `thresher serve` turns on, and why each part that is off is off: said at start-up."""
    base = f"http://{s.host}:{s.port}"
    lines = [f"chat page {base}/   ·   OpenAI-compatible API {base}/v1"]
    if s.reviewer_tokens:
        lines.append(f"review page {base}/review ({len(s.reviewer_tokens)} reviewer token(s))")
    else:
        lines.append("review page off: no reviewer tokens (set reviewer_tokens to open /review)")
    if s.admin_token:
        lines.append(f"dashboard {base}/dashboard (sign in with the admin token)")
    else:
        lines.append(f"dashboard {base}/dashboard, from this machine only (no admin token set)")
    if s.judge == "off":
        lines.append("judging off (judge = off): nothing is rated or published")
    else:
        where = s.dataset_remote or f"the local clone {s.dataset_path} (no dataset_remote set)"
        lines.append(f"judging ended conversations with {s.judge} at threshold {s.threshold():g}; publishing every "
                     f"{s.publish_interval_seconds:g} s to {where}")
    return lines
