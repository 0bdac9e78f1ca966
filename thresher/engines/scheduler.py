"""The scheduler behind the llama.cpp engine: continuous batching, as llama.cpp's own server (`-np`) and vLLM do it.

One thread, the scheduler, makes every llama.cpp call. Its context holds `n_parallel` sequences, each with `n_ctx`
cells of KV cache of its own. A step reads the next pieces of the prompts being read, within a token budget
(PREFILL_CHUNK tokens while replies are being written, so a long prompt does not stall them; up to N_BATCH when none
are), then feeds the next token of every reply being written in one `llama_decode`; each reply whose last token was fed
draws its next one from the logits (numpy: temperature, min-p, top-p, one random generator per reply). Requests join
between steps as sequences free up, and leave at the next step once their reader closes the stream (their cells are
freed). A finished reply's cells stay cached: a later prompt that begins the same way (the next turn of that
conversation) is read only from where it differs. A prompt's last token is read in the decoding pass, so a new
reply joins the batch in the step that finishes its prompt. A seeded (or greedy) reply reads the rest of its prompt
as if afresh, in pieces of two tokens or more, so it comes out the same every time, alone or among others
(llama.cpp's result for a sequence does not depend on what else is in the pass, but it does on whether a pass holds
one of its tokens or several).

Chat comes first. Background replies (`ChatParams.background`: judging) take at most a quarter of the sequences and
only when no chat waits. Exclusive jobs (the judge's `next_token_probs` and `last_hidden`, on the engine's second
context) get at most BG_SHARE of the time while chat is being served, and all of it otherwise.
"""

from __future__ import annotations

import codecs
import contextlib
import ctypes
import itertools
import logging
import math
import queue
import threading
import time
from collections.abc import Callable, Generator, Sequence
from typing import Any

import llama_cpp
import numpy as np
from llama_cpp import Llama
from llama_cpp._internals import LlamaContext

from thresher.engines import (
    ChatParams,
    Chunk,
    EngineError,
    TokenLogprob,
    penalised,
    split_stop,
)

DEFAULT_PARALLEL = 8  # sequences decoded together on a CPU (2 cores, 8-bit weights: a step of 8 ~34 ms, of one ~12)
N_BATCH = 512  # most prompt tokens one step reads when no reply is decoding
PREFILL_CHUNK = 128  # ... and while some are: about 0.4 s of a 2-core CPU, the longest pause a stream sees
BG_SHARE = 0.2  # background work's share of the time while chat is being served
BG_SLICE = 64  # background prompt tokens per slice while chat is being served (~0.2 s on 2 cores)
BG_SLICE_IDLE = 128  # ... and otherwise: a chat arriving waits for at most one slice
REUSE_MIN = 64  # cached prompt tokens worth taking a sequence out of line for (~0.2 s of reading on 2 cores)
HEARTBEAT_S = 0.25  # a waiting reader wakes this often, so a client that left is noticed while its request waits
MAX_LOGPROBS = 20  # most alternatives reported per token (OpenAI's limit)



# ----------------------------------------------------------------------------------------------------- replies


class Reply:
    """One chat request: its prompt, where it stands in its sequence, its sampler, and the text it has produced,
    handed to its reader through `out`."""

    _arrivals = itertools.count()

    def __init__(self, prompt: list[int], stops: list[str], budget: int, params: ChatParams,
                 out: Any = None) -> None:
        self.prompt, self.budget, self.params = prompt, budget, params
        self.stops = [s for s in stops if s]
        self.background = params.background
        self.arrival = next(self._arrivals)
        self.rng = np.random.default_rng(None if params.seed is None else params.seed % 2**64)
        self.n_top = None if params.logprobs is None else max(0, min(params.logprobs, MAX_LOGPROBS))
        # Where its chunks go (then an exception if it fails, then _END): a queue its reader's thread waits on,
        # or anything else with a `put` (see `Handoff`)
        self.out: Any = queue.SimpleQueue() if out is None else out
        self.closed = False  # the reader has gone
        self.slot: int | None = None
        self.pending: list[int] = []  # tokens to feed next: the rest of the prompt, or the last token drawn
        self.n_past = 0  # tokens in this sequence's cells
        self.decoding = False  # the prompt is read; each step feeds one token
        self.generated = 0
        self.tokens: list[int] = []  # the reply's tokens so far (the repetition penalty reads the last of them)
        self.decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self.text = ""  # the reply decoded so far
        self.emitted = 0  # characters of it handed out
        # [start, end, entry] per token while logprobs are asked; end None until the token's text is complete
        self.lps: list[list[Any]] = []
        self.ahead: int | None = None  # the queue position last told

    def take_lps(self, upto: int, straddling: bool = False) -> list[TokenLogprob]:
        """The tokens whose text lies within the first `upto` characters (or, `straddling`, begins there)."""
        n = 0
        for start, end, _ in self.lps:
            if not (end is not None and end <= upto or straddling and start < upto):
                break
            n += 1
        taken, self.lps = [e for _, _, e in self.lps[:n]], self.lps[n:]
        return taken


