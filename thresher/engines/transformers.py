"""Engine for any Hugging Face model or local directory, with transformers on CPU or GPU.

This is also how a GGUF file is loaded for training (dequantised to full precision). Decoding is a plain loop over
the KV cache, so stop strings, seeds and closing the stream mid-reply behave exactly as in the other engines; asked
for log-probabilities, it reports those of the model's own distribution (before temperature and truncation, as
OpenAI's API does) with each piece of text they make up.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from thresher.engines import (
    ChatParams,
    Chunk,
    EngineError,
    TokenLogprob,
    file_version,
    normalise,
    penalised,
    split_stop,
)


class TransformersEngine:
    def __init__(self, target: str, n_ctx: int = 2048) -> None:
        path = Path(target)
        try:
            if target.endswith(".gguf"):
                if not path.is_file():
                    raise EngineError(f"no GGUF file at {path}")
                self.tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
                self.model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name)
                self.model_id = path.name.removesuffix(".gguf")
                self.version = file_version(path)
            else:
                self.tokenizer = AutoTokenizer.from_pretrained(target)
                self.model = AutoModelForCausalLM.from_pretrained(target)
                self.model_id = path.name if path.is_dir() else target
                commit = getattr(self.model.config, "_commit_hash", None)
                self.version = f"{self.model_id}@{commit[:12]}" if commit else self.model_id
        except EngineError:
            raise
        except Exception as e:  # transformers raises many kinds; the user needs the reason, not the type
            raise EngineError(f"transformers could not load {target!r}: {e}") from e
        self._setup(n_ctx)

    @classmethod
    def from_model(cls, model: object, tokenizer: object, version: str, n_ctx: int = 2048) -> TransformersEngine:
        """An engine over a model already in memory (a model being trained, before and after its adapter)."""
        self = cls.__new__(cls)
        self.model, self.tokenizer, self.model_id, self.version = model, tokenizer, version, version
        self._setup(n_ctx)
        return self

    def _setup(self, n_ctx: int) -> None:
        self.model.eval()
        self.n_ctx = n_ctx
        self._lock = threading.Lock()  # one forward pass at a time: the model is shared across requests
        eos = self.model.generation_config.eos_token_id
        eos_ids = eos if isinstance(eos, list) else [eos]
        self._eos = {i for i in [*eos_ids, self.tokenizer.eos_token_id] if i is not None}

    def _ids(self, messages: Sequence[dict[str, str]], prefix: str = "") -> list[int]:
        text = self.tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=False)
        return self.tokenizer(text + prefix, add_special_tokens=False)["input_ids"]

    def count_tokens(self, messages: Sequence[dict[str, str]]) -> int:
        return len(self._ids(messages))

    def stream_chat(self, messages: Sequence[dict[str, str]], params: ChatParams) -> Iterator[Chunk]:
        ids = self._ids(messages, params.prefix)
        budget = min(params.max_tokens, self.n_ctx - len(ids))
        if budget <= 0:
            raise EngineError(f"the prompt has {len(ids)} tokens; the context holds {self.n_ctx}")
        gen = torch.Generator().manual_seed(params.seed if params.seed is not None else torch.seed())
        out: list[int] = []
        logprobs = _Logprobs(self.tokenizer, params.logprobs)
        emitted = ""
        finish, hit = "length", False
        with self._lock, torch.inference_mode():
            past = None
            step_input = torch.tensor([ids])
            for _ in range(budget):
                res = self.model(input_ids=step_input, cache=past, use_cache=True)
                past = res.cache
                logits = res.logits[0, -1].float()
                token = _sample(penalised(logits.clone(), out, params.repetition_penalty)
                                if params.repetition_penalty != 1.0 else logits, params, gen)
                if token in self._eos:
                    finish = "stop"
                    break
                out.append(token)
                logprobs.add(logits, token)
                step_input = torch.tensor([[token]])
                text = self.tokenizer.decode(out, skip_special_tokens=True)
                if text.endswith("\ufffd"):  # half of a multi-byte character: wait for the rest
                    continue
                safe, hit, _held = split_stop(text, params.stop)
                if len(safe) > len(emitted):
                    yield Chunk(text=safe[len(emitted):], logprobs=logprobs.take(len(safe)))
                    emitted = safe
                if hit:
                    finish = "stop"
                    break
        if not hit:
            # Flush text held back for a stop string that never came.
            text = self.tokenizer.decode(out, skip_special_tokens=True)
            if len(text) > len(emitted):
                yield Chunk(text=text[len(emitted):], logprobs=logprobs.take(len(text)))
        yield Chunk(finish_reason=finish, prompt_tokens=len(ids), completion_tokens=len(out))

    def last_hidden(self, prompts: Sequence[Sequence[dict[str, str]]], prefix: str = "") -> Any:
        """The last layer's state (after its norm) at the last token of each prompt, one numpy row per prompt."""
        import numpy as np

        rows = []
        with self._lock, torch.inference_mode():
            for messages in prompts:
                res = self.model(input_ids=torch.tensor([self._ids(messages, prefix)]), output_hidden_states=True)
                rows.append(res.hidden_states[-1][0, -1].float().numpy())
        return np.vstack(rows) if rows else np.zeros((0, self.model.config.hidden_size), dtype=np.float32)

    def next_token_probs(
        self, messages: Sequence[dict[str, str]], choices: Sequence[str], prefix: str = ""
    ) -> dict[str, float]:
        ids = self._ids(messages, prefix)
        base_text = self.tokenizer.decode(ids)
        seqs = {}
        for c in choices:
            full = self.tokenizer(base_text + c, add_special_tokens=False)["input_ids"]
            # Tokenise the choice in context, so "7" after "Rating: " gets the token the model would emit.
            seqs[c] = full[len(ids):] if full[: len(ids)] == ids else self.tokenizer(c, add_special_tokens=False)[
                "input_ids"
            ]
            if not seqs[c]:
                raise EngineError(f"choice {c!r} is empty after tokenisation")
        scores: dict[str, float] = {}
        with self._lock, torch.inference_mode():
            res = self.model(input_ids=torch.tensor([ids]), use_cache=True)
            first = torch.log_softmax(res.logits[0, -1].float(), -1)
            for c, seq in seqs.items():
                logp = first[seq[0]].item()
                if len(seq) > 1:
                    past = copy.deepcopy(res.cache)
                    more = self.model(input_ids=torch.tensor([seq[:-1]]), cache=past, use_cache=True)
                    lps = torch.log_softmax(more.logits[0].float(), -1)
                    logp += sum(lps[i, t].item() for i, t in enumerate(seq[1:]))
                scores[c] = float(torch.tensor(logp).exp())
        return normalise(scores)


