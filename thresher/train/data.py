"""Training examples: chat examples from a file, a dataset build or the hub; judge rows from reviewers' verdicts and
corrections (contrast rows are thresher.train.contrast's); tokenisation with the base's chat template and a mask of
the assistant's tokens.

Everything becomes OpenAI-style `messages` first (thresher.conversation's converters).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from thresher.conversation import FORMATS, InvalidConversation, from_format

SAMPLES = Path(__file__).parent / "samples"
SAMPLE = "sample"  # the name of the Alpaca-format sample that ships with thresher
GOOD_RATING, BAD_RATING = 9, 2  # what the judge learns to answer for a good and for a degraded conversation

log = logging.getLogger("thresher.train")


class DataError(ValueError):
    """Training data that cannot be read; the message says which row and why."""


def sample_path() -> Path:
    return SAMPLES / "alpaca_sample.json"


def _rows_from_file(path: Path) -> list[Any]:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        rows = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}:{n}: not JSON ({e.msg})") from None
        return rows
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not JSON ({e.msg} at line {e.lineno})") from None
    if isinstance(data, dict):  # {"train": [...]} or {"data": [...]}
        data = data.get("train", data.get("data"))
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of rows (or JSON Lines)")
    return data


def load_rows(source: str) -> list[Any]:
    """Rows from `sample`, a .json/.jsonl file, a directory made by `thresher dataset build`, or a hub dataset."""
    if source == SAMPLE:
        return _rows_from_file(sample_path())
    path = Path(source)
    if path.is_dir():
        if not (path / "data.jsonl").is_file():
            raise DataError(f"{path} has no data.jsonl (make one with `thresher dataset build --out {path}`)")
        path = path / "data.jsonl"
    if path.is_file():
        return _rows_from_file(path)
    if path.suffix in (".json", ".jsonl") or source.startswith((".", "/")):
        raise DataError(f"no file at {path}")
    try:
        import datasets

        return list(datasets.load_dataset(source, split="train"))
    except Exception as e:  # the hub raises many kinds; the user needs the reason
        raise DataError(f"could not load {source!r} from the Hugging Face hub: {e}") from None


def load_conversations(source: str, fmt: str) -> list[list[dict[str, str]]]:
    """Every row of `source` as validated messages; the first bad row stops with its number and the reason."""
    if fmt not in FORMATS:
        raise DataError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    rows = load_rows(source)
    if not rows:
        raise DataError(f"{source} has no rows")
    out = []
    for n, row in enumerate(rows, 1):
        try:
            out.append(from_format(row, fmt))
        except InvalidConversation as e:
            raise DataError(f"{source}: row {n} is not valid {fmt}: {e}") from None
    return out


# ---------------------------------------------------------------------------------------------- tokenisation


@dataclass
class Tokenised:
    input_ids: list[int]
    assistant_masks: list[int]  # 1 where the token is part of an assistant turn (its text and end-of-turn)

    def as_row(self) -> dict[str, list[int]]:
        return {"input_ids": self.input_ids, "assistant_masks": self.assistant_masks}


def tokenise(tokenizer: Any, messages: Sequence[dict[str, str]], max_length: int) -> Tokenised | None:
    """Messages through the tokenizer's own chat template, with a mask of the assistant's tokens found from the
    template's text for each turn (so any template works, without generation markers). Too long: the last turns
    are dropped until it fits; None when not even one assistant turn fits."""
    msgs = list(messages)
    while msgs:
        last = max((i for i, m in enumerate(msgs) if m["role"] == "assistant"), default=None)
        if last is None:
            return None
        msgs = msgs[: last + 1]
        text = tokenizer.apply_chat_template(msgs, tokenize=False)
        spans = []
        for i, m in enumerate(msgs):
            if m["role"] == "assistant":
                start = len(tokenizer.apply_chat_template(msgs[:i], tokenize=False, add_generation_prompt=True))
                end = len(tokenizer.apply_chat_template(msgs[: i + 1], tokenize=False))
                spans.append((start, end))
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids = enc["input_ids"]
        if len(ids) <= max_length:
            mask = [int(any(s <= a and b <= e and b > a for s, e in spans)) for a, b in enc["offset_mapping"]]
            # the template's trailing newline after the end-of-turn token carries nothing to learn
            return Tokenised(ids, mask) if any(mask) else None
        msgs = msgs[:last]
    return None


# ---------------------------------------------------------------------------------------------- judge examples


@dataclass
class JudgeRow:
    messages: list[dict[str, str]]  # the conversation being judged
    label: str  # good | bad
    rating: int  # what the judge should answer, 1-10
    origin: str  # reviewer | contrast
    degradation: str = "none"
    source: str = ""  # the conversation it came from, for splitting without leakage
    template: str = ""  # which wording spoiled it (evaluation uses wordings training never saw)


def rows_from_verdicts(repo: Any, at: str = "HEAD", min_approvals: int = 1) -> list[JudgeRow]:
    """Judge rows from reviewers' verdicts at a commit, decided as for the chat model's data (`review.reviewed`:
    approved is good, rejected bad, pending teaches nothing yet); the mean of the reviewers' scores, when they gave
    any, is the rating to learn."""
    from thresher.review import reviewed

    rows = []
    for item in reviewed(repo, at, min_approvals)[1]:
        if item.state == "pending":
            continue
        good = item.state == "approved"
        scores = [v.score for v in item.verdicts if v.score is not None]
        rating = round(sum(scores) / len(scores)) if scores else (GOOD_RATING if good else BAD_RATING)
        try:
            messages = repo.record(item.path, at).messages
        except ValueError as e:  # a file an edit broke (InvalidRecord, bad JSON) teaches nothing
            log.warning("%s: %s (its verdicts are not trained on)", item.path, e)
            continue
        rows.append(JudgeRow(messages, "good" if good else "bad", max(1, min(10, rating)), "reviewer",
                             source=item.id))
    return rows


def reviewer_rows(repo: Any, at: str = "HEAD", min_approvals: int = 1) -> list[JudgeRow]:
    """Everything people said at a commit, as judge rows: verdicts (`rows_from_verdicts`) and corrections
    (`rows_from_corrections`); none from a clone without commits."""
    if not (repo.path / ".git").exists() or not repo.has_commits():
        return []
    return [*rows_from_verdicts(repo, at, min_approvals), *rows_from_corrections(repo, at)]


def rows_from_corrections(repo: Any, at: str = "HEAD") -> list[JudgeRow]:
    """Reviewers' corrections as pairs: the conversation as a reviewer left it (good) and as it was published (bad),
    for files edited after publication whose assistant text changed."""
    from thresher.dataset_repo import GitError

    try:
        changed = repo.edited(at=at)
    except GitError:
        return []
    rows = []
    for path in [p for p in changed if p.endswith(".json")]:
        try:
            now, before = repo.record(path, at), repo.record(path, repo.added_by(path, at))
        except (GitError, IndexError, ValueError):  # InvalidRecord is a ValueError
            continue  # removed since, not JSON or not a record: nothing to learn from
        new, old = now.messages, before.messages
        said = lambda ms: [m["content"] for m in ms if m["role"] == "assistant"]  # noqa: E731
        if said(new) != said(old):
            cid = now.id
            rows.append(JudgeRow(new, "good", GOOD_RATING, "correction", source=cid))
            rows.append(JudgeRow(old, "bad", BAD_RATING, "correction", "corrected", source=cid))
    return rows
