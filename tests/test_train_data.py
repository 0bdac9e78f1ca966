"""Training data: format converters, sources, the assistant-token mask, contrast pairs and leak-free splits."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from thresher.conversation import InvalidConversation, from_format, to_alpaca, to_sharegpt
from thresher.train.contrast import DEGRADATIONS, HELDOUT_TEMPLATES, Source, contrast_rows, degrade, nearest
from thresher.train.data import DataError, load_conversations, load_rows, split_rows

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


def _sources(n: int = 24) -> list[Source]:
    rng = random.Random(1)
    topics = ["maths", "cooking", "space"]
    out = []
    for i in range(n):
        topic = topics[i % 3]
        out.append(Source(f"s{i}", [{"role": "user", "content": f"Question {i} about {topic} number {rng.random()}?"},
                                    {"role": "assistant", "content": f"Answer {i}. It is about {topic}. More detail "
                                                                     f"follows here, in a second sentence."}], topic))
    return out


@pytest.mark.parametrize("kind", DEGRADATIONS)
def test_each_degradation_changes_the_conversation_but_keeps_its_shape(kind: str) -> None:
    src = _sources()
    msgs = src[0].messages + src[3].messages  # a two-turn conversation
    bad, template = degrade(msgs, kind, src[6].messages, random.Random(0))
    assert bad != msgs
    assert [m["role"] for m in bad] == [m["role"] for m in msgs]
    assert bad[:2] == msgs[:2] or kind == "injection"  # only the last answer changes (injection may touch turn 1)
    assert (template != "") == (kind in ("refusal", "rude", "injection"))


def test_swaps_take_the_answer_of_a_question_on_the_same_topic() -> None:
    src = _sources()
    for i, j in enumerate(nearest(src)):
        assert j != i and src[j].topic == src[i].topic


def test_contrast_rows_are_balanced_and_every_degradation_appears() -> None:
    rows = contrast_rows(_sources(), seed=3)
    good = [r for r in rows if r.label == "good"]
    bad = [r for r in rows if r.label == "bad"]
    assert len(good) == len(bad)
    assert {r.degradation for r in bad} == set(DEGRADATIONS)
    turns = lambda rs: sorted(len(r.messages) for r in rs)  # noqa: E731
    assert turns(good) == turns(bad)  # no "more turns means good" shortcut to learn
    assert all(r.judge_example()[-1]["content"] in ("Rating: [[9]]", "Rating: [[2]]") for r in rows)


def test_held_out_rows_share_no_source_and_no_template_with_training() -> None:
    rows = contrast_rows(_sources(60), seed=0)
    train, test = split_rows(rows, 0.25, seed=0, heldout_templates=HELDOUT_TEMPLATES)
    assert train and test
    parts = lambda rs: set().union(*(r.source.split("+") for r in rs))  # noqa: E731
    test_sources = {r.source for r in test if r.template not in HELDOUT_TEMPLATES}
    assert not parts(train) & set().union(*(s.split("+") for s in test_sources))
    assert not {r.template for r in train} & HELDOUT_TEMPLATES
    assert {r.label for r in test} == {"good", "bad"}


def test_the_judge_learns_only_the_rating_digits(tokenizer) -> None:
    from thresher.train.data import JudgeRow, tokenise
    from thresher.train.judge import rating_only

    for rating in (2, 10):
        row = JudgeRow(CONVO, "good", rating, "contrast")
        t = rating_only(tokenizer, tokenise(tokenizer, row.judge_example(), 1024))
        assert tokenizer.decode([i for i, m in zip(t.input_ids, t.assistant_masks, strict=True) if m]) == str(rating)


@pytest.mark.slow
def test_thresher_train_judge_reports_before_and_after(tmp_path: Path, settings, monkeypatch) -> None:
    """The command end to end on the embedded model, cut to one step: AUC and accuracy before and after, by
    degradation, the calibrated threshold, and a report file with the same figures."""
    from typer.testing import CliRunner

    from thresher.cli import app

    monkeypatch.chdir(tmp_path)
    out = tmp_path / "judge"
    result = CliRunner().invoke(app, ["train", "judge", "--max-steps", "1", "--batch-size", "2", "--heldout-rows",
                                      "8", "--no-export", "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "judge_eval.json").read_text())
    assert report["rows_heldout"] == 8 and report["train"]["steps"] == 1
    for when in ("before", "after"):
        auc = report[when]["auc"]
        assert 0 <= auc <= 1 and f"{auc:.3f}" in result.output
    assert "AUC by degradation, before -> after: " in result.output
    assert (out / "loss.png").stat().st_size > 0
