"""Interleaved timing: running the candidates round-robin cancels slow drifts in machine load."""

from __future__ import annotations

import statistics
import time
from typing import Callable


def time_rounds(
    fns: list[Callable[[], object]], repeats: int = 10, warmup: int = 2, clock: Callable[[], float] = time.perf_counter
) -> list[list[float]]:
    """Seconds of each function in each round; the order rotates every round.

    clock: time.perf_counter (wall time) or time.process_time (this process's
    CPU time: on a machine shared with other jobs, with one thread, close to
    what the wall time would be on an idle one).
    """
    for _ in range(warmup):
        for f in fns:
            f()
    times: list[list[float]] = [[] for _ in fns]
    for i in range(repeats):
        for j in range(len(fns)):
            k = (i + j) % len(fns)
            start = clock()
            fns[k]()
            times[k].append(clock() - start)
    return times


def ratio_of(baseline: list[float], candidate: list[float]) -> float:
    """Median over rounds of baseline time / candidate time (a throughput ratio).

    Each round's two runs were adjacent in time, so their ratio is far less
    sensitive to load on the machine than a ratio of separate medians.
    """
    return statistics.median(b / c for b, c in zip(baseline, candidate))
