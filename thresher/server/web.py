"""The web chat page and the small JSON/SSE API behind it; /healthz; admin routes.

A browser is tied to its conversations by an anonymous random cookie (never an account); the store keeps only a
salted hash of it.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse, StreamingResponse
from fastapi.templating import Jinja2Templates
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from thresher.chat import ConversationEnded
from thresher.conversation import Conversation, Message
from thresher.engines import ChatParams, EngineError
from thresher.server.guard import ApiError, check_admin, client_hash, salted_hash
from thresher.server.streaming import stream_in_thread
from thresher.store import NotFound, PublishLocked

HERE = Path(__file__).parent
router = APIRouter()
templates = Jinja2Templates(directory=HERE / "templates")
COOKIE = "thresher_session"


def _session(request: Request) -> tuple[str, bool]:
    token = request.cookies.get(COOKIE)
    if token and 20 <= len(token) <= 100:
        return token, False
    return secrets.token_urlsafe(24), True


def _owner(request: Request, token: str) -> str:
    return salted_hash(request.app.state.rt.salt, f"session:{token}")


def _set_cookie(response: Response, token: str) -> None:
    response.set_cookie(COOKIE, token, max_age=365 * 24 * 3600, httponly=True, samesite="lax")


@router.get("/", response_class=HTMLResponse)
async def chat_page(request: Request) -> Response:
    rt = request.app.state.rt
    token, fresh = _session(request)
    response = templates.TemplateResponse(
        request,
        "chat.html",
        {"licence": rt.settings.licence, "model": rt.model_name},
    )
    if fresh:
        _set_cookie(response, token)
    return response


@router.get("/healthz")
async def healthz(request: Request) -> dict[str, Any]:
    rt = request.app.state.rt
    counts = await run_in_threadpool(rt.store.counts)
    return {"status": "ok", "model": rt.model_name, "version": rt.engine.version, "conversations": counts}


class SendRequest(BaseModel):
    conversation_id: str | None = None
    content: str = Field(min_length=1)
    publish: bool = False  # the page sends its switch; nothing is published without the user's yes


class PublishRequest(BaseModel):
    allowed: bool


def _public_view(conv: Conversation) -> dict[str, Any]:
    return {
        "id": conv.id,
        "ended": conv.ended,
        "end_reason": conv.end_reason,
        "publish_allowed": conv.publish_allowed,
        "licence": conv.licence,
        "messages": [{"role": m.role, "content": m.content, "status": m.status} for m in conv.messages],
    }


async def _own(request: Request, conv_id: str) -> Conversation:
    """The conversation, if this browser owns it; 404 otherwise (no hint that it exists)."""
    rt = request.app.state.rt
    token = request.cookies.get(COOKIE)
    try:
        conv = await run_in_threadpool(rt.store.get, conv_id)
    except NotFound:
        conv = None
    if conv is None or token is None or conv.owner_hash != _owner(request, token):
        raise ApiError(404, f"no conversation {conv_id}", "conversation_not_found")
    return conv


@router.get("/api/conversations/{conv_id}")
async def get_conversation(conv_id: str, request: Request) -> dict[str, Any]:
    return _public_view(await _own(request, conv_id))


@router.post("/api/conversations/{conv_id}/end")
async def end_conversation(conv_id: str, request: Request) -> dict[str, Any]:
    await _own(request, conv_id)
    conv = await run_in_threadpool(request.app.state.rt.chat.end, conv_id, "button")
    return _public_view(conv)


@router.post("/api/conversations/{conv_id}/publish")
async def set_publish(conv_id: str, body: PublishRequest, request: Request) -> dict[str, Any]:
    rt = request.app.state.rt
    await _own(request, conv_id)
    try:
        conv = await run_in_threadpool(rt.store.choose_publish, conv_id, body.allowed)
    except PublishLocked as e:
        raise ApiError(409, f"{e}; ask the operator for a takedown to remove it", "already_published") from None
    return _public_view(conv)


@router.post("/api/chat")
async def send(body: SendRequest, request: Request) -> Response:
    """Add the user's message and stream the reply as server-sent events: meta, delta..., done (or error)."""
    rt = request.app.state.rt
    s = rt.settings
    token, fresh = _session(request)
    if len(body.content) > s.max_chars:
        raise ApiError(413, f"message too long: {len(body.content)} characters (limit {s.max_chars})",
                       "too_many_characters")
    who = client_hash(request, rt.salt)
    rt.limiter.check(who)
    if body.conversation_id is None:
        opened = await run_in_threadpool(
            rt.chat.open, [Message(role="user", content=body.content)], client_hash=who, source="web",
            publish_allowed=body.publish, owner_hash=_owner(request, token),
        )
        conv_id = opened.conversation_id
    else:
        conv_id = (await _own(request, body.conversation_id)).id
        try:
            await run_in_threadpool(rt.chat.add_user_message, conv_id, body.content)
        except ConversationEnded:
            raise ApiError(409, "this conversation has ended; start a new one", "conversation_ended") from None
    params = ChatParams(max_tokens=s.max_tokens_default)

    async def events() -> AsyncIterator[str]:
        yield _sse("meta", {"conversation_id": conv_id})
        final = None
        try:
            async for chunk in stream_in_thread(lambda cancel: rt.chat.reply(conv_id, params, cancel)):
                if chunk.text:
                    yield _sse("delta", {"text": chunk.text})
                if chunk.finish_reason:
                    final = chunk
        except EngineError as e:
            yield _sse("error", {"message": f"the model failed: {e}"})
            return
        if final is not None:
            rt.limiter.spend(who, final.completion_tokens or 0)
        yield _sse("done", {"finish_reason": final.finish_reason if final else "stop"})

    response = StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
    if fresh:
        _set_cookie(response, token)
    return response


def _sse(name: str, data: dict[str, Any]) -> str:
    return f"event: {name}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


@router.get("/admin/conversations")
async def admin_conversations(request: Request, status: str | None = None, limit: int = 50) -> dict[str, Any]:
    rt = request.app.state.rt
    check_admin(request, rt.settings.admin_token)
    convs = await run_in_threadpool(rt.store.list, status, None, min(max(limit, 1), 500))
    return {"data": [_public_view(c) | {"source": c.source, "model_version": c.model_version,
                                        "created_at": c.created_at.isoformat()} for c in convs]}


@router.get("/admin/stats")
async def admin_stats(request: Request) -> dict[str, Any]:
    rt = request.app.state.rt
    check_admin(request, rt.settings.admin_token)
    return {"conversations": await run_in_threadpool(rt.store.counts)}
