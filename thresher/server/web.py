"""The web chat page and the small JSON/SSE API behind it; /healthz; admin routes.

A browser is tied to its conversations by an anonymous random cookie (never an account); the store keeps only a
salted hash of it. Replies stream as server-sent events of plain text; when a reply ends, the `done` event carries
the whole conversation with every reply rendered to sanitised HTML on the server (`render.py`), which the page puts
in place of the streamed text.

Routes under /api (all for the browser's own conversations; anyone else's are 404):
    GET    /api/conversations                 the list, newest first
    GET    /api/conversations/{id}            one conversation's current branch, rendered
    DELETE /api/conversations/{id}            delete it (409 once published: that needs a takedown)
    POST   /api/chat                          send a message (a new conversation without conversation_id): SSE
    POST   /api/conversations/{id}/regenerate another version of a reply: SSE
    POST   /api/conversations/{id}/edit       another version of one of the user's messages, answered: SSE
    POST   /api/conversations/{id}/continue   extend a cut-off reply: SSE
    POST   /api/conversations/{id}/stop       stop the reply being written (the partial text is kept)
    POST   /api/conversations/{id}/switch     show another version (and the branch below it)
    POST   /api/conversations/{id}/publish    the owner's publishing choice (409 once published)
    POST   /api/conversations/{id}/end        end it (it then goes to the judge, if publishing is allowed)
    POST   /api/conversations/{id}/title      rename it (a blank title goes back to its first message)
    POST   /api/conversations/{id}/settings   its reply settings: temperature, reply length
    POST   /api/conversations/{id}/messages/{message_id}/feedback   thumbs up/down with an optional reason
"""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, Literal

from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse, StreamingResponse
from fastapi.templating import Jinja2Templates
from pydantic import Field
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool

from thresher.chat import ConversationEnded, NotOnBranch, Started
from thresher.conversation import Conversation, Message
from thresher.engines import ChatParams, EngineError
from thresher.server.guard import ApiError, JsonBody, check_admin, client_hash, salted_hash, secure_cookie
from thresher.server.render import highlight_css, render
from thresher.server.streaming import Cancel, chat_reply
from thresher.store import LOCKED, NotFound, PublishLocked, Turn

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


def _set_cookie(request: Request, response: Response, token: str) -> None:
    response.set_cookie(COOKIE, token, max_age=365 * 24 * 3600, httponly=True, samesite="lax",
                        secure=secure_cookie(request))


@router.get("/", response_class=HTMLResponse)
async def chat_page(request: Request) -> Response:
    rt = request.app.state.rt
    token, fresh = _session(request)
    response = templates.TemplateResponse(
        request, "chat.html", {"licence": rt.settings.licence, "model": rt.model_name,
                               "max_chars": rt.settings.max_chars,
                               "max_tokens_limit": rt.settings.max_tokens_limit,
                               "max_tokens_default": rt.settings.max_tokens_default,
                               "temperature_default": rt.settings.temperature})
    if fresh:
        _set_cookie(request, response, token)
    return response


@router.get("/highlight.css")
async def highlight_stylesheet() -> Response:
    return Response(highlight_css(), media_type="text/css", headers={"Cache-Control": "public, max-age=86400"})


@router.get("/healthz")
async def healthz(request: Request) -> dict[str, Any]:
    rt = request.app.state.rt
    counts = await run_in_threadpool(rt.store.counts)
    return {"status": "ok", "model": rt.model_name, "version": rt.engine.version, "conversations": counts}


class ReplySettings(JsonBody):
    """What the owner chose for a conversation's replies; unset fields take the server's defaults."""

    temperature: float | None = Field(None, ge=0.0, le=2.0)
    max_tokens: int | None = Field(None, ge=1)


class SendRequest(JsonBody):
    conversation_id: str | None = None
    content: str = Field(min_length=1)
    publish: bool = False  # the page sends its switch; nothing is published without the user's yes
    # A new conversation only: instructions for the assistant (stored as its first message, published with it) and
    # its reply settings.
    system: str | None = None
    settings: ReplySettings | None = None


class TitleRequest(JsonBody):
    title: str | None = Field(None, max_length=200)


class MessageRef(JsonBody):
    message_id: int


class EditRequest(JsonBody):
    message_id: int
    content: str = Field(min_length=1)


class PublishRequest(JsonBody):
    allowed: bool


