"""What stands between the public and the model: errors in the OpenAI shape, who a client is (a salted hash, never
the address), API keys, the admin token, body-size caps, bodies that are too deep or not valid Unicode, per-client
rate limits, and two middlewares for browsers: security headers on every response, and no state change from
another site."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import threading
import time
from collections import deque
from itertools import accumulate
from typing import Any
from urllib.parse import urlsplit

from fastapi import Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, model_validator
from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from thresher.engines import Chunk


class ApiError(Exception):
    """An error answered in the OpenAI shape: {"error": {"message", "type", "param", "code"}}."""

    TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
             404: "not_found_error", 409: "conflict_error", 413: "invalid_request_error",
             422: "invalid_request_error", 429: "rate_limit_error", 503: "server_error"}

    def __init__(self, status: int, message: str, code: str | None = None, param: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param
        self.headers = headers or {}

    def body(self) -> dict:
        kind = self.TYPES.get(self.status, "invalid_request_error" if self.status < 500 else "server_error")
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def salted_hash(salt: str, value: str) -> str:
    return hashlib.sha256(f"{salt}\x00{value}".encode()).hexdigest()[:32]


def client_hash(request: Request, salt: str) -> str:
    """Who the client is, for stitching and rate limits, without keeping the address itself."""
    host = request.client.host if request.client else "unknown"
    return salted_hash(salt, f"addr:{host}")


def api_owner(who: str, api_key: str | None, salt: str) -> str:
    """Whose an API conversation is: the API key's (hashed) where keys are on, else the client's."""
    return salted_hash(salt, f"key:{api_key}") if api_key else who


def same_secret(given: str, expected: str) -> bool:
    """Constant-time comparison of a secret a client sent (any text: header values are Latin-1) with ours."""
    return hmac.compare_digest(given.encode("utf-8", "surrogatepass"), expected.encode("utf-8", "surrogatepass"))


def bearer(request: Request) -> str | None:
    auth = request.headers.get("authorization", "")
    scheme, _, token = auth.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def check_api_key(request: Request, keys: list[str]) -> str | None:
    """With API keys configured, /v1 needs one; returns the key used (or None when keys are off)."""
    if not keys:
        return None
    token = bearer(request)
    if token is None:
        raise ApiError(401, "missing API key: send 'Authorization: Bearer KEY'", "invalid_api_key")
    if not any(same_secret(token, k) for k in keys):
        raise ApiError(401, "invalid API key", "invalid_api_key")
    return token


def check_admin(request: Request, admin_token: str | None) -> None:
    if not admin_token:
        raise ApiError(403, "admin routes are off: set THRESHER_ADMIN_TOKEN to use them", "admin_disabled")
    token = bearer(request)
    if token is None or not same_secret(token, admin_token):
        raise ApiError(401, "admin token required: send 'Authorization: Bearer TOKEN'", "invalid_admin_token")


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing (413) anything over `limit` bytes without reading it all."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise ApiError(413, f"request body is larger than {limit} bytes", "request_too_large")
    body = bytearray()
    async for part in request.stream():
        body += part
        if len(body) > limit:
            raise ApiError(413, f"request body is larger than {limit} bytes", "request_too_large")
    return bytes(body)


MAX_JSON_DEPTH = 64  # OpenAI requests nest a handful of levels; Python's parser overflows its stack near 2,000
_JSON_STRING = re.compile(rb'"(?:[^"\\]++|\\.)*+"', re.DOTALL)
_NOT_BRACKETS = re.compile(rb"[^\[\]{}]+")
_STEP = {ord("["): 1, ord("{"): 1, ord("]"): -1, ord("}"): -1}


def json_depth(raw: bytes) -> int:
    """How deep a JSON text nests arrays and objects, found without parsing it (so at C speed, about 50 ms for a
    megabyte of brackets): strings are struck out, then the brackets left are counted."""
    brackets = _NOT_BRACKETS.sub(b"", _JSON_STRING.sub(b"", raw))
    return max(accumulate(map(_STEP.__getitem__, brackets)), default=0)


def check_text(data: Any) -> None:
    """Raise ValueError if any string in a parsed JSON document (keys included) is not valid Unicode: JSON may
    escape half of a surrogate pair ("\\ud800"), which no database or encoder accepts. Walks without recursion."""
    stack = [data]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError("the text is not valid Unicode (it holds a lone surrogate such as \\ud800)") from None
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def parse_json(raw: bytes) -> Any:
    """A request body's JSON, refusing (400) what is not JSON, nests deeper than MAX_JSON_DEPTH (checked before
    parsing) or holds text that is not valid Unicode."""
    if json_depth(raw) > MAX_JSON_DEPTH:
        raise ApiError(400, f"the request body nests deeper than {MAX_JSON_DEPTH} levels", "invalid_json")
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ApiError(400, "the request body is not valid JSON", "invalid_json") from None
    try:
        check_text(data)
    except ValueError as e:
        raise ApiError(400, f"the request body is refused: {e}", "invalid_json") from None
    return data


class JsonBody(BaseModel):
    """A route's JSON body that refuses (422) text which is not valid Unicode before any field is read."""

    @model_validator(mode="before")
    @classmethod
    def _unicode(cls, data: Any) -> Any:
        check_text(data)
        return data