class Stream:
    """The reader's side of a reply: an iterator over its chunks. `close()` withdraws the request."""

    def __init__(self, sched: Scheduler, reply: Reply) -> None:
        self._sched, self._reply, self._done = sched, reply, False

    def __iter__(self) -> Stream:
        return self

    def __next__(self) -> Chunk:
        if self._done:
            raise StopIteration
        try:
            item = self._reply.out.get(timeout=HEARTBEAT_S)
        except queue.Empty:
            return Chunk()  # nothing yet: a chance for the reader to see that its client has gone
        if item is _END:
            self._done = True
            raise StopIteration
        if isinstance(item, BaseException):
            self._done = True
            raise item
        return item

    def close(self) -> None:
        if not self._done:
            self._done = True
            self._sched.withdraw(self._reply)

    def __del__(self) -> None:  # a reader that dropped the stream without closing it
        with contextlib.suppress(Exception):
            self.close()


_END = object()


class Handoff:
    """`Reply.out` for a reader that is not a thread waiting on a queue (an event loop): each chunk goes to
    `deliver` on the scheduler's thread as it is made, then an exception if the reply failed, then None."""

    __slots__ = ("deliver",)

    def __init__(self, deliver: Callable[[Chunk | BaseException | None], None]) -> None:
        self.deliver = deliver

    def put(self, item: Any) -> None:
        self.deliver(None if item is _END else item)


class Job:
    """An exclusive piece of background work: a generator that does at most n tokens of work per `send(n)`."""

    def __init__(self, gen: Generator[None, int, Any]) -> None:
        self.gen, self.started, self.finished = gen, False, False
        self.done = threading.Event()
        self.value: Any = None
        self.error: BaseException | None = None


# --------------------------------------------------------------------------------------------------- scheduler


