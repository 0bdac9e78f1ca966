"""The OpenAI-compatible API: /v1/chat/completions (streaming and not), /v1/models, and ending a conversation.

thresher extensions, all optional (documented in the README):
    X-Thresher-Publish: true    this conversation may be published (false: never); the same as the body field
    "thresher_publish": true    Unsaid, the operator's `api_publish_by_default` decides (default: not published)
    X-Thresher-End: true        end the conversation after this reply (it then goes to the judge)
    POST /v1/conversations/{id}/end
Every response names its conversation in the X-Thresher-Conversation header.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool

from thresher.conversation import InvalidConversation, messages_from_openai, new_id
from thresher.engines import ChatParams, Chunk, EngineError, ProbabilitiesUnavailable, TokenLogprob
from thresher.server.guard import ApiError, api_owner, check_api_key, client_hash, parse_json, read_body
from thresher.server.streaming import Cancel, cancel_on_disconnect, chat_reply
from thresher.store import NotFound, PublishLocked

router = APIRouter(prefix="/v1")

TRUE, FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off"}


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    messages: Any = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)  # None: the server's `temperature` setting
    repetition_penalty: float | None = Field(None, gt=0, le=2)  # vLLM's extension; None: the server's setting
    top_p: float = Field(0.95, gt=0, le=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)
    # Accepted only when they ask for nothing this server lacks (see _refuse_unsupported), never silently ignored.
    tools: Any = None
    tool_choice: Any = None
    functions: Any = None
    function_call: Any = None
    response_format: Any = None
    thresher_publish: bool | None = None


def _refuse_unsupported(req: ChatRequest) -> None:
    """A 400 naming the first field that asks for what this server cannot do."""
    unsupported = {
        "n": "only n=1 is supported" if req.n not in (None, 1) else None,
        "tools": "tools are not supported" if req.tools else None,
        "functions": "functions are not supported" if req.functions else None,
        "tool_choice": "tool_choice is not supported (there are no tools)"
        if req.tool_choice not in (None, "none", "auto") else None,
        "function_call": "function_call is not supported" if req.function_call not in (None, "none", "auto") else None,
        "response_format": "only response_format {\"type\": \"text\"} is supported"
        if req.response_format not in (None, {"type": "text"}) else None,
        "top_logprobs": "top_logprobs needs logprobs: true" if req.top_logprobs is not None and not req.logprobs
        else None,
    }
    for param, message in unsupported.items():
        if message:
            raise ApiError(400, message, "unsupported_value", param)


def _flag(request: Request, name: str) -> bool | None:
    value = request.headers.get(name)
    if value is None:
        return None
    v = value.strip().lower()
    if v in TRUE:
        return True
    if v in FALSE:
        return False
    raise ApiError(400, f"header {name} must be true or false, got {value!r}", "invalid_header")


def _validation(e: ValidationError) -> ApiError:
    err = e.errors()[0]
    param = ".".join(str(p) for p in err["loc"]) or None
    return ApiError(422, f"{param}: {err['msg']}", "invalid_value", param)


@router.get("/models")
async def list_models(request: Request) -> dict[str, Any]:
    rt = request.app.state.rt
    check_api_key(request, rt.settings.api_keys)
    return {"object": "list", "data": [_model_card(rt)]}


@router.get("/models/{model_id:path}")
async def get_model(model_id: str, request: Request) -> dict[str, Any]:
    rt = request.app.state.rt
    check_api_key(request, rt.settings.api_keys)
    if model_id != rt.model_name:
        raise ApiError(404, f"model {model_id!r} does not exist; this server serves {rt.model_name!r}",
                       "model_not_found", "model")
    return _model_card(rt)


def _model_card(rt: Any) -> dict[str, Any]:
    return {"id": rt.model_name, "object": "model", "created": 0, "owned_by": "thresher",
            "version": rt.engine.version}


@router.post("/conversations/{conv_id}/end")
async def end_conversation(conv_id: str, request: Request) -> dict[str, Any]:
    """End one of this client's API conversations (its API key's, where keys are on); anyone else's is 404."""
    rt = request.app.state.rt
    api_key = check_api_key(request, rt.settings.api_keys)
    try:
        conv = await run_in_threadpool(rt.store.get, conv_id)
    except NotFound:
        conv = None
    if conv is None or conv.source != "api" or conv.owner_hash != api_owner(client_hash(request, rt.salt), api_key,
                                                                             rt.salt):
        raise ApiError(404, f"no conversation {conv_id}", "conversation_not_found")
    conv = await run_in_threadpool(rt.chat.end, conv_id, "api")
    return {"id": conv.id, "object": "conversation", "ended": True, "end_reason": conv.end_reason}


