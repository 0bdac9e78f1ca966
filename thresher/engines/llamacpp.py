"""Engine for GGUF files with llama-cpp-python: the default, and the fastest decoder on a CPU.

The prompt is rendered with the chat template stored in the GGUF file and handed to llama.cpp as tokens, so prompt
and reply lengths are exact and the KV cache is reused across the turns of a conversation.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from llama_cpp import Llama
from llama_cpp.llama_chat_format import Jinja2ChatFormatter

from thresher.engines import ChatParams, Chunk, EngineError, file_version, normalise

T = TypeVar("T")

# SmolLM2's own template, for GGUF files that carry none.
_CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>'"
    " + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


class LlamaCppEngine:
    def __init__(self, path: str, n_ctx: int = 2048, n_threads: int | None = None) -> None:
        file = Path(path)
        if not file.is_file():
            raise EngineError(f"no GGUF file at {file}")
        try:
            with open(os.devnull, "w") as null, contextlib.redirect_stderr(null):  # llama.cpp's load chatter
                self.llm = Llama(
                    model_path=str(file), n_ctx=n_ctx, n_threads=n_threads or os.cpu_count() or 1, verbose=False,
                    logits_all=False,
                )
        except (ValueError, RuntimeError) as e:
            raise EngineError(f"llama.cpp could not load {file}: {e}") from e
        meta = self.llm.metadata
        vocab = self.llm._model
        self._eos = vocab.token_get_text(self.llm.token_eos()) if self.llm.token_eos() >= 0 else ""
        bos = vocab.token_get_text(self.llm.token_bos()) if self.llm.token_bos() >= 0 else ""
        self._formatter = Jinja2ChatFormatter(
            template=meta.get("tokenizer.chat_template") or _CHATML, eos_token=self._eos, bos_token=bos
        )
        self.model_id = file.stem.split(".")[0] if file.stem.startswith("SmolLM2") else file.stem
        self.version = file_version(file)
        self.n_ctx = n_ctx
        self._worker = _Worker()

    def _prompt(self, messages: Sequence[dict[str, str]], prefix: str = "") -> tuple[list[int], list[str]]:
        res = self._formatter(messages=[dict(m) for m in messages])
        stops = res.stop if isinstance(res.stop, list) else [res.stop] if res.stop else []
        return self.llm.tokenize((res.prompt + prefix).encode("utf-8"), add_bos=False, special=True), stops

    def count_tokens(self, messages: Sequence[dict[str, str]]) -> int:
        return len(self._prompt(messages)[0])

    def last_hidden(self, prompts: Sequence[Sequence[dict[str, str]]], prefix: str = "") -> np.ndarray:
        """The final hidden state (after the last norm) at the last token of each prompt, rendered with the chat
        template and the assistant's turn opened (then `prefix`): one row per prompt."""
        seqs = [self._prompt(m, prefix)[0] for m in prompts]
        for s in seqs:
            if len(s) > self.n_ctx:
                raise EngineError(f"the prompt has {len(s)} tokens; the context holds {self.n_ctx}")
        # One job per prompt: a chat reply waiting in the queue goes between two of them.
        return np.vstack([self._worker.call(self._hidden, [s], priority=1) for s in seqs]) if seqs else np.zeros(
            (0, self.llm.n_embd()), dtype=np.float32)

    def _hidden(self, seqs: list[list[int]]) -> np.ndarray:
        # The chat context itself, with embeddings switched on for the call: no second copy of the model, and
        # faster than a context made in embedding mode with last-token pooling (measured: ~270 vs ~180 tokens/s).
        import llama_cpp

        ctx, width = self.llm._ctx.ctx, self.llm.n_embd()
        out = np.zeros((len(seqs), width), dtype=np.float32)
        llama_cpp.llama_set_embeddings(ctx, True)
        # llama.cpp then outputs every token's state (it says so as an error, once per call: silenced here)
        quiet = logging.getLogger("llama-cpp-python")
        level = quiet.level
        quiet.setLevel(logging.CRITICAL)
        try:
            for i, tokens in enumerate(seqs):
                self.llm.reset()
                self.llm._ctx.kv_cache_clear()
                self.llm.eval(tokens)
                out[i] = np.ctypeslib.as_array(llama_cpp.llama_get_embeddings_ith(ctx, -1), shape=(width,))
        finally:
            quiet.setLevel(level)
            llama_cpp.llama_set_embeddings(ctx, False)
            self.llm.reset()
            self.llm._ctx.kv_cache_clear()
        return out

    def stream_chat(self, messages: Sequence[dict[str, str]], params: ChatParams) -> Iterator[Chunk]:
        tokens, template_stops = self._prompt(messages, params.prefix)
        budget = min(params.max_tokens, self.n_ctx - len(tokens))
        if budget <= 0:
            raise EngineError(f"the prompt has {len(tokens)} tokens; the context holds {self.n_ctx}")
        return self._worker.stream(
            lambda: self._generate(tokens, [*params.stop, *template_stops], budget, params),
            priority=1 if params.background else 0,
        )

    def _generate(self, tokens: list[int], stop: list[str], budget: int, params: ChatParams) -> Iterator[Chunk]:
        text = ""
        finish = "stop"
        if params.seed is not None:
            # A seeded reply must come out the same every time: evaluate the whole prompt afresh, as the first time
            # (llama.cpp's logits for a reused prefix plus a short suffix differ in the last bits, and sampling
            # follows them). Unseeded replies keep reusing the cached prefix.
            self.llm.reset()
        stream = self.llm.create_completion(
            prompt=tokens,
            max_tokens=budget,
            temperature=params.temperature,
            top_p=params.top_p,
            top_k=0,  # temperature, top-p and min-p only: the same sampling as the transformers engine
            min_p=params.min_p,
            stop=stop,
            seed=params.seed if params.seed is not None else int.from_bytes(os.urandom(4), "little"),
            stream=True,
        )
        try:
            for part in stream:
                choice = part["choices"][0]
                if choice["text"]:
                    text += choice["text"]
                    yield Chunk(text=choice["text"])
                if choice.get("finish_reason"):
                    finish = choice["finish_reason"]
        finally:
            stream.close()
        completion = len(self.llm.tokenize(text.encode("utf-8"), add_bos=False)) if text else 0
        yield Chunk(finish_reason=finish, prompt_tokens=len(tokens), completion_tokens=completion)

    def _logprobs_after(self, tokens: list[int]) -> np.ndarray:
        self.llm.eval(tokens)
        logits = np.ctypeslib.as_array(self.llm._ctx.get_logits(), shape=(self.llm.n_vocab(),)).astype(np.float64)
        logits -= logits.max()
        return logits - np.log(np.exp(logits).sum())

    def next_token_probs(
        self, messages: Sequence[dict[str, str]], choices: Sequence[str], prefix: str = ""
    ) -> dict[str, float]:
        res = self._formatter(messages=[dict(m) for m in messages])
        text = res.prompt + prefix
        base = self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)
        seqs: dict[str, list[int]] = {}
        for c in choices:
            full = self.llm.tokenize((text + c).encode("utf-8"), add_bos=False, special=True)
            # Tokenise each choice in context, so it gets the tokens the model would emit after the prefix.
            seq = full[len(base):] if full[: len(base)] == base else self.llm.tokenize(c.encode(), add_bos=False)
            if not seq:
                raise EngineError(f"choice {c!r} is empty after tokenisation")
            seqs[c] = seq
        if len(base) + max(len(s) for s in seqs.values()) > self.n_ctx:
            raise EngineError(f"the prompt has {len(base)} tokens; the context holds {self.n_ctx}")
        return normalise(self._worker.call(self._score, base, seqs, priority=1))

    def _score(self, base: list[int], seqs: dict[str, list[int]]) -> dict[str, float]:
        # Keep the cached prefix this prompt shares with the last one (the judge's rubric, most of every judge
        # prompt) and evaluate only the rest; at least one token, for its logits.
        keep = min(Llama.longest_token_prefix(self.llm._input_ids.tolist(), base), len(base) - 1)
        self.llm.n_tokens = keep
        first = self._logprobs_after(base[keep:])
        scores: dict[str, float] = {}
        for c, seq in seqs.items():
            logp = first[seq[0]]
            for i in range(1, len(seq)):
                self.llm.n_tokens = len(base) + i - 1  # rewind the cache to the prefix, then extend it
                logp += self._logprobs_after([seq[i - 1]])[seq[i]]
            scores[c] = float(np.exp(logp))
        return scores


