"""The judge's cheap signals: each moves on the failure it is there for, on text it was not written around."""

from __future__ import annotations

from thresher.signals import NAMES, signals

Q = "How do I keep basil alive indoors?"
A = ("Give it a sunny window with at least six hours of light a day, and water it when the top centimetre of soil "
     "is dry. Pinch off the flower buds as soon as they appear, so the plant keeps making leaves.")


def _sig(answer: str, question: str = Q, earlier: str | None = None) -> dict[str, float]:
    msgs = [{"role": "user", "content": question}]
    if earlier is not None:
        msgs += [{"role": "assistant", "content": earlier}, {"role": "user", "content": "And in winter?"}]
    return dict(zip(NAMES, signals([*msgs, {"role": "assistant", "content": answer}]), strict=True))


def test_one_value_per_name() -> None:
    assert len(signals([{"role": "user", "content": Q}, {"role": "assistant", "content": A}])) == len(NAMES)
    assert len(signals([{"role": "user", "content": Q}])) == len(NAMES)  # no answer yet: still a row


def test_an_answer_cut_mid_sentence_does_not_end_cleanly() -> None:
    good, cut = _sig(A), _sig(A[: A.index(" of soil")])
    assert good["ends_cleanly"] == 1 and cut["ends_cleanly"] == 0
    assert _sig("Give it a sunny window with at least six hours of light and")["ends_dangling"] == 1


def test_loops_repeat_four_word_runs() -> None:
    loop = " ".join(["Water it when the soil is dry."] * 6)
    assert _sig(loop)["repeated_4grams"] > 0.6 > _sig(A)["repeated_4grams"]
    assert _sig(loop)["distinct"] < _sig(A)["distinct"]


def test_restating_the_question_overlaps_it() -> None:
    echo = _sig("You would like to know how to keep basil alive indoors. That is a question many people ask.")
    assert echo["char_overlap_question"] > _sig(A)["char_overlap_question"]
    assert echo["from_question"] > _sig(A)["from_question"]


def test_refusal_and_hostility_patterns() -> None:
    assert _sig("I'm sorry, but I cannot help with gardening questions.")["refusal"] > 0
    assert _sig(A)["refusal"] == 0
    assert _sig("What a dumb question. " + A)["hostile"] > 0
    assert _sig(A)["hostile"] == 0


def test_repeating_an_earlier_answer() -> None:
    assert _sig(A, earlier=A)["earlier_answer_overlap"] > 0.9
    assert _sig("Move it away from cold glass and water less often.", earlier=A)["earlier_answer_overlap"] < 0.5
