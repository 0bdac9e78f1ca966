"""The FastAPI app: the chat page, the OpenAI-compatible /v1 API, the review page, admin routes and /healthz.

Thin over the library: routes validate and format; `thresher.chat.ChatService` and `thresher.store.Store` do the
work. `create_app` takes an engine and a store so tests can hand in their own; otherwise both come from settings
when the app starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from thresher.chat import ChatService
from thresher.config import Settings
from thresher.conversation import utcnow
from thresher.dataset_repo import DatasetRepo
from thresher.engines import Engine
from thresher.engines import load as load_engine
from thresher.flywheel import RoundRunner, judge_pending, publish, rejudge_corrections
from thresher.judge import SwitchableJudge
from thresher.judge import make_judge as make_judge_for
from thresher.review import sync as sync_reviews
from thresher.reward import HeadJudge
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


async def _judge_loop(rt: Runtime, judge: SwitchableJudge) -> None:
    """Judge ended conversations in the background, one at a time, between chats."""
    while True:
        try:
            n = await run_in_threadpool(judge_pending, rt.store, judge)
            if n:
                log.info("judged %d conversation(s)", n)
        except Exception:  # keep the loop alive; the next tick retries
            log.exception("judging failed")
        await asyncio.sleep(rt.settings.judge_interval_seconds)


def make_judge(settings: Settings, serving: Engine | None) -> SwitchableJudge | None:
    """The judge `settings.judge` asks for: the serving engine itself, another engine, or none."""
    if settings.judge == "off":
        return None
    return SwitchableJudge(make_judge_for(settings.judge, serving, threshold=settings.judge_threshold,
                                          rationale=settings.judge_rationale, n_ctx=settings.n_ctx,
                                          n_threads=settings.n_threads))


async def _publish_loop(rt: Runtime, judge: SwitchableJudge) -> None:
    """Curate and publish judged conversations now and then, read reviewers' verdicts back and judge corrected
    conversations again; a failed push is retried on the next tick."""
    s = rt.settings
    repo = DatasetRepo(s.dataset_path, s.dataset_remote)
    rounds = RoundRunner(s.data_dir, s.round_min_new_approved, env={**os.environ, **s.as_env()})
    while True:
        await asyncio.sleep(s.publish_interval_seconds)
        try:
            await run_in_threadpool(repo.open, s.licence)
            report = await run_in_threadpool(publish, rt.store, repo, threshold=judge.threshold,
                                             daily_cap=s.publish_daily_cap)
            if report.published or report.rejected:
                log.info("published %d, rejected %d conversation(s)", len(report.published), len(report.rejected))
            synced = await run_in_threadpool(sync_reviews, rt.store, repo, s.quorum_approvals)
            if synced.new or synced.updated or synced.corrections:
                log.info("reviews: %d new, %d updated verdict(s), %d correction(s)", synced.new, synced.updated,
                         synced.corrections)
            await run_in_threadpool(rejudge_corrections, rt.store, repo, judge)
            if rounds.maybe_start(synced.approved):
                log.info("a training round started: %d approved conversations since the last one",
                         synced.approved)
        except Exception:  # keep the loop alive; the next tick retries
            log.exception("publishing failed")


class ModelFollower:
    """Switches the chat model and the judge to the registry's promoted versions without a restart: a request
    already streaming finishes on the engine it started with, the next one gets the new engine.

    With no `rt` (the stand-alone worker) only the judge follows. A judge set to "serving" judges with whatever chat
    model is promoted, unless a judge version is promoted too; a head judge stays on the model it was trained for
    when the promoted chat model has no head of its own (it keeps that model loaded for judging).

    A promoted version that cannot be loaded (its file is missing, say) is warned about once, and what serves goes
    on serving; it is tried again when another version is promoted, or at a restart."""

    def __init__(self, settings: Settings, judge: SwitchableJudge | None, rt: Runtime | None = None) -> None:
        from thresher.registry import Registry

        self.settings, self.judge, self.rt = settings, judge, rt
        self.registry = Registry(settings.data_dir / "models")
        self.configured = rt.engine if rt else None
        self.retired: list[Any] = []  # engines switched away from, closed once nothing uses them
        self.judge_configured = judge.current if judge else None
        self.served: dict[str, str | None] = {"chat": None, "judge": None}
        self.failed: dict[str, str | None] = {}  # kind -> the promoted version that could not be loaded
        self.problems: dict[str, str] = rt.model_problems if rt is not None else {}

    def _load(self, spec: str) -> Engine:
        return load_engine(spec, n_ctx=self.settings.n_ctx, n_threads=self.settings.n_threads,
                           n_parallel=self.settings.n_parallel)

    def _make(self, spec: str, serving: Engine | None) -> Any:
        s = self.settings
        return make_judge_for(spec, serving, threshold=s.judge_threshold, rationale=s.judge_rationale,
                              n_ctx=s.n_ctx, n_threads=s.n_threads)

    def _pending(self, kind: str, want: str | None) -> bool:
        """Whether `want` is still to be switched to: not while it serves, nor after it failed to load."""
        if want == self.served[kind]:
            self.failed.pop(kind, None)
            self.problems.pop(kind, None)
            return False
        return kind not in self.failed or self.failed[kind] != want

    def _attempt(self, kind: str, want: str | None, make: Callable[[], Any], serving: str) -> Any:
        """make() the engine or judge for `want`; if it fails, warn once and return None (`serving` stays)."""
        try:
            made = make()
        except Exception as e:  # a missing or broken version must not take the server down, nor flood the log
            self.failed[kind] = want
            self.problems[kind] = (f"{kind} version {want} is promoted but could not be loaded ({e}); still "
                                   f"serving {serving}. It is tried again when another version is promoted (or "
                                   "rolled back to) and at a restart.")
            log.warning("%s", self.problems[kind])
            return None
        self.failed.pop(kind, None)
        self.problems.pop(kind, None)
        return made

    def _judge_for(self, judge_v: Any, follows_chat: bool, chat: Any) -> Any:
        if judge_v is not None:
            return self._make(judge_v.spec, self.rt.engine if self.rt else None)
        if follows_chat:
            new = self._make("serving", self.rt.engine if self.rt is not None else self._load(chat.spec))
            if isinstance(self.judge_configured, HeadJudge) and not isinstance(new, HeadJudge):
                return self.judge_configured  # no head for the new model: the trained head judges on
            return new
        return self.judge_configured

    def check(self) -> list[str]:
        """Load and switch to whatever was promoted (or rolled back) since the last check; returns what changed."""
        changed = []
        chat, judge_v = self.registry.current("chat"), self.registry.current("judge")
        chat_id = chat.id if chat else None
        if self._pending("chat", chat_id):
            if self.rt is None:
                self.served["chat"] = chat_id
            else:
                serving = f"{self.served['chat'] or 'the configured model'} ({self.rt.engine.version})"
                engine = self._attempt("chat", chat_id, lambda: self._load(chat.spec) if chat else self.configured,
                                       serving)
                if engine is not None:
                    old = self.rt.engine
                    self.rt.engine = self.rt.chat.engine = engine
                    self.served["chat"] = chat_id
                    changed.append(f"chat -> {chat_id or 'the configured model'}")
                    self.retired.append(old)
        self._close_retired()
        if self.judge is None:
            return changed
        chat_served = self.served["chat"]  # the judge follows the chat model that really serves
        follows_chat = judge_v is None and self.settings.judge == "serving" and chat_served is not None
        want = judge_v.id if judge_v else f"serving {chat_served}" if follows_chat else None
        if self._pending("judge", want):
            new = self._attempt("judge", want, lambda: self._judge_for(judge_v, follows_chat, chat),
                                self.judge.judge_id)
            if new is not None:
                old_engine = getattr(self.judge.current, "engine", None)
                self.judge.current = new
                self.served["judge"] = want
                changed.append(f"judge -> {judge_v.id if judge_v else new.judge_id}")
                if old_engine is not None:
                    self.retired.append(old_engine)
        self._close_retired()
        return changed

    def _close_retired(self) -> None:
        """Close engines nothing serves or judges with any more, where closing lets their replies in flight finish
        first (`closes_gracefully`); the configured engine is kept, for a rollback."""
        in_use = [self.configured, self.rt.engine if self.rt else None,
                  getattr(self.judge.current, "engine", None) if self.judge else None]
        still: list[Any] = []
        for engine in self.retired:
            if any(engine is e for e in in_use):
                if not any(engine is e for e in still):
                    still.append(engine)  # closed once it is no longer used
            elif getattr(engine, "closes_gracefully", False):
                engine.close()
        self.retired = still


async def _follow_loop(follower: ModelFollower) -> None:
    while True:
        try:
            changed = await run_in_threadpool(follower.check)
            for what in changed:
                log.info("now serving: %s", what)
        except Exception:  # a broken version must not take the server down; the next tick retries
            log.exception("switching to the promoted model failed")
        await asyncio.sleep(FOLLOW_SECONDS)


FOLLOW_SECONDS = 5.0


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
        st = store or Store(settings.db_url)
        await run_in_threadpool(st.migrate)
        recovered = await run_in_threadpool(st.recover_interrupted)
        if recovered:
            log.warning("kept %d reply(ies) cut off by a crash, marked interrupted", recovered)
        eng = engine or await run_in_threadpool(
            load_engine, settings.model, n_ctx=settings.n_ctx, n_threads=settings.n_threads,
            n_parallel=settings.n_parallel,
        )
        limiter = RateLimiter(
            settings.rate_limit_requests if settings.public else 0,
            settings.rate_limit_tokens if settings.public else 0,
        )
        app.state.rt = Runtime(settings, st, eng, ChatService(st, eng, settings.licence), limiter, settings.salt(),
                               started_as=eng.model_id, admission=Admission(settings.max_queue))
        tasks = [asyncio.create_task(_idle_loop(app.state.rt))]
        judge = await run_in_threadpool(make_judge, settings, eng)
        app.state.rt.judge = judge
        if judge is not None:
            tasks.append(asyncio.create_task(_judge_loop(app.state.rt, judge)))
            tasks.append(asyncio.create_task(_publish_loop(app.state.rt, judge)))
        if settings.follow_registry:
            app.state.follower = ModelFollower(settings, judge, app.state.rt)
            tasks.append(asyncio.create_task(_follow_loop(app.state.follower)))
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            if store is None:
                st.close()

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