class _Logprobs:
    """The generated tokens' log-probabilities (with the `top` likeliest alternatives at each step; `top` None: none
    asked for), handed out with the text they make up."""

    def __init__(self, tokenizer: Any, top: int | None) -> None:
        self.tokenizer, self.top = tokenizer, top
        self.pending: list[TokenLogprob] = []
        self.covered = 0  # characters of the reply the tokens handed out so far make up

    def add(self, logits: torch.Tensor, token: int) -> None:
        if self.top is None:
            return
        logp = torch.log_softmax(logits, -1)
        top = torch.topk(logp, self.top) if self.top else None
        alternatives = [] if top is None else [(self._text(int(i)), float(v)) for v, i in zip(*top, strict=True)]
        self.pending.append(TokenLogprob(self._text(token), float(logp[token]), alternatives))

    def _text(self, token: int) -> str:
        return self.tokenizer.decode([token], skip_special_tokens=True)

    def take(self, upto: int) -> list[TokenLogprob]:
        """The waiting tokens whose text lies within the reply's first `upto` characters; the rest wait on (the
        tokens of a stop string are never handed out)."""
        n = 0
        while n < len(self.pending) and self.covered < upto:
            self.covered += len(self.pending[n].token)
            n += 1
        taken, self.pending = self.pending[:n], self.pending[n:]
        return taken


def _sample(logits: torch.Tensor, params: ChatParams, gen: torch.Generator) -> int:
    if params.temperature <= 0:
        return int(logits.argmax())
    probs = torch.softmax(logits / params.temperature, -1)
    if params.min_p > 0:
        probs = torch.where(probs >= params.min_p * probs.max(), probs, torch.zeros_like(probs))
        probs = probs / probs.sum()
    if params.top_p < 1.0:
        sorted_p, order = probs.sort(descending=True)
        keep = sorted_p.cumsum(-1) - sorted_p < params.top_p  # always keeps the most likely token
        probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_p[keep])
    return int(torch.multinomial(probs, 1, generator=gen))
