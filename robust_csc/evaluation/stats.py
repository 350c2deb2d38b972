"""Uncertainty of accuracies and of paired differences, from per-example outcomes.

- wilson_interval: the 95 % Wilson score interval of one accuracy (correct / n).
- mcnemar: the exact McNemar test of two classifiers (or settings, or attacks)
  on the same examples: only the discordant examples count, and under the
  null each is equally likely to favour either side (a binomial with p = 1/2).
- paired_bootstrap: a percentile interval of a difference of accuracies on the
  same examples, resampling examples.  For a mean over many cells that hold
  the same examples (every cell of a corruption suite holds the same test
  images), one draw of examples is used in every cell, so the correlation
  between cells is kept; cells with different examples are resampled each on
  its own (a stratified bootstrap).  The cells themselves are the benchmark's
  fixed design (its 15 corruptions x 5 severities), not a sample, so they are
  not resampled.
- compare / Difference: one paired difference with its interval, its p-value
  and whether it is significant at 5 %, and the text the tables print.

Accuracies are fractions in [0, 1]; the text helpers print percent.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from statistics import NormalDist
from typing import Callable, Sequence

import numpy as np

from robust_csc.errors import RobustCSCError

CONFIDENCE = 0.95
ALPHA = 0.05
BOOTSTRAP_SAMPLES = 2000
# Draws per chunk: bounds the (chunk, n) index array of a bootstrap to a few MB.
_CHUNK_ELEMENTS = 4_000_000


def _check_confidence(confidence: float) -> float:
    if isinstance(confidence, bool) or not isinstance(confidence, numbers.Real) or not 0 < confidence < 1:
        raise RobustCSCError(f"confidence {confidence!r} is invalid; pass a number between 0 and 1, such as 0.95")
    return float(confidence)


def _check_count(correct: object, n: object) -> tuple[int, int]:
    for name, value in (("n", n), ("correct", correct)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
            raise RobustCSCError(f"{name} {value!r} is invalid; pass an integer >= 0")
    if correct > n:
        raise RobustCSCError(f"correct ({correct}) exceeds n ({n}); pass correct <= n")
    if n < 2:
        raise RobustCSCError(f"an interval needs at least 2 examples and this accuracy has {n}; evaluate at least 2 examples")
    return int(correct), int(n)


def wilson_interval(correct: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """(low, high) of the Wilson score interval of correct / n.

    Unlike the normal approximation it stays inside [0, 1] and is not empty
    at 0 or n correct, which matters for robust accuracies near 0.
    """
    correct, n = _check_count(correct, n)
    z = NormalDist().inv_cdf(0.5 + _check_confidence(confidence) / 2)
    p = correct / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    # At 0 or n correct the bound is exactly 0 or 1 in theory; rounding must not put it just inside.
    low = 0.0 if correct == 0 else max(0.0, centre - half)
    high = 1.0 if correct == n else min(1.0, centre + half)
    return low, high


def wilson_columns(correct: Sequence, n: Sequence, confidence: float = CONFIDENCE) -> tuple[list[float], list[float]]:
    """Wilson bounds of many accuracies; NaN where n < 2 or a count is missing (tables show no interval there)."""
    low, high = [], []
    for k, m in zip(correct, n):
        if _missing(k) or _missing(m) or int(m) < 2:
            low.append(math.nan)
            high.append(math.nan)
            continue
        lo, hi = wilson_interval(int(k), int(m), confidence)
        low.append(lo)
        high.append(hi)
    return low, high


def _missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


# ---------------------------------------------------------------- paired tests


def _paired_arrays(a: object, b: object) -> tuple[np.ndarray, np.ndarray]:
    """Two bool arrays of the same shape: (n,) for one cell or (cells, n)."""
    first = np.asarray(a)
    second = np.asarray(b)
    if first.shape != second.shape or first.ndim not in (1, 2) or first.shape[-1] == 0:
        raise RobustCSCError(
            f"paired outcomes must have the same shape, (n,) or (cells, n), and at least one example; "
            f"got {first.shape} and {second.shape}: compare the two on the same examples"
        )
    return first.astype(bool), second.astype(bool)


@dataclass(frozen=True)
class McNemar:
    """Examples only a got right (a_only), only b got right (b_only), and the exact two-sided p-value."""

    a_only: int
    b_only: int
    p_value: float


def mcnemar(a: object, b: object) -> McNemar:
    """The exact McNemar test of outcomes a and b (bool, per example, same examples in the same order).

    p = min(1, 2 * P(X <= min(a_only, b_only))) for X ~ Binomial(a_only + b_only, 1/2);
    p = 1 when no example is discordant.
    """
    from scipy.stats import binom

    first, second = _paired_arrays(a, b)
    a_only = int((first & ~second).sum())
    b_only = int((~first & second).sum())
    discordant = a_only + b_only
    if discordant == 0:
        return McNemar(a_only, b_only, 1.0)
    p = min(1.0, 2.0 * float(binom.cdf(min(a_only, b_only), discordant, 0.5)))
    return McNemar(a_only, b_only, p)


def _resampled_means(scores: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """Means of scores (n,) over n_boot resamples of its n entries with replacement."""
    n = scores.shape[0]
    out = np.empty(n_boot, dtype=np.float64)
    chunk = max(1, _CHUNK_ELEMENTS // n)
    for start in range(0, n_boot, chunk):
        stop = min(n_boot, start + chunk)
        draws = rng.integers(0, n, size=(stop - start, n))
        out[start:stop] = scores[draws].mean(axis=1)
    return out


def bootstrap_differences(
    a: object, b: object, *, n_boot: int = BOOTSTRAP_SAMPLES, seed: int = 0
) -> tuple[float, np.ndarray]:
    """(observed difference, n_boot resampled differences) of mean accuracy a - b.

    a, b: bool (n,) for one cell or (cells, n) for the mean over cells that
    hold the same examples in the same order (one draw of examples serves
    every cell).  For cells on different examples use stratified_differences.
    """
    first, second = _paired_arrays(a, b)
    n_boot = _check_samples(n_boot)
    # The mean over cells of a per-cell mean over the same examples is the mean over
    # examples of a per-example score: resampling the scores resamples all cells alike.
    scores = (first.astype(np.float64) - second.astype(np.float64)).reshape(-1, first.shape[-1]).mean(axis=0)
    observed = float(scores.mean())
    return observed, _resampled_means(scores, n_boot, np.random.default_rng(seed))


def mean_interval(
    a: object, *, n_boot: int = BOOTSTRAP_SAMPLES, seed: int = 0, confidence: float = CONFIDENCE
) -> tuple[float, float, float]:
    """(mean accuracy, low, high) of (n,) or (cells, n) outcomes on the same examples, resampling examples."""
    flags = np.asarray(a, dtype=bool)
    if flags.ndim not in (1, 2) or flags.shape[-1] < 2:
        raise RobustCSCError("an interval needs at least 2 examples; evaluate at least 2 examples per cell")
    scores = flags.astype(np.float64).reshape(-1, flags.shape[-1]).mean(axis=0)
    mean = float(scores.mean())
    if np.all(scores == scores[0]):
        # Every image scored alike (all right or all wrong): the bootstrap collapses to a point, which would
        # claim certainty. The Wilson interval of one cell of n images is the honest width there.
        return (mean, *wilson_interval(int(round(mean * scores.size)), scores.size, confidence))
    draws = _resampled_means(scores, _check_samples(n_boot), np.random.default_rng(seed))
    low, high = percentile_interval(draws, confidence)
    return mean, low, high


def stratified_differences(
    cells: Sequence[tuple[object, object]], *, n_boot: int = BOOTSTRAP_SAMPLES, seed: int = 0
) -> tuple[float, np.ndarray]:
    """(observed, resampled) mean over cells of a - b, each cell's examples resampled on their own."""
    if not cells:
        raise RobustCSCError("no cells to compare; pass at least one pair of outcomes")
    n_boot = _check_samples(n_boot)
    rng = np.random.default_rng(seed)
    observed = 0.0
    total = np.zeros(n_boot)
    for a, b in cells:
        first, second = _paired_arrays(a, b)
        if first.ndim != 1:
            raise RobustCSCError("stratified_differences takes one (n,) pair per cell; pass 1-D outcomes")
        scores = first.astype(np.float64) - second.astype(np.float64)
        observed += float(scores.mean())
        total += _resampled_means(scores, n_boot, rng)
    return observed / len(cells), total / len(cells)