_END = object()


class _Worker:
    """One long-lived thread that makes every llama.cpp call, one job at a time, chat before background work.

    llama.cpp's OpenMP build keeps a pool of worker threads per calling thread; once two such pools exist on a
    small machine, libgomp stops spin-waiting and decoding runs at about a third of its speed for the life of the
    process (measured with bench/chat.py: ~87 -> ~31 tokens/s on 2 cores). Calling from a single thread avoids it,
    and also serialises requests, which a llama.cpp context needs anyway."""

    def __init__(self) -> None:
        # (priority, arrival, job): chat replies (0) go before background work such as judging (1).
        self._jobs: queue.PriorityQueue[tuple[int, int, Callable[[], None]]] = queue.PriorityQueue()
        self._arrivals = itertools.count()
        threading.Thread(target=self._run, name="llama.cpp", daemon=True).start()

    def _run(self) -> None:
        while True:
            self._jobs.get()[2]()

    def call(self, fn: Callable[..., T], *args: Any, priority: int = 0) -> T:
        """Run fn(*args) on the worker and return its result (or raise its exception)."""
        done, box = threading.Event(), {}

        def job() -> None:
            try:
                box["value"] = fn(*args)
            except BaseException as e:  # handed back to the caller
                box["error"] = e
            finally:
                done.set()

        self._jobs.put((priority, next(self._arrivals), job))
        done.wait()
        if "error" in box:
            raise box["error"]
        return box["value"]

    def stream(self, make: Callable[[], Iterator[T]], priority: int = 0) -> Iterator[T]:
        """Iterate make() on the worker. Closing the returned iterator stops the job at its next item."""
        out: queue.Queue[Any] = queue.Queue()
        stop = threading.Event()

        def job() -> None:
            try:
                gen = make()
                try:
                    for item in gen:
                        out.put(item)
                        if stop.is_set():
                            break
                finally:
                    close = getattr(gen, "close", None)  # a plain iterator has nothing to close
                    if close is not None:
                        close()
            except BaseException as e:  # handed to the reader
                out.put(_Failure(e))
            finally:
                out.put(_END)

        def read() -> Iterator[T]:
            self._jobs.put((priority, next(self._arrivals), job))
            try:
                while (item := out.get()) is not _END:
                    if isinstance(item, _Failure):
                        raise item.error
                    yield item
            finally:
                stop.set()

        return read()


class _Failure:
    def __init__(self, error: BaseException) -> None:
        self.error = error
