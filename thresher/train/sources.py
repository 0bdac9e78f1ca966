"""Real conversations to learn judging from: good answers written by people, shipped inside packages on PyPI.

    zaragoza     zaragoza-construction-faq (CC-BY-4.0, Zaragoza AB): 503 English questions on Swedish building
                 law and practice with their answers, written by the company's staff
    chatterbot   chatterbot-corpus (BSD-3-Clause, Gunther Cox and contributors): about 1,000 English dialogue
                 exchanges (greetings, small talk, trivia, science, computing); short answers, some of them jokes
    sample       the 160 Alpaca-style examples written for thresher (Apache-2.0)

Both packages are plain data and install offline (`pip install 'thresher[train]'`). Approved conversations from the
dataset repository join them in a round. Sources are grouped by topic, so spoiled copies borrow answers from related
questions. A file in Alpaca, ShareGPT or OpenAI-messages form gives sources too (`from_file`), which is how a
held-out evaluation set is built from text training never saw.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path

from thresher.train.contrast import Source

SHIPPED = ("zaragoza", "chatterbot", "sample")
DEFAULT = ("zaragoza", "chatterbot")


class SourceError(ValueError):
    """Sources that cannot be read; the message says which and how to install them."""


def _package_dir(module: str, package: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise SourceError(f"the {package} package is not installed: pip install --no-deps {package}")
    return Path(next(iter(spec.submodule_search_locations)))


def zaragoza() -> list[Source]:
    path = _package_dir("zaragoza_construction_faq", "zaragoza-construction-faq") / "data" / "faq-en.jsonl"
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            r = json.loads(line)
            if r.get("q") and r.get("a"):
                out.append(Source(f"zaragoza-{r['id']}", [{"role": "user", "content": r["q"].strip()},
                                                           {"role": "assistant", "content": r["a"].strip()}],
                                  f"zaragoza:{r.get('category', '')}"))
    return out


def chatterbot() -> list[Source]:
    import yaml

    folder = _package_dir("chatterbot_corpus", "chatterbot-corpus") / "data" / "english"
    out = []
    for path in sorted(folder.glob("*.yml")):
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        for n, turns in enumerate(data.get("conversations") or []):
            texts = [str(t).strip() for t in turns if str(t).strip()]
            if len(texts) % 2:
                texts = texts[:-1]  # a conversation ends on an answer
            if len(texts) < 2 or len(texts[-1].split()) < 3:
                continue  # one- and two-word replies say nothing a judge can learn from
            msgs = [{"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(texts)]
            out.append(Source(f"chatterbot-{path.stem}-{n}", msgs, f"chatterbot:{path.stem}"))
    return out


def sample() -> list[Source]:
    from thresher.conversation import from_alpaca
    from thresher.train.data import load_rows, sample_path

    return [Source(f"sample-{i}", from_alpaca(r), r.get("topic", "")) for i, r in
            enumerate(load_rows(str(sample_path())))]


def from_file(path: str, fmt: str = "auto", prefix: str = "") -> list[Source]:
    """Good conversations from an Alpaca, ShareGPT or messages file (JSON or JSON Lines); `auto` tells by keys."""
    from thresher.conversation import InvalidConversation, from_format
    from thresher.train.data import load_rows

    rows = load_rows(path)
    out = []
    for n, row in enumerate(rows):
        kind = fmt
        if kind == "auto":
            keys = set(row) if isinstance(row, dict) else set()
            kind = "alpaca" if "instruction" in keys else "sharegpt" if "conversations" in keys else "messages"
        try:
            msgs = from_format(row, kind)
        except InvalidConversation as e:
            raise SourceError(f"{path}: row {n + 1} is not valid {kind}: {e}") from None
        msgs = [{"role": m["role"], "content": m["content"]} for m in msgs if m["role"] in ("user", "assistant")]
        if msgs and msgs[-1]["role"] == "user":
            msgs = msgs[:-1]
        if any(m["role"] == "assistant" for m in msgs):
            out.append(Source(f"{prefix}{row.get('id', n) if isinstance(row, dict) else n}", msgs))
    return out


EVAL_SHARE = 0.15  # of each shipped source's conversations, whose questions are held out for evaluating replies


def is_eval(source_id: str) -> bool:
    """Whether a conversation's question is held out for evaluating the chat model (by a hash of its id, so the
    split never changes): chat training and simulated users never ask these."""
    return int(hashlib.sha256(source_id.encode()).hexdigest(), 16) % 1000 < EVAL_SHARE * 1000


def prompts(names: tuple[str, ...] | list[str] = DEFAULT, split: str = "eval", limit: int | None = None,
            min_words: int = 3) -> list[str]:
    """The first questions of real conversations in these sources, held out (`eval`) or not (`train`), distinct,
    of `min_words` words or more, in a fixed shuffled order (topics mixed), at most `limit`."""
    import random

    if split not in ("eval", "train"):
        raise ValueError(f"split is 'eval' or 'train', not {split!r}")
    seen: set[str] = set()
    out = []
    for s in load(names):
        q = s.messages[0]["content"].strip()
        if is_eval(s.id) == (split == "eval") and len(q.split()) >= min_words and q.lower() not in seen:
            seen.add(q.lower())
            out.append(q)
    random.Random(0).shuffle(out)
    return out[:limit] if limit else out


def load(names: tuple[str, ...] | list[str]) -> list[Source]:
    """Sources by name (`zaragoza`, `chatterbot`, `sample`) or file path."""
    out: list[Source] = []
    for name in names:
        if name == "zaragoza":
            out += zaragoza()
        elif name == "chatterbot":
            out += chatterbot()
        elif name == "sample":
            out += sample()
        else:
            out += from_file(name, prefix=f"{Path(name).stem}-")
    return out