class FeedbackRequest(JsonBody):
    rating: Literal["up", "down"] | None
    reason: str | None = Field(None, max_length=2000)


def _publication(conv: Conversation, score: float | None = None, threshold: float | None = None) -> dict[str, Any]:
    """Where the conversation stands, in the owner's words, with the rating the model gave it once it has one."""
    rated = f"Rated {score:.1f} out of 10 as training data" if score is not None else None
    bar = f" ({threshold:g} or more is published)" if threshold is not None else ""
    if conv.status in LOCKED:
        said = {"publishing": "Being published now: it can no longer be withdrawn here.",
                "published": "Published in the public dataset. To have it removed, ask the operator for a takedown.",
                "taken_down": "Taken down: removed from the dataset, and never published again."}[conv.status]
        if rated and conv.status != "taken_down":
            said = f"{rated}. {said}"
        return {"state": conv.status, "locked": True, "text": said}
    if not conv.publish_allowed:
        text = "Private: it will not be published."
        return {"state": "private", "locked": False, "text": f"Ended. {text}" if conv.ended else text}
    if conv.status == "rejected":
        why = f"{rated}. Not selected" if rated else "Not selected"
        return {"state": "not_selected", "locked": False, "text": f"{why} for the dataset: it stays private."}
    if conv.status == "judged" and rated:
        if threshold is not None and score is not None and score < threshold:
            return {"state": "not_selected", "locked": False,
                    "text": f"{rated}. Only conversations rated {threshold:g} or more are published, so this one "
                            "stays private."}
        return {"state": "selected", "locked": False,
                "text": f"{rated}{bar}: it goes into the public dataset in the next batch. Switch publishing off "
                        "now if you changed your mind."}
    if conv.ended:
        return {"state": "waiting", "locked": False,
                "text": "Ended. The model rates it as training data shortly; the best ones are published."}
    return {"state": "allowed", "locked": False,
            "text": "You allowed publishing: when you end it, the model rates it and the best ones are published."}


def _turn_view(t: Turn) -> dict[str, Any]:
    view: dict[str, Any] = {
        "id": t.id, "parent_id": t.parent_id, "role": t.role, "content": t.content, "status": t.status,
        "finish_reason": t.finish_reason, "versions": t.versions, "version": t.versions.index(t.id) + 1,
        "feedback": None if t.feedback is None else {"rating": t.feedback.rating, "reason": t.feedback.reason},
        "created_at": t.created_at.isoformat() if t.created_at else None,
    }
    if t.role == "assistant":
        view["html"] = render(t.content)
    return view


