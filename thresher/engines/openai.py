"""Engine for any OpenAI-compatible server: vLLM, llama-server, Ollama, a hosted API, or another thresher.

Speaks the Chat Completions protocol over httpx. Next-token probabilities come from `logprobs`/`top_logprobs`
when the server returns them; otherwise `ProbabilitiesUnavailable` tells the caller to generate and parse instead.
A reply asked for with log-probabilities passes on those the server returns; a server that refuses them raises
`ProbabilitiesUnavailable` with its reason.
The API key, if any, is read from THRESHER_OPENAI_API_KEY (or OPENAI_API_KEY) and never stored.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator, Sequence
from typing import Any

import httpx

from thresher.engines import ChatParams, Chunk, EngineError, ProbabilitiesUnavailable, TokenLogprob, normalise


class OpenAIEngine:
    def __init__(self, base_url: str, model: str | None = None, api_key: str | None = None,
                 timeout: float = 600, n_parallel: int = 1) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise EngineError(f"openai engine needs an http(s) URL, got {base_url!r}")
        self.base_url = base_url.rstrip("/")
        # Requests sent to the server at once (the server's admission lets this many write while others queue);
        # the connection pool holds as many.
        self.n_parallel = max(1, n_parallel)
        key = api_key or os.environ.get("THRESHER_OPENAI_API_KEY") or os.environ.get("OPENAI_API_KEY")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        limits = httpx.Limits(max_connections=self.n_parallel + 8, max_keepalive_connections=self.n_parallel)
        self._client = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout, limits=limits)
        if model is None:
            try:
                model = self._first_model()
            except EngineError:
                self._client.close()
                raise
        self.model_id = model
        self.version = f"{model}@{self.base_url}"

    def close(self) -> None:
        self._client.close()

    def _first_model(self) -> str:
        try:
            r = self._client.get("/models")
            r.raise_for_status()
            return r.json()["data"][0]["id"]
        except (httpx.HTTPError, KeyError, IndexError, ValueError) as e:
            raise EngineError(f"could not list models at {self.base_url}/models ({e}); name one as URL#MODEL") from e

    def _body(self, messages: Sequence[dict[str, str]], params: ChatParams) -> dict[str, Any]:
        msgs = list(messages)
        if params.prefix:
            # Continue a started assistant turn (vLLM's and llama-server's continue_final_message).
            msgs.append({"role": "assistant", "content": params.prefix})
        body: dict[str, Any] = {
            "model": self.model_id,
            "messages": msgs,
            "max_tokens": params.max_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
        }
        if params.stop:
            body["stop"] = params.stop
        if params.repetition_penalty != 1.0:
            body["repetition_penalty"] = params.repetition_penalty
        if params.seed is not None:
            body["seed"] = params.seed
        if params.prefix:
            body |= {"continue_final_message": True, "add_generation_prompt": False}
        if params.logprobs is not None:
            body |= {"logprobs": True, "top_logprobs": params.logprobs}
        return body

    def stream_chat(self, messages: Sequence[dict[str, str]], params: ChatParams) -> Iterator[Chunk]:
        body = self._body(messages, params) | {"stream": True, "stream_options": {"include_usage": True}}
        finish: str | None = None
        usage: dict[str, int] = {}
        try:
            with self._client.stream("POST", "/chat/completions", json=body) as r:
                if r.status_code >= 400:
                    r.read()
                    refused = params.logprobs is not None and r.status_code in (400, 422)
                    error = ProbabilitiesUnavailable if refused else EngineError
                    raise error(f"{self.base_url} answered {r.status_code}: {r.text[:500]}")
                for line in r.iter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        break
                    event = json.loads(data)
                    if event.get("usage"):
                        usage = event["usage"]
                    for choice in event.get("choices") or []:
                        text = (choice.get("delta") or {}).get("content") or ""
                        tokens = _tokens(choice.get("logprobs"))
                        if text or tokens:
                            yield Chunk(text=text, logprobs=tokens)
                        finish = choice.get("finish_reason") or finish
        except httpx.HTTPError as e:
            raise EngineError(f"request to {self.base_url} failed: {e}") from e
        yield Chunk(
            finish_reason=finish or "stop",
            prompt_tokens=usage.get("prompt_tokens"),
            completion_tokens=usage.get("completion_tokens"),
        )

    def next_token_probs(
        self, messages: Sequence[dict[str, str]], choices: Sequence[str], prefix: str = ""
    ) -> dict[str, float]:
        body = self._body(messages, ChatParams(max_tokens=1, temperature=0.0, prefix=prefix)) | {
            "logprobs": True, "top_logprobs": 20}
        try:
            r = self._client.post("/chat/completions", json=body)
        except httpx.HTTPError as e:
            raise EngineError(f"request to {self.base_url} failed: {e}") from e
        if r.status_code >= 400:
            raise ProbabilitiesUnavailable(f"{self.base_url} refused a logprobs request ({r.status_code})")
        try:
            top = r.json()["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
        except (KeyError, IndexError, TypeError, ValueError) as e:
            raise ProbabilitiesUnavailable(f"{self.base_url} returned no logprobs") from e
        scores = dict.fromkeys(choices, 0.0)
        for entry in top:
            token = entry["token"].strip()
            if token in scores:
                scores[token] += math.exp(entry["logprob"])
        return normalise(scores)

    def count_tokens(self, messages: Sequence[dict[str, str]]) -> int:
        # Remote servers do not expose their tokenizer; four characters a token is the usual estimate.
        return sum(len(m["content"]) for m in messages) // 4 + 4 * len(messages)


def _tokens(logprobs: Any) -> list[TokenLogprob]:
    """A streamed choice's `logprobs` (OpenAI shape) as TokenLogprobs; nothing when there are none."""
    content = logprobs.get("content") if isinstance(logprobs, dict) else None
    return [TokenLogprob(t["token"], t["logprob"], [(a["token"], a["logprob"]) for a in t.get("top_logprobs") or []])
            for t in content or []]
