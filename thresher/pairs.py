"""Preference pairs: for one prompt, a reply preferred over another, and where the preference came from.

- `on_policy`: for the prompts of approved conversations, several replies of the model being trained, each scored
  by the judge; the best of those that neither loop nor were cut off over the worst, when the judge's margin is
  clear (the Self-Rewarding recipe, with a check that needs no judge);
- `record_pairs` / `from_record`: what a published conversation itself says (its `pairs` field): a thumbed-up
  version of a reply over a thumbed-down one, the kept version over one thumbed down, or over one its user
  regenerated away from;
- `from_corrections`: a reviewer's corrected reply over the original.
Every pair names its source and conversation, so a withdrawn or taken-down conversation's pairs go with it (the
published ones live inside the conversation's own file).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from thresher.conversation import InvalidRecord, Record

ON_POLICY, FEEDBACK, REGENERATION, CORRECTION = "on-policy", "feedback", "regeneration", "correction"


class PairError(ValueError):
    """A file or record that does not hold preference pairs; the message says where."""


@dataclass
class Pair:
    """One preference: for `prompt` (the conversation before the reply), `chosen` over `rejected`, and where it came
    from (`source`: correction, feedback, on-policy; `conversation`: the id it was taken from, or None)."""

    prompt: list[dict[str, str]]
    chosen: str
    rejected: str
    source: str
    conversation: str | None = None
    margin: float | None = None  # the judge's score difference, for on-policy pairs

    def as_row(self) -> dict[str, Any]:
        return {"prompt": self.prompt, "chosen": [{"role": "assistant", "content": self.chosen}],
                "rejected": [{"role": "assistant", "content": self.rejected}]}

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Pair:
        prompt = d.get("prompt")
        if (not isinstance(prompt, list) or not prompt or not all(isinstance(m, dict) and m.get("role") in
                                                                   ("system", "user", "assistant")
                                                                   and isinstance(m.get("content"), str)
                                                                   for m in prompt)
                or prompt[-1]["role"] != "user"):
            raise ValueError("a pair's prompt is a list of messages ending with the user's")
        if not isinstance(d.get("chosen"), str) or not isinstance(d.get("rejected"), str):
            raise ValueError("a pair's chosen and rejected replies are strings")
        if d["chosen"].strip() == d["rejected"].strip():
            raise ValueError("a pair's chosen and rejected replies are the same")
        return cls([{"role": m["role"], "content": m["content"]} for m in prompt], d["chosen"], d["rejected"],
                   str(d.get("source") or "file"), d.get("conversation"), d.get("margin"))


def read_pairs(path: Path) -> list[Pair]:
    """Pairs from a JSON Lines file (one `Pair.to_json()` per line); a bad line is an error that names it."""
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append(Pair.from_json(json.loads(line)))
        except (ValueError, TypeError, AttributeError) as e:
            raise PairError(f"{path}:{n}: not a preference pair ({e})") from None
    return out


def write_pairs(path: Path, pairs: Sequence[Pair]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(json.dumps(p.to_json(), ensure_ascii=False) + "\n" for p in pairs), encoding="utf-8")
    tmp.replace(path)
    return path


def prompt_of(messages: Sequence[dict[str, str]]) -> list[dict[str, str]] | None:
    """The conversation up to and including its last user message (what a reply answers), or None without one."""
    last = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=None)
    if last is None:
        return None
    return [{"role": m["role"], "content": m["content"]} for m in messages[: last + 1]]


def on_policy(engine: Any, judge: Any, prompts: Sequence[tuple[str | None, list[dict[str, str]]]], n: int = 4,
              max_tokens: int = 256, params: Any = None, min_margin: float = 1.5, max_length_ratio: float = 1.5,
              say: Callable[[str], None] | None = None) -> list[Pair]:
    """Pairs from `n` sampled replies per prompt ((conversation id, messages ending with the user's)), judged. The
    rejected reply is the worst of those within `max_length_ratio` of the chosen one's length in words: pairs
    whose lengths differ a lot teach length (DPO learns "shorter" or "longer" as readily as "better")."""
    from thresher.evaluate import loops, replies

    flat = [(k, msgs) for k, (_, msgs) in enumerate(prompts) for _ in range(n)]
    got = replies(engine, [m for _, m in flat], max_tokens, progress="sampling replies" if say else None,
                  params=params, seeds=[1000 * k + j % n for j, (k, _) in enumerate(flat)])
    convs = [[*msgs, {"role": "assistant", "content": r.text}] for (_, msgs), r in zip(flat, got, strict=True)]
    many = getattr(judge, "judge_many", None)
    judged = many(convs) if many else [judge.judge(c) for c in convs]
    out = []
    for k, (conv_id, msgs) in enumerate(prompts):
        mine = [(judged[j].score, got[j]) for j in range(k * n, (k + 1) * n)
                if judged[j].score is not None and got[j].text.strip()]
        if len(mine) < 2:
            continue
        clean = [x for x in mine if x[1].finish_reason != "length" and not loops(x[1].text)]
        if not clean:
            continue  # the best of them would teach looping or running on
        high, best = max(clean, key=lambda x: x[0])
        size = max(1, len(best.text.split()))
        alike = [x for x in mine if 1 / max_length_ratio <= max(1, len(x[1].text.split())) / size
                 <= max_length_ratio]
        low, worst = min(alike, key=lambda x: x[0])
        if high - low >= min_margin and best.text.strip() != worst.text.strip():
            out.append(Pair(msgs, best.text, worst.text, ON_POLICY, conv_id, round(high - low, 2)))
    if say:
        say(f"{len(out)} pairs from {len(prompts)} prompts x {n} replies (margin >= {min_margin})")
    return out


def balance_lengths(pairs: Sequence[Pair], ratio: float) -> list[Pair]:
    """The pairs less those whose chosen reply is shortest against its rejected one, dropped one by one until the
    chosen replies are at most `ratio` times shorter than the rejected ones on average (geometric mean of the
    word-count ratios). Each pair may be fair while the set is not: when the clean, finished reply is chosen and
    the long one cut off is rejected, prompt after prompt, DPO learns "shorter" (replies shrank 102 -> 81 -> 31
    words over three rounds of bench/rounds.py). Pairs with a longer chosen side are never dropped."""
    import math

    logs = [math.log(max(1, len(p.chosen.split())) / max(1, len(p.rejected.split()))) for p in pairs]
    total, left, dropped = sum(logs), len(logs), set()
    for i in sorted(range(len(logs)), key=logs.__getitem__):  # the chosen side's most shortened first
        if total / left >= -math.log(ratio) or logs[i] >= 0:
            break
        total, left = total - logs[i], left - 1
        dropped.add(i)
    return [p for i, p in enumerate(pairs) if i not in dropped]


def record_pairs(versions: dict[int, list[Any]], clean: Callable[[str], str] = lambda t: t) -> list[dict[str, Any]]:
    """The pairs a conversation's file carries, from its replies' versions by place (`Store.reply_versions`): a
    thumbed-up version over a thumbed-down one, the kept version over one thumbed down (`feedback`), and the kept
    version over one its user regenerated away from, neither rated (`regeneration`). Each names the place of the
    reply in the file's messages (`turn`: the prompt is the messages before it); texts pass through `clean` (the
    scrubber) as the messages do."""
    from thresher.conversation import COMPLETE

    out = []
    for place, found in sorted(versions.items()):
        good = [v for v in found if v.status == COMPLETE and v.content.strip()
                and (v.rating == "up" or (v.kept and v.rating != "down"))]
        bad = [v for v in found if v.content.strip() and v.rating != "up" and (not v.kept or v.rating == "down")]
        for chosen in good:
            for rejected in bad:
                if rejected is chosen or rejected.content.strip() == chosen.content.strip():
                    continue
                rated = chosen.rating is not None or rejected.rating is not None
                if not rated and rejected.status != COMPLETE:
                    continue  # a reply stopped half-way and regenerated says little about the rest
                out.append({"turn": place, "chosen": clean(chosen.content), "rejected": clean(rejected.content),
                            "source": FEEDBACK if rated else REGENERATION})
    return out


def load_pairs(path: Path) -> list[Pair]:
    """The pairs `thresher train dpo --pairs` reads: a JSON Lines file of pairs (a round's `pairs.jsonl`), or a
    `thresher dataset build` directory (the pairs its conversations carry). PairError when there are none."""
    if path.is_dir():
        data = path / "data.jsonl"
        if not data.is_file():
            raise PairError(f"{path} holds no data.jsonl: build it with `thresher dataset build`")
        found = []
        for n, line in enumerate(data.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                try:
                    found += from_record(json.loads(line))
                except json.JSONDecodeError as e:
                    raise PairError(f"{data} line {n}: {e}") from None
    elif path.is_file():
        found = read_pairs(path)
    else:
        raise PairError(f"no file or directory at {path}")
    if not found:
        raise PairError(f"no preference pairs in {path}")
    return found


def from_record(record: Record | dict[str, Any]) -> list[Pair]:
    """The pairs a published conversation carries (its `pairs` field), traced to it; a malformed one is skipped,
    not trained on (and a record that is not one carries none)."""
    if isinstance(record, dict):
        try:
            record = Record.from_json(record)
        except InvalidRecord:
            return []
    out = []
    for d in record.pairs:
        try:
            turn = int(d["turn"])
            if not 0 < turn <= len(record.messages):
                continue
            out.append(Pair.from_json({"prompt": record.messages[:turn], "chosen": d["chosen"],
                                       "rejected": d["rejected"], "source": d.get("source"),
                                       "conversation": record.id}))
        except (ValueError, TypeError, KeyError, AttributeError):
            continue
    return out


def from_corrections(corrections: Sequence[tuple[str | None, list[dict[str, str]], list[dict[str, str]]]]
                     ) -> list[Pair]:
    """A reviewer's corrected reply over the original: from each (conversation id, the messages as corrected, as
    published), the first reply the reviewer changed, where everything before it is the same."""
    out = []
    for conv_id, new, old in corrections:
        for i, (a, b) in enumerate(zip(new, old, strict=False)):
            if a["role"] != b["role"]:
                break
            if a["content"] == b["content"]:
                continue
            prompt = prompt_of(new[:i])
            if a["role"] == "assistant" and prompt is not None and len(prompt) == i and a["content"].strip():
                out.append(Pair(prompt, a["content"], b["content"], CORRECTION, conv_id))
            break
    return out


def drop_pairs_of(path: Path, conversation: str) -> bool:
    """Rewrite a pairs file without the pairs taken from `conversation` (a takedown); whether any went. Lines
    that are not pairs are kept as they are."""
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)

    def of_it(line: str) -> bool:
        try:
            return json.loads(line).get("conversation") == conversation
        except (ValueError, AttributeError):
            return False

    kept = [line for line in lines if not of_it(line)]
    if len(kept) == len(lines):
        return False
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(kept), encoding="utf-8")
    tmp.replace(path)
    return True