class RateLimiter:
    """Sliding one-minute windows of requests and generated tokens, per client key."""

    def __init__(self, requests_per_minute: int, tokens_per_minute: int, window: float = 60.0) -> None:
        self.rpm, self.tpm, self.window = requests_per_minute, tokens_per_minute, window
        self._requests: dict[str, deque[float]] = {}
        self._tokens: dict[str, deque[tuple[float, int]]] = {}
        self._lock = threading.Lock()

    def _trim(self, key: str, now: float) -> None:
        cutoff = now - self.window
        reqs = self._requests.setdefault(key, deque())
        while reqs and reqs[0] <= cutoff:
            reqs.popleft()
        toks = self._tokens.setdefault(key, deque())
        while toks and toks[0][0] <= cutoff:
            toks.popleft()

    def check(self, key: str) -> None:
        """Count one request, or raise 429 with Retry-After when the client is over either limit."""
        now = time.monotonic()
        with self._lock:
            if len(self._requests) > 10_000:  # forget clients that have been quiet for a whole window
                for k in [k for k in self._requests if k != key]:
                    self._trim(k, now)
                    if not self._requests[k] and not self._tokens[k]:
                        del self._requests[k], self._tokens[k]
            self._trim(key, now)
            reqs, toks = self._requests[key], self._tokens[key]
            if self.rpm and len(reqs) >= self.rpm:
                retry = max(1, int(reqs[0] + self.window - now) + 1)
                raise ApiError(429, f"rate limit: {self.rpm} requests per minute", "rate_limit_exceeded",
                               headers={"Retry-After": str(retry)})
            if self.tpm and sum(n for _, n in toks) >= self.tpm:
                retry = max(1, int(toks[0][0] + self.window - now) + 1)
                raise ApiError(429, f"rate limit: {self.tpm} generated tokens per minute", "rate_limit_exceeded",
                               headers={"Retry-After": str(retry)})
            reqs.append(now)

    def spend(self, key: str, tokens: int) -> None:
        with self._lock:
            self._tokens.setdefault(key, deque()).append((time.monotonic(), tokens))

    def meter(self, key: str) -> TokenMeter:
        return TokenMeter(self, key)


class TokenMeter:
    """Charges a reply's tokens to its client while they are generated, so a reply dropped half way still counts:
    each streamed piece is at least one token (one per token when it carries log-probabilities), and the last
    chunk's count settles the rest."""

    def __init__(self, limiter: RateLimiter, key: str) -> None:
        self.limiter, self.key, self.charged = limiter, key, 0

    def add(self, chunk: Chunk) -> None:
        if chunk.finish_reason is not None:
            n = (chunk.completion_tokens or 0) - self.charged
        else:
            n = len(chunk.logprobs) or (1 if chunk.text else 0)
        if n > 0:
            self.limiter.spend(self.key, n)
            self.charged += n


# The page's own scripts and styles only; nothing may frame it. Pages with stricter needs set their own policy.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
SECURITY_HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY"}


class SecurityHeaders:
    """Adds SECURITY_HEADERS to every response that does not set them itself (pure ASGI: streams pass through)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    headers.setdefault(name, value)
            await send(message)

        await self.app(scope, receive, with_headers)


UNSAFE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}
BROWSER_PATHS = ("/api/", "/review", "/dashboard")  # what a browser changes with its cookies (not /v1: keys)


def cross_site(scope: Scope) -> bool:
    """Whether a browser sent this request from another site: by Sec-Fetch-Site where the browser sends it, else by
    Origin. A request with neither does not come from a browser, so no cookie of a visitor's can be abused by it."""
    headers = Headers(scope=scope)
    site = headers.get("sec-fetch-site")
    if site is not None:
        return site not in ("same-origin", "none")
    origin = headers.get("origin")
    if origin is None:
        return False
    try:
        host = urlsplit(origin).netloc.lower()
    except ValueError:  # not a URL at all
        return True
    # Host only: behind a proxy that ends TLS the server may see http while the page is https. "null" (what a
    # sandboxed or opaque page sends) has no host, so it is refused.
    return host != headers.get("host", "").lower()


class SameOrigin:
    """Refuses (403) a state-changing request to the chat page's, review page's or dashboard's routes from another
    site (a page elsewhere cannot act with a visitor's cookies)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (scope["type"] == "http" and scope["method"] in UNSAFE_METHODS
                and scope["path"].startswith(BROWSER_PATHS) and cross_site(scope)):
            refused = ApiError(403, "cross-site request refused: send it from this site's own pages",
                               "cross_site_request")
            await refused.response()(scope, receive, send)
            return
        await self.app(scope, receive, send)


class BodyCap:
    """Refuses (413) a request body to the chat page's, review page's or dashboard's routes over `limit` bytes,
    without reading more than that: by its Content-Length, or, sent in chunks, as it arrives (what is read is handed
    on unchanged). The API's own route reads its body with `read_body`, which does the same."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(BROWSER_PATHS):
            await self.app(scope, receive, send)
            return
        too_big = ApiError(413, f"request body is larger than {self.limit} bytes", "request_too_large")
        length = dict(scope.get("headers") or []).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.limit:
            await too_big.response()(scope, receive, send)
            return
        messages, size = [], 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            size += len(message.get("body", b""))
            if size > self.limit:
                await too_big.response()(scope, receive, send)
                return
            if not message.get("more_body"):
                break

        async def replay() -> Message:
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)


def secure_cookie(request: Request) -> bool:
    """Whether a cookie set now must be Secure: over https (uvicorn takes the scheme from X-Forwarded-Proto of a
    trusted proxy), and always in public mode, which is served over https."""
    return request.url.scheme == "https" or bool(request.app.state.rt.settings.public)
