"""Engine for GGUF files with llama-cpp-python: the default, and the fastest decoder on a CPU.

The prompt is rendered with the chat template stored in the GGUF file and handed to llama.cpp as tokens, so prompt
and reply lengths are exact.

Replies are decoded by `thresher.engines.scheduler.Scheduler` (continuous batching: see there); the judge's calls
run as exclusive slices on a second context, the `Llama` object's own (embeddings mode cannot share a batch with
chat).

Weights that llama.cpp's CPU kernels cannot batch (Q4_1, the embedded model's: on 2 cores a step of 8 sequences
costs 3.8x a step of one, where 8-bit weights cost 2.8x) are decoded from an 8-bit copy when several sequences are
decoded together: made once from the file (`batch_copy`, in thresher's cache folder), the same weights to within
8-bit rounding. The judge's calls keep reading the file itself, so a judge head trained on its hidden states sees
exactly those; `version` names the file.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Callable, Generator, Iterator, Sequence
from pathlib import Path

import llama_cpp
import numpy as np
from llama_cpp import Llama
from llama_cpp._internals import LlamaContext, LlamaModel
from llama_cpp.llama_chat_format import Jinja2ChatFormatter

from thresher.engines import (
    ChatParams,
    Chunk,
    EngineError,
    file_version,
    normalise,
)
from thresher.engines.scheduler import (
    DEFAULT_PARALLEL,
    N_BATCH,
    Handoff,
    Reply,
    Scheduler,
    piece_length,
)

# SmolLM2's own template, for GGUF files that carry none.
_CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>'"
    " + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# File types whose matrices llama.cpp's CPU kernels multiply a column at a time (no batched kernel): decoding
# several sequences from them costs nearly as much per sequence as decoding one (measured on 2 cores, SmolLM2-135M:
# a step of 8 is 3.8x a step of one for Q4_1, 2.8x for the 8-bit copy). Q4_1 -> Q8_0 loses nothing visible: every
# Q4_1 value is stored again with 255 levels per block of 32.
UNBATCHED_FILE_TYPES = {llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_1: "Q4_1"}

log = logging.getLogger("thresher.engines")


def cache_dir() -> Path:
    """Where thresher keeps what it derives from other files and can make again: $XDG_CACHE_HOME/thresher, else
    ~/.cache/thresher."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "thresher"


