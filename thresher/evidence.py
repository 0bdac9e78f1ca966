"""How much a figure measured on few rows can say, in words: used wherever a round's win rate or a judge's AUC is
shown, so a figure that is noise is reported as noise.

A win rate over n prompts gets a 95 % Wilson interval; when it holds 0.5 the figure is no evidence either way. An
AUC over fewer than MIN_ROWS held-out rows is called noise outright: with a handful of rows a single row moves it by
a tenth or more.
"""

from __future__ import annotations

import math

MIN_ROWS = 30  # below this, an AUC or a rate is noise whatever its value
Z95 = 1.96


def wilson(rate: float, n: int, z: float = Z95) -> tuple[float, float]:
    """The 95 % Wilson score interval of a proportion `rate` observed over `n` trials."""
    if n <= 0:
        return 0.0, 1.0
    centre = (rate + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(rate * (1 - rate) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def win_rate_words(rate: float | None, prompts: int | None, than: str = "the serving model") -> str:
    """'0.502 over 2 prompts: noise (95 % interval 0.09-0.91), no evidence either way' and the like; `than` names
    the model the win rate is against."""
    if rate is None or not prompts:
        return "not measured"
    lo, hi = wilson(rate, prompts)
    said = f"{rate:.3f} over {prompts} prompt{'s' if prompts != 1 else ''}"
    if prompts < MIN_ROWS:
        return f"{said}: noise (95 % interval {lo:.2f}-{hi:.2f}), no evidence either way"
    if lo <= 0.5 <= hi:
        return f"{said} (95 % interval {lo:.2f}-{hi:.2f}): no clear difference from {than}"
    better = "better" if lo > 0.5 else "worse"
    return f"{said} (95 % interval {lo:.2f}-{hi:.2f}): {better} than {than}"


def auc_words(auc: float | None, rows: int | None) -> str:
    """'0.667 on 6 held-out rows: noise' or '0.912 on 900 held-out rows'."""
    if auc is None:
        return "not measured"
    if not rows:
        return f"{auc:.3f}"
    said = f"{auc:.3f} on {rows} held-out row{'s' if rows != 1 else ''}"
    return f"{said}: noise, too few rows to tell" if rows < MIN_ROWS else said


def is_noise(n: int | None) -> bool:
    return not n or n < MIN_ROWS
