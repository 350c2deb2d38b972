"""Interleaved timing: alternating A and B cancels slow drifts in machine load."""

from __future__ import annotations

import statistics
import time
from typing import Callable


def time_pair(a: Callable[[], object], b: Callable[[], object], repeats: int = 10, warmup: int = 2) -> tuple[float, float]:
    """Median seconds of a() and b(), run alternately."""
    for _ in range(warmup):
        a()
        b()
    ta, tb = [], []
    for i in range(repeats):
        order = (a, b) if i % 2 == 0 else (b, a)
        for f in order:
            start = time.perf_counter()
            f()
            (ta if f is a else tb).append(time.perf_counter() - start)
    return statistics.median(ta), statistics.median(tb)