class Scheduler:
    """The one thread that makes llama.cpp calls: admits requests into sequences, runs steps, samples, and runs
    background jobs in slices between steps.

    Why one thread: llama.cpp's OpenMP build keeps a pool of worker threads per calling thread; once two such pools
    exist on a small machine, libgomp stops spin-waiting and decoding runs at about a third of its speed for the
    life of the process (measured with bench/chat.py: ~87 -> ~31 tokens/s on 2 cores). A llama.cpp context must be
    used from one thread at a time anyway."""

    def __init__(self, ctx: LlamaContext, vocab: Any, n_vocab: int, n_parallel: int, owner: Any = None) -> None:
        self.ctx, self.vocab, self.n_vocab, self.n_parallel = ctx, vocab, n_vocab, n_parallel
        # The Llama object whose model and contexts this thread uses: held here, so that dropping the engine
        # while a reply is being decoded cannot free them under the decode (llama.cpp would crash).
        self.owner = owner
        self.closing = False
        self.mem = llama_cpp.llama_get_memory(ctx.ctx)
        self.bg_slots = max(1, n_parallel // 4)
        cap = N_BATCH + n_parallel
        self.batch = llama_cpp.llama_batch_init(cap, 0, 1)
        self._tok = np.ctypeslib.as_array(self.batch.token, shape=(cap,))
        self._pos = np.ctypeslib.as_array(self.batch.pos, shape=(cap,))
        self._out = np.ctypeslib.as_array(self.batch.logits, shape=(cap,))
        np.ctypeslib.as_array(self.batch.n_seq_id, shape=(cap,))[:] = 1
        self._seq = [self.batch.seq_id[i] for i in range(cap)]
        self.slots: list[Reply | None] = [None] * n_parallel
        self.cached: list[list[int]] = [[] for _ in range(n_parallel)]  # the tokens in each sequence's cells
        self.exact = [0] * n_parallel  # ... how many of them, from the start, were read in pieces of two or more
        self.waiting: list[Reply] = []  # chat first, then by arrival
        self.jobs: list[Job] = []
        self.cv = threading.Condition()
        self.bg_next = 0.0  # background work may run, while chat is served, from this time on
        self.steps = self.prompt_tokens = self.cached_tokens = self.stand_ins = 0
        self._pieces: dict[tuple[int, bool], bytes] = {}
        self._eog: dict[int, bool] = {}
        # Chunks for the readers, handed out together at the end of a step: the threads they wake then run while
        # the next step computes, not between this step's llama.cpp calls (each of which lets go of the GIL).
        self._outbox: list[tuple[queue.SimpleQueue[Any], Any]] = []
        threading.Thread(target=self._run, name="llama.cpp", daemon=True).start()

    # --- called from other threads

    def submit(self, reply: Reply) -> Stream:
        with self.cv:
            if self.closing:
                raise EngineError("this engine was closed (another model serves now)")
            self.waiting.append(reply)
            self.waiting.sort(key=lambda r: (r.background, r.arrival))
            self.cv.notify()
        return Stream(self, reply)

    def withdraw(self, reply: Reply) -> None:
        with self.cv:
            reply.closed = True
            self.cv.notify()

    def call(self, gen: Generator[None, int, Any]) -> Any:
        """Run a job (a generator, see Job) on the scheduler thread; return its value or raise its error."""
        job = Job(gen)
        with self.cv:
            if self.closing:
                raise EngineError("this engine was closed (another model serves now)")
            self.jobs.append(job)
            self.cv.notify()
        job.done.wait()
        if job.error is not None:
            raise job.error
        return job.value

    def close(self) -> None:
        with self.cv:
            self.closing = True
            self.cv.notify()

    def stats(self) -> dict[str, int]:
        with self.cv:
            return {"running": sum(r is not None for r in self.slots), "waiting": len(self.waiting),
                    "jobs": len(self.jobs), "steps": self.steps, "stand_ins": self.stand_ins,
                    "prompt_tokens": self.prompt_tokens, "cached_tokens": self.cached_tokens}

    # --- the scheduler thread

    def _run(self) -> None:
        while True:
            with self.cv:
                while not (self.waiting or self.jobs or any(self.slots)):
                    if self.closing:  # idle and closed: let go of the model here, after the last call
                        llama_cpp.llama_batch_free(self.batch)
                        self.ctx = self.owner = None
                        return
                    self.cv.wait()
                self._sweep()
                self._admit()
                for i, r in enumerate(self.waiting):
                    if r.ahead != i:
                        r.ahead = i
                        r.out.put(Chunk(waiting=i))
                chat = any(not r.background for r in self.waiting) or any(
                    r is not None and not r.background for r in self.slots)
            try:
                stepped = self._step(chat)
                ran = bool(self.jobs) and (not chat or time.monotonic() >= self.bg_next) and self._slice(chat)
            except Exception as e:  # a failed step fails the replies in it, not the engine
                logging.getLogger("thresher.engines").exception("llama.cpp step failed")
                self._fail_active(e)
                continue
            if not stepped and not ran:  # only background work is left, and it must wait its turn
                with self.cv:
                    self.cv.wait(timeout=max(0.005, self.bg_next - time.monotonic()))

    def _sweep(self) -> None:
        """Drop requests whose readers have gone: from the queue, and from the batch with their cells."""
        self.waiting = [r for r in self.waiting if not r.closed]
        for r in self.slots:
            if r is not None and r.closed:
                self._free(r, forget=True)

    def _admit(self) -> None:
        while self.waiting and None in self.slots:
            r = self.waiting[0]
            if r.background and sum(s is not None and s.background for s in self.slots) >= self.bg_slots:
                return  # everything behind it is background too
            self.waiting.pop(0)
            free = [i for i, s in enumerate(self.slots) if s is None]
            # What each free sequence could lend this prompt. A reproducible reply (seeded, or greedy) takes only
            # cells that were read as a prompt (in pieces of two or more: the same cells as reading afresh), and
            # reads three tokens at least (a piece of two, then the last alone in the decoding pass, as every
            # prompt's last), so it comes out the same every time; any other takes the whole prefix.
            seeded = r.params.seed is not None or r.params.temperature <= 0
            common = {i: min(Llama.longest_token_prefix(self.cached[i], r.prompt),
                             self.exact[i] if seeded else len(r.prompt),
                             len(r.prompt) - (3 if seeded else 1)) for i in free}
            # The lowest free sequence: llama.cpp decodes a run of consecutive sequence ids in one pass, so the
            # busy ones are kept together (sequences 0-3 and 5-7 busy cost two passes a step, ~30% more time) ...
            slot = free[0]
            best = max(free, key=lambda i: (common[i], -i))
            if common[best] >= common[slot] + REUSE_MIN:  # ... unless another holds much more of this prompt
                slot = best
            keep = max(0, common[slot])
            llama_cpp.llama_memory_seq_rm(self.mem, slot, keep, -1)
            del self.cached[slot][keep:]
            self.exact[slot] = min(self.exact[slot], keep)
            self.prompt_tokens += len(r.prompt)
            self.cached_tokens += keep
            r.slot, r.n_past, r.pending = slot, keep, r.prompt[keep:]
            self.slots[slot] = r

    def _step(self, chat: bool) -> bool:
        """One step: pieces of the prompts being read, each in a llama_decode of its own (llama.cpp would run them
        as passes of their own anyway), then the next token of every reply being written in one llama_decode, and
        the last token of each prompt whose rest is read: a new reply joins the batch in the step that finishes its
        prompt, so the sequences in the pass stay consecutive (a gap in them costs a second pass: a step of 7
        sequences with one missing in the middle took ~50 ms, of all 8 ~38 ms). Each reply whose last fed token had
        its logits computed draws its next token."""
        active = sorted((r for r in self.slots if r is not None), key=lambda r: (r.background, r.arrival))
        budget = PREFILL_CHUNK if any(r.decoding for r in active) else N_BATCH
        bg_ok = not chat or time.monotonic() >= self.bg_next
        pieces = []
        for r in active:
            body = len(r.pending) - 1  # a prompt's last token is read in the decoding pass, alone (see _admit)
            if r.decoding or body <= 0 or budget <= 0 or (r.background and not bg_ok):
                continue
            n = piece_length(body, min(budget, BG_SLICE) if r.background and chat else budget)
            pieces.append((r, r.pending[:n]))
            budget -= n
        if not pieces and not any(r.decoding or len(r.pending) == 1 for r in active):
            return False
        try:
            for r, tokens in pieces:
                start = time.monotonic()
                self._decode([(r, tokens)])
                if chat and r.background:
                    self._bg_spent(time.monotonic() - start)
            decoding = sorted((r for r in active if r.decoding or len(r.pending) == 1),
                              key=lambda r: r.slot)  # consecutive sequences: one pass
            if decoding:
                self._decode([(r, r.pending) for r in decoding], self._gaps(decoding))
        finally:
            self._flush()
        self.steps += 1
        return True

    def _flush(self) -> None:
        for out, item in self._outbox:
            out.put(item)
        self._outbox.clear()

    def _gaps(self, decoding: list[Reply]) -> list[int]:
        """The sequences between the first and the last of those decoding that do not decode this step (free, or
        reading a prompt): llama.cpp decodes a run of consecutive sequences in one pass and splits a run with a
        hole in it into two (7 of 8 sequences, one missing in the middle: ~50 ms a step against ~38 for all 8,
        measured). A token fed to each of them, and taken out again at once, keeps the run whole for the cost of
        one more token (what replies are finishing and joining leave all the time under load)."""
        busy = {r.slot for r in decoding}
        lo, hi = decoding[0].slot, decoding[-1].slot
        assert lo is not None and hi is not None
        return [slot for slot in range(lo, hi) if slot not in busy]

    def _decode(self, items: list[tuple[Reply, list[int]]], fill: Sequence[int] = ()) -> None:
        """Feed each reply its tokens in one llama_decode (and a stand-in token to each sequence in `fill`, taken
        out after); a reply whose pending tokens are all fed then draws its next one from the logits of its
        last."""
        n, outputs = 0, []
        # In the order of the sequences: llama.cpp takes a batch's sequences into one pass only while each comes
        # right after the one before (a stand-in put last split the pass in two again, measured)
        entries = sorted([(r.slot, r, tokens) for r, tokens in items] + [(slot, None, [0]) for slot in fill],
                         key=lambda e: e[0])
        for slot, r, tokens in entries:
            k = len(tokens)
            start = r.n_past if r is not None else len(self.cached[slot])  # a stand-in: after the last cell
            self._tok[n:n + k] = tokens
            self._pos[n:n + k] = np.arange(start, start + k)
            self._out[n:n + k] = 0
            for j in range(n, n + k):
                self._seq[j][0] = slot
            if r is not None and k == len(r.pending):
                self._out[n + k - 1] = 1
                outputs.append((r, n + k - 1))
            n += k
        self.batch.n_tokens = n
        self.stand_ins += len(fill)
        rc = llama_cpp.llama_decode(self.ctx.ctx, self.batch)
        for slot in fill:
            end = len(self.cached[slot])
            llama_cpp.llama_memory_seq_rm(self.mem, slot, end, end + 1)
        if rc != 0:
            raise EngineError(f"llama_decode failed ({rc})")
        for r, tokens in items:
            slot = r.slot
            assert slot is not None
            if len(tokens) >= 2 and self.exact[slot] == r.n_past:
                self.exact[slot] += len(tokens)
            r.n_past += len(tokens)
            self.cached[slot].extend(tokens)
            del r.pending[: len(tokens)]
        if outputs:  # one row per output, in the batch's order: one call for all of them
            rows = np.ctypeslib.as_array(llama_cpp.llama_get_logits(self.ctx.ctx), shape=(len(outputs), self.n_vocab))
            for (r, _), logits in zip(outputs, rows, strict=True):
                self._advance(r, logits)

    def _slice(self, chat: bool) -> bool:
        """Run the first background job for one slice."""
        job = self.jobs[0]
        start = time.monotonic()
        try:
            if not job.started:
                job.started = True
                next(job.gen)
            job.gen.send(BG_SLICE if chat else BG_SLICE_IDLE)
        except StopIteration as stop:
            job.value, job.finished = stop.value, True
        except Exception as e:  # handed back to the caller
            job.error, job.finished = e, True
        if job.finished:
            with self.cv:
                self.jobs.pop(0)
            job.done.set()
        if chat:
            self._bg_spent(time.monotonic() - start)
        return True

    def _bg_spent(self, seconds: float) -> None:
        self.bg_next = time.monotonic() + seconds * (1 - BG_SHARE) / BG_SHARE

    # --- a reply's tokens and text

    def _piece(self, token: int, special: bool = False) -> bytes:
        key = (token, special)
        piece = self._pieces.get(key)
        if piece is None:
            buf = ctypes.create_string_buffer(64)
            n = llama_cpp.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, special)
            if n < 0:
                buf = ctypes.create_string_buffer(-n)
                n = llama_cpp.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, special)
            piece = self._pieces[key] = buf.raw[:n]
        return piece

    def _shown(self, token: int) -> str:
        """A token as logprobs show it: control tokens by name, half a character as its bytes (as OpenAI does)."""
        return self._piece(token, special=True).decode("utf-8", "backslashreplace")

    def _advance(self, r: Reply, logits: np.ndarray) -> None:
        token = sample(penalised(logits.copy(), r.tokens, r.params.repetition_penalty)
                       if r.params.repetition_penalty != 1.0 else logits, r.params, r.rng)
        r.tokens.append(token)
        eog = self._eog.get(token)
        if eog is None:
            eog = self._eog[token] = bool(llama_cpp.llama_vocab_is_eog(self.vocab, token))
        if eog:
            self._finish(r, "stop")
            return
        r.generated += 1
        if r.n_top is not None:
            start = len(r.text)
            r.lps.append([start, None, logprob_entry(logits, token, r.n_top, self._shown)])
        r.text += r.decoder.decode(self._piece(token))
        if r.n_top is not None and not r.decoder.getstate()[0]:  # no half character held: these are complete
            for entry in r.lps:
                if entry[1] is None:
                    entry[1] = len(r.text)
        safe, hit, _held = split_stop(r.text[r.emitted:], r.stops)
        upto = r.emitted + len(safe)
        if hit:
            self._emit(r, upto, straddling=True)
            self._finish(r, "stop", flush=False)
            return
        self._emit(r, upto)
        if r.generated >= r.budget:
            self._finish(r, "length")
            return
        r.pending, r.decoding = [token], True

    def _emit(self, r: Reply, upto: int, straddling: bool = False) -> None:
        if upto > r.emitted:
            text, r.emitted = r.text[r.emitted:upto], upto
            self._outbox.append((r.out, Chunk(text=text, logprobs=r.take_lps(upto, straddling)
                                              if r.n_top is not None else [])))

    def _finish(self, r: Reply, reason: str, flush: bool = True) -> None:
        if flush:  # text held back for a stop string that never came, and any half character
            r.text += r.decoder.decode(b"", final=True)
            for entry in r.lps:
                entry[1] = len(r.text) if entry[1] is None else entry[1]
            self._emit(r, len(r.text))
        # Tokens that straddle a stop string, whose visible part was already handed out, come with the last chunk.
        rest = r.take_lps(r.emitted, straddling=True) if r.n_top is not None else []
        self._outbox.append((r.out, Chunk(finish_reason=reason, prompt_tokens=len(r.prompt),
                                          completion_tokens=r.generated, logprobs=rest)))
        self._outbox.append((r.out, _END))
        self._free(r)

    def _free(self, r: Reply, forget: bool = False) -> None:
        """Give a reply's sequence back. Its cells stay cached for a prompt that begins the same way, unless the
        request was withdrawn (`forget`)."""
        slot = r.slot
        if slot is None or self.slots[slot] is not r:
            return
        self.slots[slot] = None
        if forget:
            llama_cpp.llama_memory_seq_rm(self.mem, slot, -1, -1)
            self.cached[slot], self.exact[slot] = [], 0

    def _fail_active(self, error: BaseException) -> None:
        failure = error if isinstance(error, EngineError) else EngineError(f"llama.cpp failed: {error}")
        self._flush()  # what was written before the failure comes first
        with self.cv:
            for r in self.slots:
                if r is not None:
                    r.out.put(failure)
                    r.out.put(_END)
                    self._free(r, forget=True)


