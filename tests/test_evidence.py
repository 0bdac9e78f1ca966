"""Figures over few rows are called what they are."""

from __future__ import annotations

import pytest

from thresher.evidence import auc_words, wilson, win_rate_words


def test_wilson_interval_known_values() -> None:
    lo, hi = wilson(0.5, 100)
    assert lo == pytest.approx(0.404, abs=1e-3) and hi == pytest.approx(0.596, abs=1e-3)
    assert wilson(0.0, 10)[0] == 0.0 and wilson(1.0, 10)[1] == 1.0


def test_two_prompts_are_no_evidence() -> None:
    said = win_rate_words(0.502, 2)
    assert said.startswith("0.502 over 2 prompts: noise") and "no evidence either way" in said


def test_many_prompts_can_say_better_or_nothing() -> None:
    assert win_rate_words(0.62, 400).endswith("better than the serving model")
    assert "no clear difference" in win_rate_words(0.52, 40)
    assert win_rate_words(None, 0) == "not measured"
    assert win_rate_words(0.30, 400, than="the base").endswith("worse than the base")


def test_an_auc_on_six_rows_is_noise() -> None:
    assert auc_words(2 / 3, 6) == "0.667 on 6 held-out rows: noise, too few rows to tell"
    assert auc_words(0.912, 900) == "0.912 on 900 held-out rows"