def made_once(target: Path, make: Callable[[str], None], what: str) -> Path:
    """`target`, made by `make(tmp)` unless it is there already: written beside it and moved into place, so it is
    whole or absent, and readable by others on the machine (a cache, as the file it derives from). Raises OSError
    when it cannot be written."""
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".making-", suffix=target.suffix)
    os.close(fd)
    try:
        make(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    log.info("made %s: %s", what, target)
    return target


def batch_copy(file: Path, version: str, file_type: int | None) -> Path | None:
    """The 8-bit copy of a GGUF file whose weights do not batch (its `general.file_type`), made once
    (`cache_dir()/gguf/<version>.Q8_0.gguf`, written whole or not at all); None when the file batches as it is.
    Raises OSError when the copy cannot be written."""
    if file_type not in UNBATCHED_FILE_TYPES:
        return None

    def quantize(tmp: str) -> None:
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0
        params.allow_requantize = True
        params.nthread = os.cpu_count() or 1
        with open(os.devnull, "w") as null, contextlib.redirect_stderr(null):
            rc = llama_cpp.llama_model_quantize(str(file).encode(), tmp.encode(), params)
        if rc != 0:
            raise OSError(f"llama.cpp could not write an 8-bit copy of {file} (code {rc})")

    return made_once(cache_dir() / "gguf" / f"{version}.Q8_0.gguf", quantize,
                     f"an 8-bit copy of {file.name} for batched decoding")


class LlamaCppEngine:
    closes_gracefully = True  # close() lets the replies in flight finish (see close)

    def __init__(self, path: str, n_ctx: int = 2048, n_threads: int | None = None,
                 n_parallel: int | None = None, batch_weights: bool = True, version: str | None = None) -> None:
        # `version`: the name of the weights when the file is derived from another (thresher.engines.layers)
        file = Path(path)
        if not file.is_file():
            raise EngineError(f"no GGUF file at {file}")
        threads = n_threads or os.cpu_count() or 1
        self.n_parallel = max(1, n_parallel or DEFAULT_PARALLEL)
        self.version = version or file_version(file)
        self.batch_file: Path | None = None  # what chat is decoded from, when not the file: its 8-bit copy
        try:
            with open(os.devnull, "w") as null, contextlib.redirect_stderr(null):  # llama.cpp's load chatter
                # The Llama object: tokenizer, metadata, and its own context for the judge's exclusive calls.
                self.llm = Llama(model_path=str(file), n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads,
                                 verbose=False, logits_all=False)
                if batch_weights and self.n_parallel > 1:
                    file_type = self.llm.metadata.get("general.file_type")
                    try:
                        self.batch_file = batch_copy(file, self.version,
                                                     int(file_type) if file_type is not None else None)
                    except OSError as e:
                        log.warning("decoding from %s as it is (slower with several replies at once): %s", file, e)
                params = llama_cpp.llama_context_default_params()
                params.n_ctx = n_ctx * self.n_parallel  # every sequence gets n_ctx cells
                params.n_batch = params.n_ubatch = N_BATCH + self.n_parallel
                params.n_seq_max = self.n_parallel
                params.n_threads = params.n_threads_batch = threads
                # One KV stream per sequence: attention reads only its own cells, and a freed sequence's cells
                # are reused from the start (what keeps a seeded reply the same whatever else runs).
                params.kv_unified = False
                # Flash attention: up to ~15% less time a step, at 1 sequence and at 8 (2 cores, measured); with it
                # the cache can be 8-bit, half the memory of 16-bit at the same speed.
                params.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED
                params.type_k = params.type_v = llama_cpp.GGML_TYPE_Q8_0
                params.no_perf = True
                model = self.llm._model
                if self.batch_file is not None:
                    mparams = llama_cpp.llama_model_default_params()
                    model = LlamaModel(path_model=str(self.batch_file), params=mparams, verbose=False)
                    self.llm._stack.enter_context(contextlib.closing(model))  # freed after its context, below
                ctx = LlamaContext(model=model, params=params, verbose=False)
        except (ValueError, RuntimeError) as e:
            raise EngineError(f"llama.cpp could not load {file}: {e}") from e
        self.llm._stack.enter_context(contextlib.closing(ctx))  # freed before the model
        meta = self.llm.metadata
        vocab = self.llm._model
        self._eos = vocab.token_get_text(self.llm.token_eos()) if self.llm.token_eos() >= 0 else ""
        bos = vocab.token_get_text(self.llm.token_bos()) if self.llm.token_bos() >= 0 else ""
        self._formatter = Jinja2ChatFormatter(
            template=meta.get("tokenizer.chat_template") or _CHATML, eos_token=self._eos, bos_token=bos
        )
        self.model_id = file.stem.split(".")[0] if file.stem.startswith("SmolLM2") else file.stem
        self.n_ctx = n_ctx
        self._sched = Scheduler(ctx, vocab.vocab, self.llm.n_vocab(), self.n_parallel, owner=self.llm)

    def close(self) -> None:
        """Stop taking requests; the replies and jobs already taken finish, then the scheduler thread lets go of
        the model and its contexts (freed there, after its last llama.cpp call, never under a running decode).
        An engine dropped without `close` stays loaded: its thread still holds it."""
        self._sched.close()

    def _prompt(self, messages: Sequence[dict[str, str]], prefix: str = "") -> tuple[list[int], list[str]]:
        res = self._formatter(messages=[dict(m) for m in messages])
        stops = res.stop if isinstance(res.stop, list) else [res.stop] if res.stop else []
        return self.llm.tokenize((res.prompt + prefix).encode("utf-8"), add_bos=False, special=True), stops

    def count_tokens(self, messages: Sequence[dict[str, str]]) -> int:
        return len(self._prompt(messages)[0])

    def stream_chat(self, messages: Sequence[dict[str, str]], params: ChatParams) -> Iterator[Chunk]:
        """The reply, piece by piece. While the request waits for a free sequence, chunks with `waiting` set say
        how many are ahead of it; empty chunks now and then let a reader notice that its client has gone.
        Closing the iterator (from the thread reading it) takes the request out of the queue or the batch."""
        return self._sched.submit(self._reply(messages, params))

    def push_chat(self, messages: Sequence[dict[str, str]], params: ChatParams,
                  deliver: Callable[[Chunk | BaseException | None], None]) -> Callable[[], None]:
        """As `stream_chat`, but the chunks are handed to `deliver` on the engine's own thread as they are made (an
        exception if the reply fails, None after the last one), for a reader that is not a thread: no thread
        waits for each piece (the server's event loop takes a step's pieces of every reply at one wake-up). The
        chunks are the same, less the empty ones. Returns what withdraws the request (from any thread)."""
        return self._sched.submit(self._reply(messages, params, Handoff(deliver))).close

    def _reply(self, messages: Sequence[dict[str, str]], params: ChatParams, out: Handoff | None = None) -> Reply:
        tokens, template_stops = self._prompt(messages, params.prefix)
        budget = min(params.max_tokens, self.n_ctx - len(tokens))
        if budget <= 0:
            raise EngineError(f"the prompt has {len(tokens)} tokens; the context holds {self.n_ctx}")
        return Reply(tokens, [*params.stop, *template_stops], budget, params, out)

    def stats(self) -> dict[str, int]:
        """What the engine holds now (replies being written, requests waiting, judging calls) and has done (steps,
        stand-in tokens fed to keep a pass whole, prompt tokens read, prompt tokens found already cached)."""
        return self._sched.stats()

    # ------------------------------------------------------------------------------------------- judging calls

    def last_hidden(self, prompts: Sequence[Sequence[dict[str, str]]], prefix: str = "") -> np.ndarray:
        """The final hidden state (after the last norm) at the last token of each prompt, rendered with the chat
        template and the assistant's turn opened (then `prefix`): one row per prompt."""
        return self._states(prompts, prefix, self.llm)

    def _states(self, prompts: Sequence[Sequence[dict[str, str]]], prefix: str, llm: Llama) -> np.ndarray:
        seqs = [self._prompt(m, prefix)[0] for m in prompts]
        for s in seqs:
            if len(s) > self.n_ctx:
                raise EngineError(f"the prompt has {len(s)} tokens; the context holds {self.n_ctx}")
        # One job per prompt: chat goes between two of them (and between slices of one).
        return np.vstack([self._sched.call(self._hidden(s, llm)) for s in seqs]) if seqs else np.zeros(
            (0, llm.n_embd()), dtype=np.float32)

    def first_layers(self, k: int) -> FirstLayers | LlamaCppEngine:
        """This model's first `k` blocks, for reading a middle layer's state: their own weights (a copy of those
        blocks, thresher.engines.layers), run on this engine's scheduler thread, between chat steps."""
        from thresher.engines.layers import first_layers, layered_version

        arch = self.llm.metadata.get("general.architecture", "")
        if str(k) == self.llm.metadata.get(f"{arch}.block_count"):
            return self  # all of them (read from the loaded model: reading the file's header again takes seconds)
        return FirstLayers(self, first_layers(Path(self.llm.model_path), k, self.version),
                           layered_version(self.version, k))

    def _hidden(self, tokens: list[int], llm: Llama) -> Generator[None, int, np.ndarray]:
        # The Llama object's own context, with embeddings switched on for the last two tokens only: llama.cpp
        # outputs every token's state in embedding mode, and with it every token's logits (the output layer is a
        # fifth of this model's work per token), where the prompt before needs only its cache. Faster than a context
        # made in embedding mode with last-token pooling (measured: ~270 vs ~180 tokens/s). Read in pieces of two or
        # more, the last state is the one read whole.
        ctx, width = llm._ctx.ctx, llm.n_embd()
        body = len(tokens) - 2 if len(tokens) >= 4 else 0
        quiet = logging.getLogger("llama-cpp-python")  # embedding mode's warning that it outputs all: silenced
        level = quiet.level
        try:
            llm.reset()
            llm._ctx.kv_cache_clear()
            done = 0
            while done < len(tokens):
                if done == body:
                    quiet.setLevel(logging.CRITICAL)
                    llama_cpp.llama_set_embeddings(ctx, True)
                end = body if done < body else len(tokens)
                n = piece_length(end - done, (yield))
                llm.eval(tokens[done:done + n])
                done += n
            return np.ctypeslib.as_array(llama_cpp.llama_get_embeddings_ith(ctx, -1), shape=(width,)).copy()
        finally:
            quiet.setLevel(level)
            llama_cpp.llama_set_embeddings(ctx, False)
            llm.reset()
            llm._ctx.kv_cache_clear()

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
        return normalise(self._sched.call(self._score(base, seqs)))

    def _logprobs_now(self) -> np.ndarray:
        logits = np.ctypeslib.as_array(self.llm._ctx.get_logits(), shape=(self.llm.n_vocab(),)).astype(np.float64)
        logits -= logits.max()
        return logits - np.log(np.exp(logits).sum())

    def _score(self, base: list[int], seqs: dict[str, list[int]]) -> Generator[None, int, dict[str, float]]:
        # Keep the cached prefix this prompt shares with the last one (the judge's rubric, most of every judge
        # prompt) and evaluate only the rest; at least one token, for its logits.
        keep = min(Llama.longest_token_prefix(self.llm._input_ids.tolist(), base), len(base) - 1)
        self.llm.n_tokens = keep
        while self.llm.n_tokens < len(base):
            n = piece_length(len(base) - self.llm.n_tokens, (yield))
            self.llm.eval(base[self.llm.n_tokens:self.llm.n_tokens + n])
        first = self._logprobs_now()
        scores: dict[str, float] = {}
        for c, seq in seqs.items():
            logp = first[seq[0]]
            for i in range(1, len(seq)):
                self.llm.n_tokens = len(base) + i - 1  # rewind the cache to the prefix, then extend it
                self.llm.eval([seq[i - 1]])
                logp += self._logprobs_now()[seq[i]]
            scores[c] = float(np.exp(logp))
        self.llm.n_tokens = len(base)  # what the cache holds for the next call's prefix
        return scores


class FirstLayers:
    """A model's first blocks beside the engine that serves the whole model: their own weights and context, their
    calls made on that engine's scheduler thread (one thread for every llama.cpp call: see Scheduler), so reading
    a state waits for chat steps as the engine's own judging calls do. The judge's engine face: `last_hidden`,
    `count_tokens`, `version`; `close` frees them."""

    closes_gracefully = True  # close() waits for the call in flight

    def __init__(self, owner: LlamaCppEngine, path: Path, version: str) -> None:
        try:
            with open(os.devnull, "w") as null, contextlib.redirect_stderr(null):
                self.llm = Llama(model_path=str(path), n_ctx=owner.n_ctx, n_threads=owner.llm.n_threads,
                                 n_threads_batch=owner.llm.n_threads_batch, verbose=False, logits_all=False)
        except (ValueError, RuntimeError) as e:
            raise EngineError(f"llama.cpp could not load {path}: {e}") from e
        self.owner, self.version, self.n_ctx = owner, version, owner.n_ctx
        self.model_id = f"{owner.model_id} (first layers)"

    def count_tokens(self, messages: Sequence[dict[str, str]]) -> int:
        return self.owner.count_tokens(messages)  # the same tokenizer

    def _prompt(self, messages: Sequence[dict[str, str]], prefix: str = "") -> tuple[list[int], list[str]]:
        return self.owner._prompt(messages, prefix)

    def last_hidden(self, prompts: Sequence[Sequence[dict[str, str]]], prefix: str = "") -> np.ndarray:
        """The state after these blocks (and the model's last norm) at each prompt's last token: as
        `LlamaCppEngine.last_hidden`."""
        return self.owner._states(prompts, prefix, self.llm)

    def close(self) -> None:
        """Free the blocks' weights, on the scheduler thread (never under a call in flight), or here when the
        engine is closed already."""
        try:
            self.owner._sched.call(self._free())
        except EngineError:
            self.llm.close()

    def _free(self) -> Generator[None, int, None]:
        self.llm.close()
        return
        yield  # a job for the scheduler thread
