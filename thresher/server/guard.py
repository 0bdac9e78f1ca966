"""What stands between the public and the model: errors in the OpenAI shape, who a client is (a salted hash, never
the address), API keys, the admin token, body-size caps and per-client rate limits."""

from __future__ import annotations

import hashlib
import hmac
import threading
import time
from collections import deque

from fastapi import Request
from fastapi.responses import JSONResponse


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
        return {"error": {"message": self.message, "type": self.TYPES.get(self.status, "server_error"),
                          "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def salted_hash(salt: str, value: str) -> str:
    return hashlib.sha256(f"{salt}\x00{value}".encode()).hexdigest()[:32]


def client_hash(request: Request, salt: str) -> str:
    """Who the client is, for stitching and rate limits, without keeping the address itself."""
    host = request.client.host if request.client else "unknown"
    return salted_hash(salt, f"addr:{host}")


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
    if not any(hmac.compare_digest(token, k) for k in keys):
        raise ApiError(401, "invalid API key", "invalid_api_key")
    return token


def check_admin(request: Request, admin_token: str | None) -> None:
    if not admin_token:
        raise ApiError(403, "admin routes are off: set THRESHER_ADMIN_TOKEN to use them", "admin_disabled")
    token = bearer(request)
    if token is None or not hmac.compare_digest(token, admin_token):
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