def _view(conv: Conversation, turns: list[Turn], generating: bool = False, score: float | None = None,
          threshold: float | None = None, settings: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "id": conv.id,
        "ended": conv.ended,
        "end_reason": conv.end_reason,
        "publish_allowed": conv.publish_allowed,
        "publication": _publication(conv, score, threshold),
        "rating": None if score is None else {"score": round(score, 2), "threshold": threshold},
        "settings": settings or {},
        "created_at": conv.created_at.isoformat(),
        "licence": conv.licence,
        "generating": generating,
        "messages": [_turn_view(t) for t in turns],
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


def _generating(request: Request) -> dict[str, Cancel]:
    """Replies being written now, by conversation: what the Stop button stops."""
    state = request.app.state
    if not hasattr(state, "generating"):
        state.generating = {}
    return state.generating


async def _thread_view(request: Request, conv_id: str) -> dict[str, Any]:
    rt = request.app.state.rt

    def load() -> dict[str, Any]:
        conv, turns = rt.store.thread(conv_id)
        score = threshold = None
        if conv.ended and conv.publish_allowed:
            scored = [j for j in rt.store.judgments(conv_id) if j.score is not None]
            score = scored[-1].score if scored else None
            decided = rt.store.publication(conv_id)
            threshold = (decided.threshold if decided is not None and decided.threshold is not None
                         else rt.judge.threshold if rt.judge is not None else None)
        return _view(conv, turns, conv_id in _generating(request), score, threshold,
                     rt.store.reply_settings(conv_id))

    return await run_in_threadpool(load)


@router.get("/api/conversations")
async def list_conversations(request: Request) -> dict[str, Any]:
    token = request.cookies.get(COOKIE)
    if token is None:
        return {"data": []}
    lines = await run_in_threadpool(request.app.state.rt.store.conversations_of, _owner(request, token))
    return {"data": [{"id": c.id, "title": c.title or "(empty)", "updated_at": c.updated_at.isoformat(),
                      "created_at": c.created_at.isoformat() if c.created_at else None, "renamed": c.renamed,
                      "ended": c.ended, "publish_allowed": c.publish_allowed, "status": c.status} for c in lines]}


@router.get("/api/conversations/{conv_id}")
async def get_conversation(conv_id: str, request: Request) -> dict[str, Any]:
    await _own(request, conv_id)
    return await _thread_view(request, conv_id)


@router.delete("/api/conversations/{conv_id}")
async def delete_conversation(conv_id: str, request: Request) -> dict[str, Any]:
    await _own(request, conv_id)
    _not_generating(request, conv_id)
    if not await run_in_threadpool(request.app.state.rt.store.delete, conv_id):
        raise ApiError(409, "this conversation is already published, so deleting it here cannot remove it from the "
                       "dataset; ask the operator for a takedown", "already_published")
    return {"id": conv_id, "deleted": True}


@router.post("/api/conversations/{conv_id}/end")
async def end_conversation(conv_id: str, request: Request) -> dict[str, Any]:
    await _own(request, conv_id)
    await run_in_threadpool(request.app.state.rt.chat.end, conv_id, "button")
    return await _thread_view(request, conv_id)


@router.post("/api/conversations/{conv_id}/title")
async def rename(conv_id: str, body: TitleRequest, request: Request) -> dict[str, Any]:
    await _own(request, conv_id)
    await run_in_threadpool(request.app.state.rt.store.rename, conv_id, body.title)
    return {"id": conv_id, "title": body.title}


@router.post("/api/conversations/{conv_id}/settings")
async def set_settings(conv_id: str, body: ReplySettings, request: Request) -> dict[str, Any]:
    await _own(request, conv_id)
    await run_in_threadpool(request.app.state.rt.store.set_reply_settings, conv_id,
                            _reply_settings(request, body))
    return await _thread_view(request, conv_id)


def _reply_settings(request: Request, body: ReplySettings | None) -> dict[str, Any]:
    """The settings to store, checked against the server's limits."""
    if body is None:
        return {}
    limit = request.app.state.rt.settings.max_tokens_limit
    if body.max_tokens is not None and body.max_tokens > limit:
        raise ApiError(400, f"reply length: at most {limit} tokens, not {body.max_tokens}", "invalid_value",
                       "max_tokens")
    return body.model_dump(exclude_none=True)


@router.post("/api/conversations/{conv_id}/publish")
async def set_publish(conv_id: str, body: PublishRequest, request: Request) -> dict[str, Any]:
    rt = request.app.state.rt
    await _own(request, conv_id)
    try:
        await run_in_threadpool(rt.store.choose_publish, conv_id, body.allowed)
    except PublishLocked as e:
        raise ApiError(409, f"{e}; ask the operator for a takedown to remove it", "already_published") from None
    return await _thread_view(request, conv_id)


@router.post("/api/conversations/{conv_id}/switch")
async def switch_version(conv_id: str, body: MessageRef, request: Request) -> dict[str, Any]:
    await _own(request, conv_id)
    _not_generating(request, conv_id)
    try:
        await run_in_threadpool(request.app.state.rt.store.switch, conv_id, body.message_id)
    except NotFound:
        raise ApiError(404, f"no message {body.message_id} in this conversation", "message_not_found") from None
    return await _thread_view(request, conv_id)


@router.post("/api/conversations/{conv_id}/messages/{message_id}/feedback")
async def set_feedback(conv_id: str, message_id: int, body: FeedbackRequest, request: Request) -> dict[str, Any]:
    await _own(request, conv_id)
    try:
        await run_in_threadpool(request.app.state.rt.store.set_feedback, conv_id, message_id, body.rating,
                                body.reason)
    except NotFound:
        raise ApiError(404, f"no message {message_id} in this conversation", "message_not_found") from None
    except ValueError as e:
        raise ApiError(400, str(e), "invalid_feedback") from None
    return await _thread_view(request, conv_id)


@router.post("/api/conversations/{conv_id}/stop")
async def stop(conv_id: str, request: Request) -> dict[str, Any]:
    await _own(request, conv_id)
    cancel = _generating(request).get(conv_id)
    if cancel is not None:
        cancel.set()
    return {"stopped": cancel is not None}


@router.post("/api/chat")
async def send(body: SendRequest, request: Request) -> Response:
    """Add the user's message and stream the reply as server-sent events: meta, queue... (while it waits for the
    model: how many are ahead), delta..., done (or error)."""
    rt = request.app.state.rt
    token, fresh = _session(request)
    _check_length(request, body.content)
    who = client_hash(request, rt.salt)
    rt.limiter.check(who)
    _admit(request)
    if body.conversation_id is None:
        chosen = _reply_settings(request, body.settings)
        system = (body.system or "").strip()
        _check_length(request, system)
        first = [Message(role="system", content=system)] if system else []
        opened = await run_in_threadpool(
            rt.chat.open, [*first, Message(role="user", content=body.content)], client_hash=who, source="web",
            publish_allowed=body.publish, owner_hash=_owner(request, token), stitch=False,
        )
        conv_id = opened.conversation_id
        if chosen:
            await run_in_threadpool(rt.store.set_reply_settings, conv_id, chosen)
    else:
        conv_id = (await _own(request, body.conversation_id)).id
        _claim(request, conv_id)
        try:
            await run_in_threadpool(rt.chat.add_user_message, conv_id, body.content)
        except ConversationEnded:
            _release(request, conv_id)
            raise ApiError(409, "this conversation has ended; start a new one", "conversation_ended") from None
    response = _reply_stream(request, conv_id, who, lambda params: rt.chat.start_reply(conv_id, params))
    if fresh:
        _set_cookie(request, response, token)
    return response


@router.post("/api/conversations/{conv_id}/regenerate")
async def regenerate(conv_id: str, body: MessageRef, request: Request) -> Response:
    rt = request.app.state.rt
    who = await _start(request, conv_id)
    after = await _branch_call(request, conv_id, rt.chat.regenerate_after, conv_id, body.message_id)
    return _reply_stream(request, conv_id, who, lambda params: rt.chat.start_reply(conv_id, params, after))


@router.post("/api/conversations/{conv_id}/edit")
async def edit(conv_id: str, body: EditRequest, request: Request) -> Response:
    rt = request.app.state.rt
    _check_length(request, body.content)
    who = await _start(request, conv_id)
    await _branch_call(request, conv_id, rt.chat.edit, conv_id, body.message_id, body.content)
    return _reply_stream(request, conv_id, who, lambda params: rt.chat.start_reply(conv_id, params))


@router.post("/api/conversations/{conv_id}/continue")
async def continue_reply(conv_id: str, body: MessageRef, request: Request) -> Response:
    rt = request.app.state.rt
    who = await _start(request, conv_id)
    await _branch_call(request, conv_id, rt.chat.regenerate_after, conv_id, body.message_id)  # validates early
    return _reply_stream(request, conv_id, who,
                         lambda params: rt.chat.start_continue(conv_id, body.message_id, params))


def _check_length(request: Request, text: str) -> None:
    limit = request.app.state.rt.settings.max_chars
    if len(text) > limit:
        raise ApiError(413, f"message too long: {len(text)} characters (limit {limit})", "too_many_characters")


def _not_generating(request: Request, conv_id: str) -> None:
    """Refuse a change to the conversation while a reply is being written into it."""
    if conv_id in _generating(request):
        raise ApiError(409, "a reply is still being written: stop it first", "reply_in_progress")


def _claim(request: Request, conv_id: str) -> Cancel:
    """One reply at a time per conversation."""
    generating = _generating(request)
    if conv_id in generating:
        raise ApiError(409, "a reply is still being written in this conversation: wait, or stop it",
                       "reply_in_progress")
    cancel = generating[conv_id] = Cancel()
    return cancel


def _release(request: Request, conv_id: str, cancel: Cancel | None = None) -> None:
    generating = _generating(request)
    if cancel is None or generating.get(conv_id) is cancel:
        generating.pop(conv_id, None)


async def _start(request: Request, conv_id: str) -> str:
    rt = request.app.state.rt
    await _own(request, conv_id)
    who = client_hash(request, rt.salt)
    rt.limiter.check(who)
    _admit(request)
    _claim(request, conv_id)
    return who


def _admit(request: Request) -> None:
    """A place among the replies in flight (503, "the server is busy", when none is left), taken before anything is
    stored; the reply's stream gives it back, or the request's end if it fails first."""
    rt = request.app.state.rt
    request.state.ticket = rt.admission.admit(rt.engine)


async def _branch_call(request: Request, conv_id: str, fn: Callable[..., Any], *args: Any) -> Any:
    try:
        return await run_in_threadpool(fn, *args)
    except ConversationEnded:
        _release(request, conv_id)
        raise ApiError(409, "this conversation has ended; start a new one", "conversation_ended") from None
    except (NotOnBranch, NotFound) as e:
        _release(request, conv_id)
        raise ApiError(409, str(e), "not_on_branch") from None


def _reply_stream(
    request: Request, conv_id: str, who: str,
    start: Callable[[ChatParams], Started],
) -> Response:
    """Stream a reply to the page as server-sent events; `start` (a `ChatService.start_*`) stores it, given the
    conversation's sampling."""
    rt = request.app.state.rt
    generating = _generating(request)
    cancel = generating.get(conv_id) or _claim(request, conv_id)

    async def events() -> AsyncIterator[str]:
        try:
            yield _sse("meta", {"conversation_id": conv_id})
            final, meter = None, rt.limiter.meter(who)
            try:
                ahead = None
                async for chunk in chat_reply(rt.chat, lambda: start(_params(rt, conv_id)), cancel,
                                              getattr(request.state, "ticket", None)):
                    meter.add(chunk)
                    if chunk.waiting is not None and chunk.waiting != ahead:  # waiting for the model: how long
                        ahead = chunk.waiting
                        yield _sse("queue", {"ahead": ahead})
                    if chunk.text and ahead is not None:  # its turn came
                        ahead = None
                        yield _sse("queue", {"ahead": None})
                    if chunk.text:
                        yield _sse("delta", {"text": chunk.text})
                    if chunk.finish_reason:
                        final = chunk
            except EngineError as e:
                _release(request, conv_id, cancel)
                yield _sse("error", {"message": f"the model failed: {e}",
                                     "conversation": await _thread_view(request, conv_id)})
                return
            except NotFound:  # deleted meanwhile
                yield _sse("error", {"message": "this conversation was deleted", "conversation": None})
                return
            except (NotOnBranch, ConversationEnded, ValueError) as e:
                _release(request, conv_id, cancel)
                yield _sse("error", {"message": str(e) or "this conversation has ended",
                                     "conversation": await _thread_view(request, conv_id)})
                return
            _release(request, conv_id, cancel)
            yield _sse("done", {"finish_reason": final.finish_reason if final else "interrupted",
                                "conversation": await _thread_view(request, conv_id)})
        finally:
            _release(request, conv_id, cancel)

    # The background task also releases the conversation when the client left before the stream began.
    return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"},
                             background=BackgroundTask(_release, request, conv_id, cancel))