def piece_length(pending: int, budget: int) -> int:
    """How much of a prompt to read in one piece: up to `budget` tokens, but never a piece of one token, nor a
    rest of one. llama.cpp computes a sequence's lone token in a pass (as when decoding) in another order than
    two or more (measured: logits differ by up to 0.5), so a seeded prompt read in pieces of two or more comes out
    exactly as when read whole, whatever the load."""
    n = min(pending, max(budget, 2))
    return n - 1 if pending - n == 1 and n > 2 else n + 1 if pending - n == 1 else n


# ----------------------------------------------------------------------------------------------------- sampling


def sample(logits: np.ndarray, params: ChatParams, rng: np.random.Generator) -> int:
    """Draw the next token as the transformers engine does: temperature, then min-p (tokens less likely than
    min_p x the likeliest), then top-p (the smallest set reaching top_p); no top-k. Ties go to the lower id."""
    if params.temperature <= 0:
        return int(np.argmax(logits))
    # min-p on the raw logits (z >= z_max + log(min_p) is x >= x_max + T log(min_p)): only the few tokens it keeps
    # are scaled and exponentiated, not the whole vocabulary, a step's largest cost outside llama.cpp
    top = float(logits.max())
    ids = (np.flatnonzero(logits >= top + params.temperature * math.log(min(params.min_p, 1.0)))
           if params.min_p > 0 else np.arange(len(logits)))
    z = logits[ids].astype(np.float64) / params.temperature
    p = np.exp(z - top / params.temperature)
    order = np.argsort(-p, kind="stable")
    ids, p = ids[order], p[order] / p.sum()
    if params.top_p < 1.0:
        keep = max(1, int(np.count_nonzero(np.cumsum(p) - p < params.top_p)))  # always the likeliest
        ids, p = ids[:keep], p[:keep] / p[:keep].sum()
    cdf = np.cumsum(p)
    return int(ids[min(int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right")), len(ids) - 1)])


def logprob_entry(logits: np.ndarray, token: int, n_top: int, shown: Callable[[int], str]) -> TokenLogprob:
    """The chosen token's log-probability under the model (before temperature and filtering, as OpenAI and vLLM
    report it) and the n_top likeliest tokens at that step."""
    x = logits.astype(np.float64)
    top = x.max()
    lse = top + math.log(np.exp(x - top).sum())
    alternatives: list[tuple[str, float]] = []
    if n_top:
        best = np.argpartition(-x, n_top)[:n_top]
        best = best[np.argsort(-x[best], kind="stable")]
        alternatives = [(shown(int(i)), float(x[i] - lse)) for i in best]
    return TokenLogprob(token=shown(token), logprob=float(x[token] - lse), top=alternatives)
