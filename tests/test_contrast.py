"""Spoiled copies for the judge: every failure family, shapes kept, held-out wordings apart from training's."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from thresher.train.contrast import (
    DEGRADATIONS,
    FAMILY_OF,
    TRAIN_WORDINGS,
    Source,
    contrast_rows,
    degrade,
    heldout_wordings,
    nearest,
)

ANSWER = ("Mount Everest is 8,849 metres high, measured in 2020 by a Chinese and Nepalese survey. It lies on the "
          "border between Nepal and China. The first people known to reach the top were Edmund Hillary and Tenzing "
          "Norgay in 1953.")


def _sources(n: int = 30) -> list[Source]:
    topics = ["maths", "cooking", "space"]
    return [Source(f"s{i}", [{"role": "user", "content": f"Question {i} about {topics[i % 3]}, please?"},
                             {"role": "assistant", "content": f"Answer {i} on {topics[i % 3]}. It is about "
                                                              f"{topics[i % 3]} in 1990 and Paris. Detail {i} "
                                                              f"follows here, in a third sentence {i}."}],
                   topics[i % 3])
            for i in range(n)]


@pytest.mark.parametrize("kind", DEGRADATIONS)
def test_each_kind_spoils_the_last_answer_and_keeps_the_shape(kind: str) -> None:
    first = [{"role": "user", "content": "How high is Everest?"}, {"role": "assistant", "content": ANSWER}]
    msgs = first + [{"role": "user", "content": "And who climbed it first?"},
                    {"role": "assistant", "content": "Edmund Hillary and Tenzing Norgay, on 29 May 1953. They "
                                                     "went up the south-east ridge from Nepal."}]
    related = [{"role": "user", "content": "How deep is the Mariana Trench?"},
               {"role": "assistant", "content": "About 10,900 metres at its deepest point. It is in the western "
                                                "Pacific. Few people have been to the bottom."}]
    for heldout in (False, True):
        spoiled = degrade(msgs, kind, related, random.Random(1), heldout)
        assert spoiled is not None, kind
        bad, wording = spoiled
        assert [m["role"] for m in bad] == [m["role"] for m in msgs]
        assert bad[-1]["content"] != msgs[-1]["content"] or bad[0]["content"] != msgs[0]["content"]
        if kind not in ("injection_good", "injection_bad"):
            assert bad[:3] == msgs[:3]  # only the last answer changes
        if wording:
            assert wording.split(":")[1].startswith("h") == (heldout and not kind.startswith("repetition"))


def test_kinds_that_do_not_apply_say_so() -> None:
    one = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there, how are you today?"}]
    assert degrade(one, "second_turn", one, random.Random(0)) is None  # no earlier answer
    assert degrade(one, "facts", one, random.Random(0)) is None  # no number or name to change
    with pytest.raises(ValueError, match="unknown degradation"):
        degrade(one, "nonsense", one, random.Random(0))


def test_corrupted_facts_change_numbers_or_names_only() -> None:
    msgs = [{"role": "user", "content": "How high is Everest?"}, {"role": "assistant", "content": ANSWER}]
    bad, _ = degrade(msgs, "facts", msgs, random.Random(3))
    assert bad[-1]["content"] != ANSWER
    assert len(bad[-1]["content"].split()) == len(ANSWER.split())


def test_every_family_appears_and_goods_are_kept() -> None:
    rows = contrast_rows(_sources(), seed=3, per_good=2)
    good = [r for r in rows if r.label == "good"]
    bad = [r for r in rows if r.label == "bad"]
    assert len(bad) == 2 * len(good)
    assert {r.degradation for r in bad} == set(DEGRADATIONS)
    counts = Counter(r.degradation for r in bad)
    assert max(counts.values()) <= 3 * min(counts.values())  # dealt in turn, not left to chance
    assert set(FAMILY_OF.values()) >= {"relevance", "completeness", "content-free", "hostility", "refusal",
                                       "repetition", "facts", "injection"}


def test_heldout_wordings_are_not_training_wordings() -> None:
    held = heldout_wordings()
    for family, train in TRAIN_WORDINGS.items():
        assert len(held[family]) >= 8, family
        assert not set(held[family]) & set(train), family
    rows = contrast_rows(_sources(), seed=0, heldout=True)
    assert all(":h" in r.template for r in rows if r.template and not r.template.startswith("repetition"))


def test_swaps_take_the_answer_of_a_question_on_the_same_topic() -> None:
    src = _sources()
    for i, j in enumerate(nearest(src)):
        assert j != i and src[j].topic == src[i].topic


def test_a_swap_never_takes_the_answer_to_the_same_question_asked_again() -> None:
    def one(i: int, q: str, a: str) -> Source:
        return Source(f"s{i}", [{"role": "user", "content": q}, {"role": "assistant", "content": a}], "ai")

    src = [one(0, "What is AI?", "AI is the field that builds machines which act intelligently."),
           one(1, "what is ai", "Artificial intelligence: software that learns and reasons."),
           one(2, "What is an AI chip used for?", "It runs the arithmetic of neural networks fast."),
           one(3, "Are you an AI?", "Yes, I am a program.")]
    related = nearest(src)
    assert related[0] == related[1] == 2  # the same question reworded: its answer is no wrong answer
    # a two-turn conversation already holds its first answer: a swap never hands it back (that is second_turn)
    two = Source("t", src[0].messages + src[2].messages, "ai")
    assert nearest([*src, two])[-1] != 0