def bootstrap_statistic(
    statistic: Callable[[np.ndarray, np.ndarray], np.ndarray],
    a: object,
    b: object,
    *,
    n_boot: int = BOOTSTRAP_SAMPLES,
    seed: int = 0,
) -> tuple[float, np.ndarray]:
    """(observed, resampled) value of statistic(acc_a, acc_b) for any function of per-cell accuracies.

    a, b: bool (cells, n) on the same examples; statistic maps two (draws,
    cells) accuracy arrays to (draws,) values (mCE is one: a ratio of error
    sums per corruption, averaged).  Examples are resampled jointly across cells.
    """
    first, second = _paired_arrays(a, b)
    if first.ndim != 2:
        raise RobustCSCError("bootstrap_statistic takes (cells, n) outcomes; stack the cells' outcomes")
    n_boot = _check_samples(n_boot)
    cells, n = first.shape
    both = np.concatenate([first, second]).astype(np.float32)  # (2 cells, n)
    observed = np.asarray(statistic(first.mean(axis=1)[None].astype(np.float64), second.mean(axis=1)[None].astype(np.float64)))
    rng = np.random.default_rng(seed)
    out = np.empty(n_boot, dtype=np.float64)
    chunk = max(1, _CHUNK_ELEMENTS // n)
    for start in range(0, n_boot, chunk):
        stop = min(n_boot, start + chunk)
        draws = rng.integers(0, n, size=(stop - start, n))
        # Counts of each example in each draw, then per-cell means as one matrix product.
        rows = stop - start
        flat = (np.arange(rows)[:, None] * n + draws).reshape(-1)
        weights = np.bincount(flat, minlength=rows * n).reshape(rows, n).astype(np.float32)
        means = (weights @ both.T) / n  # (draws, 2 cells)
        out[start:stop] = statistic(means[:, :cells].astype(np.float64), means[:, cells:].astype(np.float64))
    return float(observed.reshape(-1)[0]), out


def _check_samples(n_boot: object) -> int:
    if isinstance(n_boot, bool) or not isinstance(n_boot, numbers.Integral) or n_boot < 100:
        raise RobustCSCError(f"bootstrap samples {n_boot!r} is invalid; pass an integer >= 100, such as 2000")
    return int(n_boot)


def percentile_interval(draws: np.ndarray, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The percentile bootstrap interval of resampled values."""
    tail = (1 - _check_confidence(confidence)) / 2
    finite = draws[np.isfinite(draws)]
    if finite.size == 0:
        return math.nan, math.nan
    low, high = np.quantile(finite, [tail, 1 - tail])
    return float(low), float(high)


def bootstrap_p_value(draws: np.ndarray) -> float:
    """Two-sided bootstrap p-value of "the difference is 0": twice the smaller tail mass beyond 0."""
    finite = draws[np.isfinite(draws)]
    if finite.size == 0:
        return math.nan
    below = float((finite <= 0).mean())
    above = float((finite >= 0).mean())
    return min(1.0, 2 * min(below, above))


# ---------------------------------------------------------------- one comparison


@dataclass(frozen=True)
class Difference:
    """a - b on the same examples: the difference, its interval, p-value, test and sample size.

    test: "mcnemar" (one cell; p exact, interval from the bootstrap) or
    "bootstrap" (a mean over cells; p from the bootstrap distribution).
    """

    difference: float
    low: float
    high: float
    p_value: float
    test: str
    n: int
    cells: int = 1

    @property
    def significant(self) -> bool:
        return not math.isnan(self.p_value) and self.p_value < ALPHA

    def text(self) -> str:
        """E.g. '+2.0 pts [-1.1, +5.0], p = 0.21, not significant'."""
        return format_difference(self.difference, self.low, self.high, self.p_value)

    def as_dict(self) -> dict:
        return {"difference": self.difference, "low": self.low, "high": self.high, "p_value": self.p_value,
                "test": self.test, "n": self.n, "cells": self.cells, "significant": self.significant}


def compare(a: object, b: object, *, n_boot: int = BOOTSTRAP_SAMPLES, seed: int = 0, confidence: float = CONFIDENCE) -> Difference:
    """The paired difference mean(a) - mean(b): one cell (n,) -> exact McNemar p and a bootstrap interval;
    many cells on the same examples (cells, n) -> bootstrap interval and p over examples."""
    first, second = _paired_arrays(a, b)
    observed, draws = bootstrap_differences(first, second, n_boot=n_boot, seed=seed)
    low, high = percentile_interval(draws, confidence)
    if first.ndim == 1:
        return Difference(observed, low, high, mcnemar(first, second).p_value, "mcnemar", first.shape[0])
    return Difference(observed, low, high, bootstrap_p_value(draws), "bootstrap", first.shape[1], first.shape[0])


# ---------------------------------------------------------------- text


def percent(value: float, digits: int = 1) -> str:
    return "n/a" if _missing(value) else f"{value * 100:.{digits}f}%"


def format_accuracy(correct: int, n: int, confidence: float = CONFIDENCE) -> str:
    """'85.3% [82.1, 88.0] (n=500)'; without an interval below 2 examples."""
    if n < 2:
        return f"{percent(correct / n) if n else 'n/a'} (n={n})"
    low, high = wilson_interval(correct, n, confidence)
    return f"{correct / n * 100:.1f}% [{low * 100:.1f}, {high * 100:.1f}] (n={n})"


def format_difference(difference: float, low: float, high: float, p_value: float) -> str:
    """'+2.0 pts [-1.1, +5.0], p = 0.21, not significant' (percentage points)."""
    if _missing(difference):
        return "n/a"
    text = f"{difference * 100:+.1f} pts"
    if not (_missing(low) or _missing(high)):
        text += f" [{low * 100:+.1f}, {high * 100:+.1f}]"
    if _missing(p_value):
        return text
    verdict = "significant" if p_value < ALPHA else "not significant"
    return f"{text}, {format_p(p_value)}, {verdict}"


def format_p(p_value: float) -> str:
    if p_value < 0.001:
        return "p < 0.001"
    return f"p = {p_value:.3f}" if p_value < 0.01 else f"p = {p_value:.2f}"


__all__ = [
    "ALPHA",
    "BOOTSTRAP_SAMPLES",
    "CONFIDENCE",
    "Difference",
    "McNemar",
    "bootstrap_differences",
    "bootstrap_p_value",
    "bootstrap_statistic",
    "compare",
    "format_accuracy",
    "format_difference",
    "format_p",
    "mcnemar",
    "mean_interval",
    "percent",
    "percentile_interval",
    "stratified_differences",
    "wilson_columns",
    "wilson_interval",
]
