"""Shared by the benches: how much CPU other processes used while a bench ran, to flag a noisy machine."""

from __future__ import annotations

import os
import time


class OtherLoad:
    """CPU used by other processes since construction (Linux /proc/stat); this process and its children (git)
    count as ours."""

    def __init__(self) -> None:
        self.start = self._sample()

    @staticmethod
    def _sample() -> tuple[float, float, float] | None:
        try:
            with open("/proc/stat") as f:
                fields = [int(x) for x in f.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        busy = sum(fields[:3]) + sum(fields[5:8])  # user nice system + irq softirq steal
        t = os.times()
        ours = t.user + t.system + t.children_user + t.children_system
        return busy / os.sysconf("SC_CLK_TCK"), ours, time.monotonic()

    def share(self) -> float | None:
        """Fraction of all CPUs used by other processes since construction."""
        end = self._sample()
        if self.start is None or end is None:
            return None
        busy, ours, wall = (e - s for e, s in zip(end, self.start, strict=True))
        return max(0.0, busy - ours) / (wall * (os.cpu_count() or 1))
