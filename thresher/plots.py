"""Saving a plot, in one place: a matplotlib figure drawn by the caller, laid out and written as PNG.

Figures are `matplotlib.figure.Figure` objects, never pyplot's global state, so plots can be drawn from any thread
(the server's dashboard, a round's worker) and need no backend switch.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

_LOCK = threading.Lock()  # rendering is CPU-bound: one at a time bounds what a busy dashboard costs


@contextmanager
def figure(target: Path | IO[bytes], size: tuple[float, float] = (7, 4), dpi: int = 100) -> Iterator[Any]:
    """`with figure(path) as ax:` draw on `ax`; on leaving the block the figure is laid out and saved to `target`
    (a path, or a binary file such as BytesIO) as PNG. Nothing is saved if the block raises."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=dpi)
    ax = fig.add_subplot()
    yield ax
    fig.tight_layout()
    with _LOCK:
        fig.savefig(target, format="png")