def _params(rt: Any, conv_id: str) -> ChatParams:
    """Sampling for the next reply: the server's defaults, with what the owner chose for this conversation."""
    chosen = rt.store.reply_settings(conv_id)
    return ChatParams(max_tokens=min(chosen.get("max_tokens", rt.settings.max_tokens_default),
                                     rt.settings.max_tokens_limit),
                      temperature=chosen.get("temperature", rt.settings.temperature),
                      repetition_penalty=rt.settings.repetition_penalty)


def _sse(name: str, data: dict[str, Any]) -> str:
    return f"event: {name}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


@router.get("/admin/conversations")
async def admin_conversations(request: Request, status: str | None = None, limit: int = 50) -> dict[str, Any]:
    rt = request.app.state.rt
    check_admin(request, rt.settings.admin_token)
    convs = await run_in_threadpool(rt.store.list, status, None, min(max(limit, 1), 500))
    return {"data": [{"id": c.id, "ended": c.ended, "end_reason": c.end_reason,
                      "publish_allowed": c.publish_allowed, "licence": c.licence, "source": c.source,
                      "model_version": c.model_version, "created_at": c.created_at.isoformat(),
                      "messages": [{"role": m.role, "content": m.content, "status": m.status}
                                   for m in c.messages]} for c in convs]}


@router.get("/admin/stats")
async def admin_stats(request: Request) -> dict[str, Any]:
    rt = request.app.state.rt
    check_admin(request, rt.settings.admin_token)
    return {"conversations": await run_in_threadpool(rt.store.counts)}
