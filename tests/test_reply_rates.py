"""Measures of a chat model's replies that need no judge: loops, cut-offs, empty and off-language replies, and the
length-controlled win rate."""

from __future__ import annotations

import pytest

from thresher.evaluate import Reply, length_controlled, loops, reply_rates


@pytest.mark.parametrize("text", [
    "1.1.1.1: 1.1.1.1: 1.1.1.1: 1.1.1.1: 1.1.1.1:",
    "It is a life of endless life, a life of endless life, a life of endless life, a life of endless life.",
    "The sun is hot. The sun is hot. The sun is hot. The sun is hot. The sun is hot. The sun is hot.",
    "aaaaaaaaaaaaaaaaaaaaaaaa",
])
def test_loops_are_caught(text: str) -> None:
    assert loops(text)


@pytest.mark.parametrize("text", [
    "Paris is the capital of France. It lies on the Seine and has about two million inhabitants.",
    "1. Preheat the oven. 2. Mix the flour and the eggs. 3. Bake for twenty minutes. 4. Let it cool.",
    "Yes.",
    "The cat sat on the mat, and then the dog sat on the mat too, because the mat was warm.",
])
def test_ordinary_replies_do_not_loop(text: str) -> None:
    assert not loops(text)


def test_rates_over_replies() -> None:
    prompts = ["What is the capital of Italy?", "Say hi", "Count", "Translate 'cat'"]
    got = [Reply("Rome is the capital of Italy.", "stop"), Reply("", "stop"),
           Reply("1, 2, 1, 2, 1, 2, 1, 2, 1, 2", "length"), Reply("Кошка по-русски", "stop")]
    rates = reply_rates(prompts, got)
    assert rates["loop_rate"] == 0.25 and rates["cutoff_rate"] == 0.25 and rates["empty_rate"] == 0.25
    assert rates["off_language_rate"] == 0.25
    assert rates["mean_words"] == pytest.approx((6 + 0 + 10 + 3) / 4)  # "по-русски" is two words


def test_length_controlled_win_rate_takes_the_length_out() -> None:
    # The new model wins exactly where its answer is longer: a length preference, not a better model.
    wins = [0.9, 0.9, 0.9, 0.1, 0.1, 0.1]
    longer, shorter = [200, 180, 220, 50, 40, 60], [50, 60, 40, 210, 190, 200]
    assert length_controlled(wins, longer, shorter) == pytest.approx(0.5, abs=0.05)
    # Winning at equal length is winning.
    assert length_controlled([0.8] * 6, [100] * 6, [100] * 6) == pytest.approx(0.8, abs=0.01)
    assert length_controlled([0.7], [10], [10]) is None