@router.post("/chat/completions")
async def chat_completions(request: Request) -> Any:
    rt = request.app.state.rt
    s = rt.settings
    api_key = check_api_key(request, s.api_keys)
    data = parse_json(await read_body(request, s.max_body_bytes))
    if not isinstance(data, dict):
        raise ApiError(400, "the request body must be a JSON object", "invalid_json")
    try:
        req = ChatRequest.model_validate(data)
    except ValidationError as e:
        raise _validation(e) from None
    if not req.model:
        raise ApiError(400, "you must provide a model parameter", "missing_model", "model")
    if req.model != rt.model_name:
        raise ApiError(404, f"model {req.model!r} does not exist; this server serves {rt.model_name!r}",
                       "model_not_found", "model")
    _refuse_unsupported(req)
    if req.messages is None:
        raise ApiError(400, "'messages' is required", "missing_messages", "messages")
    try:
        messages = messages_from_openai(req.messages)
    except InvalidConversation as e:
        raise ApiError(400, str(e), "invalid_messages", "messages") from None
    if len(messages) > s.max_messages:
        raise ApiError(413, f"too many messages: {len(messages)} (limit {s.max_messages})", "too_many_messages",
                       "messages")
    chars = sum(len(m.content) for m in messages)
    if chars > s.max_chars:
        raise ApiError(413, f"messages too long: {chars} characters (limit {s.max_chars})", "too_many_characters",
                       "messages")
    max_tokens = req.max_completion_tokens or req.max_tokens or s.max_tokens_default
    if max_tokens > s.max_tokens_limit:
        raise ApiError(400, f"max_tokens is {max_tokens}; this server allows at most {s.max_tokens_limit}",
                       "max_tokens_too_large", "max_tokens")
    stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    params = ChatParams(max_tokens=max_tokens, top_p=req.top_p,
                        temperature=s.temperature if req.temperature is None else req.temperature,
                        repetition_penalty=(s.repetition_penalty if req.repetition_penalty is None
                                            else req.repetition_penalty),
                        stop=[x for x in stop if x],  # an empty stop string would end every reply before it began
                        seed=req.seed, logprobs=(req.top_logprobs or 0) if req.logprobs else None)
    publish = _flag(request, "x-thresher-publish")
    if publish is not None and req.thresher_publish is not None and publish != req.thresher_publish:
        raise ApiError(400, "the X-Thresher-Publish header and the thresher_publish field disagree",
                       "conflicting_publish_choice", "thresher_publish")
    publish = req.thresher_publish if publish is None else publish
    end_after = _flag(request, "x-thresher-end") or False

    who = client_hash(request, rt.salt)
    limit_key = f"key:{api_key}" if api_key else who
    rt.limiter.check(limit_key)
    meter = rt.limiter.meter(limit_key)

    prompt = [m.to_openai() for m in messages]
    n_prompt = await run_in_threadpool(rt.engine.count_tokens, prompt)
    if n_prompt >= s.n_ctx:
        raise ApiError(400, f"the messages are {n_prompt} tokens; this model's context holds {s.n_ctx}",
                       "context_length_exceeded", "messages")
    ticket = rt.admission.admit(rt.engine)  # 503 while the queue is full: nothing stored

    opened = await run_in_threadpool(
        rt.chat.open, messages, client_hash=who, source="api", owner_hash=api_owner(who, api_key, rt.salt),
        publish_allowed=s.api_publish_by_default if publish is None else publish,
    )
    if opened.continued and publish is not None:
        try:
            await run_in_threadpool(rt.store.choose_publish, opened.conversation_id, publish)
        except PublishLocked as e:  # cannot happen to an open conversation; said plainly if it ever does
            raise ApiError(409, str(e), "already_published", "thresher_publish") from None
    conv_id = opened.conversation_id
    headers = {"X-Thresher-Conversation": conv_id}
    completion_id = f"chatcmpl-{new_id()}"
    created = int(time.time())

    def finish() -> None:
        if end_after:
            rt.chat.end(conv_id, "api")

    cancel = Cancel()  # set when the client goes away
    chunks = chat_reply(rt.chat, lambda: rt.chat.start_reply(conv_id, params), cancel, ticket)

    if not req.stream:
        text, final, tokens = "", None, []
        try:
            async for chunk in cancel_on_disconnect(request, cancel, chunks):
                meter.add(chunk)
                text += chunk.text
                tokens += chunk.logprobs
                if chunk.finish_reason:
                    final = chunk
        except EngineError as e:
            raise _engine_error(e) from None
        await run_in_threadpool(finish)
        return JSONResponse(
            {
                "id": completion_id,
                "object": "chat.completion",
                "created": created,
                "model": rt.model_name,
                "system_fingerprint": rt.engine.version,
                "choices": [{
                    "index": 0,
                    "message": {"role": "assistant", "content": text, "refusal": None, "annotations": []},
                    "logprobs": _logprobs(tokens) if params.logprobs is not None else None,
                    "finish_reason": final.finish_reason if final else "stop",
                }],
                "usage": _usage(final),
            },
            headers=headers,
        )

    include_usage = bool(req.stream_options and req.stream_options.include_usage)

    def event(choices: list[dict[str, Any]], **extra: Any) -> str:
        body = {"id": completion_id, "object": "chat.completion.chunk", "created": created,
                "model": rt.model_name, "system_fingerprint": rt.engine.version, "choices": choices, **extra}
        if include_usage and "usage" not in extra:
            body["usage"] = None
        return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

    async def sse() -> AsyncIterator[str]:
        yield event([{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                      "finish_reason": None}])
        final = None
        try:
            async for chunk in chunks:
                meter.add(chunk)
                if chunk.text:
                    logprobs = _logprobs(chunk.logprobs) if params.logprobs is not None else None
                    yield event([{"index": 0, "delta": {"content": chunk.text}, "logprobs": logprobs,
                                  "finish_reason": None}])
                if chunk.finish_reason:
                    final = chunk
        except EngineError as e:
            yield f"data: {json.dumps(_engine_error(e).body())}\n\n"
            yield "data: [DONE]\n\n"
            return
        await run_in_threadpool(finish)
        yield event([{"index": 0, "delta": {}, "logprobs": None,
                      "finish_reason": final.finish_reason if final else "stop"}])
        if include_usage:
            yield event([], usage=_usage(final))
        yield "data: [DONE]\n\n"

    return StreamingResponse(sse(), media_type="text/event-stream",
                             headers=headers | {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _engine_error(e: EngineError) -> ApiError:
    if isinstance(e, ProbabilitiesUnavailable):  # asked for logprobs, which this model (a remote one) refuses
        return ApiError(400, f"this model cannot give logprobs: {e}", "unsupported_value", "logprobs")
    return ApiError(503, f"the model failed: {e}", "engine_error")


def _logprobs(tokens: list[TokenLogprob]) -> dict[str, Any]:
    """Tokens with their log-probabilities, in the OpenAI shape (`choices[].logprobs`)."""

    def entry(token: str, logprob: float) -> dict[str, Any]:
        return {"token": token, "logprob": logprob, "bytes": list(token.encode("utf-8"))}

    return {"content": [entry(t.token, t.logprob) | {"top_logprobs": [entry(alt, lp) for alt, lp in t.top]}
                        for t in tokens], "refusal": None}


def _usage(final: Chunk | None) -> dict[str, int]:
    p = (final.prompt_tokens or 0) if final else 0
    c = (final.completion_tokens or 0) if final else 0
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}
