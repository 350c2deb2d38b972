"""The report's uncertainty, computed from the store's per-example outcomes.

- a single cell: the Wilson interval of correct / n (needs only the counts);
- a mean over cells (mean corruption accuracy, a severity's mean): a
  bootstrap interval over images, one draw of images for every cell;
- a paired difference (tuned vs trained lambda, model vs baseline, one
  attack vs another): exact McNemar for one cell, a paired bootstrap over
  images for means and for mCE.

Cells stored without outcomes (robust-csc < 0.2) get Wilson intervals but no
bootstrap interval and no paired test; the report says so once.
"""

from __future__ import annotations

import math
from typing import Iterable

import numpy as np
import pandas as pd

from robust_csc.evaluation.metrics import SEVERITIES
from robust_csc.evaluation.outcomes import Outcomes
from robust_csc.evaluation.stats import Difference, bootstrap_statistic, compare, mean_interval, percentile_interval, wilson_columns

NAN = math.nan


def outcomes_of(value: object) -> Outcomes | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return Outcomes.from_json(value, "a stored cell")


def stacked(rows: pd.DataFrame) -> np.ndarray | None:
    """(cells, n) outcomes of rows aligned on one image order; None if any lacks them or holds other images."""
    if rows.empty or "outcomes" not in rows:
        return None
    outcomes = [outcomes_of(v) for v in rows["outcomes"]]
    if any(o is None for o in outcomes):
        return None
    first = outcomes[0]
    aligned = []
    for other in outcomes:
        if other.n != first.n or not np.array_equal(np.sort(other.index), np.sort(first.index)):
            return None
        aligned.append(first.aligned(other)[1])
    return np.stack(aligned)


def wilson_bounds(rows: pd.DataFrame) -> tuple[list[float], list[float]]:
    return wilson_columns(rows["correct"].tolist(), rows["n"].tolist())


def mean_bounds(rows: pd.DataFrame) -> tuple[float, float]:
    """The bootstrap interval of the mean accuracy over rows' cells (NaN without outcomes)."""
    flags = stacked(rows)
    if flags is None or flags.shape[1] < 2:
        return NAN, NAN
    _, low, high = mean_interval(flags)
    return low, high


def accuracy_bounds(rows: pd.DataFrame) -> tuple[float, float]:
    """The 95% interval of rows' accuracy: Wilson for one cell, a bootstrap over images for a mean of several,
    NaN for none."""
    if rows.empty:
        return NAN, NAN
    if len(rows) == 1:
        low, high = wilson_bounds(rows)
        return low[0], high[0]
    return mean_bounds(rows)


def _by_cell(rows: pd.DataFrame) -> dict[tuple[str, int], pd.Series]:
    return {(r["corruption"], int(r["severity"])): r for _, r in rows.iterrows()}


def paired_cells(a: pd.DataFrame, b: pd.DataFrame, cells: Iterable[tuple[str, int]] | None = None):
    """(a (cells, n), b (cells, n)) outcomes of the cells both have, aligned image by image; None if impossible."""
    if "outcomes" not in a or "outcomes" not in b:
        return None
    first, second = _by_cell(a), _by_cell(b)
    keys = [k for k in (cells if cells is not None else first) if k in first and k in second]
    if not keys:
        return None
    left, right = [], []
    for key in keys:
        x, y = outcomes_of(first[key]["outcomes"]), outcomes_of(second[key]["outcomes"])
        if x is None or y is None:
            return None
        try:
            fx, fy = x.aligned(y)
        except Exception:  # other images: no paired test
            return None
        if left and fx.size != left[0].size:
            return None
        left.append(fx)
        right.append(fy)
    if any(not np.array_equal(np.sort(outcomes_of(first[k]["outcomes"]).index),
                              np.sort(outcomes_of(first[keys[0]]["outcomes"]).index)) for k in keys):
        return None  # cells on different images cannot share one draw of images
    return np.stack(left), np.stack(right)


def paired_difference(a: pd.DataFrame, b: pd.DataFrame, cells=None) -> Difference | None:
    """mean accuracy of a minus b over their common cells, paired image by image (McNemar for one cell)."""
    pair = paired_cells(a, b, cells)
    if pair is None:
        return None
    left, right = pair
    if left.shape[1] < 2:
        return None
    return compare(left[0], right[0]) if left.shape[0] == 1 else compare(left, right)


def mce_interval(model_rows: pd.DataFrame, base_rows: pd.DataFrame, corruptions: list[str]) -> tuple[float, float]:
    """The bootstrap interval of mCE (mean over corruptions of sum_s error / sum_s baseline error), paired images."""
    cells = [(c, s) for c in corruptions for s in SEVERITIES]
    pair = paired_cells(model_rows, base_rows, cells)
    if pair is None or pair[0].shape[0] != len(cells):
        return NAN, NAN
    groups = len(corruptions)

    def mce(acc_model: np.ndarray, acc_base: np.ndarray) -> np.ndarray:
        errors = (1 - acc_model).reshape(-1, groups, len(SEVERITIES)).sum(axis=2)
        base = (1 - acc_base).reshape(-1, groups, len(SEVERITIES)).sum(axis=2)
        with np.errstate(divide="ignore", invalid="ignore"):
            return (errors / base).mean(axis=1)

    _, draws = bootstrap_statistic(mce, pair[0], pair[1])
    return percentile_interval(draws)


def versions_of(rows: pd.DataFrame) -> list[str]:
    """The robust-csc versions that computed rows ('< 0.2' for cells that do not say)."""
    found = {str(v) if isinstance(v, str) and v else "< 0.2" for v in rows["code_version"]}
    return sorted(found)


__all__ = [
    "mce_interval",
    "mean_bounds",
    "outcomes_of",
    "paired_cells",
    "paired_difference",
    "stacked",
    "versions_of",
    "wilson_bounds",
]
