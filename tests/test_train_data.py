"""Training data: format converters, sources, the assistant-token mask, contrast pairs and leak-free splits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from thresher.conversation import InvalidConversation, from_format, to_alpaca, to_sharegpt
from thresher.train.data import DataError, load_conversations, load_rows

CONVO = [{"role": "user", "content": "What is 2 + 2?"}, {"role": "assistant", "content": "2 + 2 is 4."},
         {"role": "user", "content": "And 3 + 3?"}, {"role": "assistant", "content": "3 + 3 is 6."}]


def test_alpaca_rows_become_one_user_and_one_assistant_turn() -> None:
    assert from_format({"instruction": "Sort these.", "input": "b, a", "output": "a, b"}, "alpaca") == [
        {"role": "user", "content": "Sort these.\n\nb, a"}, {"role": "assistant", "content": "a, b"}]
    assert from_format({"instruction": "Hi", "output": "Hello!"}, "alpaca")[0]["content"] == "Hi"
    assert to_alpaca(from_format({"instruction": "Hi", "input": "", "output": "Hello!"}, "alpaca")) == {
        "instruction": "Hi", "input": "", "output": "Hello!"}


def test_sharegpt_and_messages_round_trip() -> None:
    assert from_format(to_sharegpt(CONVO), "sharegpt") == CONVO
    assert from_format({"messages": CONVO}, "messages") == CONVO


@pytest.mark.parametrize(("row", "fmt", "why"), [
    ({"instruction": "", "output": "x"}, "alpaca", "non-empty 'instruction'"),
    ({"instruction": "x", "input": 3, "output": "y"}, "alpaca", "'input' must be a string"),
    ({"conversations": [{"from": "robot", "value": "x"}]}, "sharegpt", r"conversations\[0\] needs"),
    ({"messages": [{"role": "user", "content": "only a question"}]}, "messages", "no assistant message"),
    ({"messages": [{"role": "wizard", "content": "x"}]}, "messages", "role must be one of"),
    (["not", "an", "object"], "alpaca", "JSON object"),
    ({"instruction": "x", "output": "y"}, "csv", "unknown format"),
])
def test_bad_rows_are_refused_with_the_reason(row: object, fmt: str, why: str) -> None:
    with pytest.raises(InvalidConversation, match=why):
        from_format(row, fmt)


def test_a_bad_row_in_a_file_names_its_number(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"instruction": "a", "output": "b"}) + "\n" + json.dumps({"output": "b"}) + "\n")
    with pytest.raises(DataError, match=r"row 2 is not valid alpaca"):
        load_conversations(str(path), "alpaca")
    (tmp_path / "broken.jsonl").write_text('{"instruction": "a", "output": "b"}\n{oops\n')
    with pytest.raises(DataError, match=r"broken.jsonl:2: not JSON"):
        load_conversations(str(tmp_path / "broken.jsonl"), "alpaca")
    with pytest.raises(DataError, match="no file at"):
        load_rows(str(tmp_path / "missing.json"))
    with pytest.raises(DataError, match="has no data.jsonl"):
        load_rows(str(tmp_path))


def test_a_dataset_build_directory_is_read_as_messages(tmp_path: Path) -> None:
    (tmp_path / "data.jsonl").write_text(json.dumps({"id": "01A", "messages": CONVO}) + "\n")
    assert load_conversations(str(tmp_path), "messages") == [CONVO]


def test_the_shipped_sample_is_valid_alpaca() -> None:
    convs = load_conversations("sample", "alpaca")
    assert len(convs) >= 100
    assert all(len(c) == 2 and c[1]["content"] for c in convs)


@pytest.fixture(scope="module")
def tokenizer():
    import warnings

    from transformers import AutoTokenizer

    from thresher.engines import embedded_model_path

    path = embedded_model_path()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)


def test_only_the_assistants_tokens_are_learnt(tokenizer) -> None:
    from thresher.train.data import tokenise

    t = tokenise(tokenizer, CONVO, 512)
    assert t is not None and len(t.input_ids) == len(t.assistant_masks)
    learnt = tokenizer.decode([i for i, m in zip(t.input_ids, t.assistant_masks, strict=True) if m])
    assert learnt == "2 + 2 is 4.<|im_end|>\n3 + 3 is 6.<|im_end|>\n"
    # the questions and the template's own text are context, never targets
    assert "What is" not in learnt and "user" not in learnt


def test_too_long_conversations_keep_their_first_turns_or_are_skipped(tokenizer) -> None:
    from thresher.train.data import tokenise

    full = tokenise(tokenizer, CONVO, 512)
    first = tokenise(tokenizer, CONVO[:2], 512)
    cut = tokenise(tokenizer, CONVO, len(full.input_ids) - 1)
    assert cut is not None and cut.input_ids == first.input_ids
    assert tokenise(tokenizer, CONVO, 5) is None
