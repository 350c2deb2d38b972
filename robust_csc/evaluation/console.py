"""What evaluate prints: per setting, the accuracy table with intervals and the means with theirs.

Every accuracy is printed with its uncertainty: a cell as percent ± half the
width of its 95 % Wilson interval (n is said once, per table), a mean over
cells with a bootstrap interval over images (every cell holds the same
images, so one draw of images serves them all).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from robust_csc.corruptions.names import COMMON
from robust_csc.evaluation.metrics import CLEAN, SEVERITIES
from robust_csc.evaluation.outcomes import Outcomes
from robust_csc.evaluation.stats import format_accuracy, mean_interval, wilson_interval


def _cell_text(correct: int, n: int) -> str:
    if n < 2:
        return f"{correct / n * 100:.1f}" if n else "-"
    low, high = wilson_interval(correct, n)
    return f"{correct / n * 100:.1f}±{(high - low) * 50:.1f}"


def setting_lines(rows: pd.DataFrame, setting: str, title: str = "") -> list[str]:
    """The lines of one lambda setting's cells (rows of a store frame, one model, split and setting)."""
    heading = f"lambda {setting}" + (f" ({title})" if title else "")
    corrupted = rows[rows["corruption"] != CLEAN]
    clean = rows[rows["corruption"] == CLEAN]
    lines: list[str] = []
    sizes = sorted({int(n) for n in rows["n"]})
    size = f"n = {sizes[0]} images per cell" if len(sizes) == 1 else f"n = {sizes[0]} to {sizes[-1]} images per cell"
    if not corrupted.empty:
        lines.append(f"{heading}: accuracy in % by corruption and severity; {size}; ± half the 95% Wilson interval")
        table = {}
        for corruption in dict.fromkeys(corrupted["corruption"]):
            part = corrupted[corrupted["corruption"] == corruption]
            by_severity = {int(s): (int(k), int(m)) for s, k, m in zip(part["severity"], part["correct"], part["n"])}
            table[corruption] = [_cell_text(*by_severity[s]) if s in by_severity else "-" for s in SEVERITIES]
        frame = pd.DataFrame.from_dict(table, orient="index", columns=[str(s) for s in SEVERITIES])
        lines.extend(frame.to_string().splitlines())
    else:
        lines.append(f"{heading}: {size}")
    if not clean.empty:
        row = clean.iloc[0]
        lines.append(f"clean accuracy {format_accuracy(int(row['correct']), int(row['n']))}")
    if not corrupted.empty:
        lines.append(_mean_line(corrupted, "mean over the cells run"))
        common = corrupted[corrupted["corruption"].isin(COMMON)]
        if len(common) == len(COMMON) * len(SEVERITIES):  # the headline means exist for a complete suite only
            lines.append(_mean_line(common, "mean over the 15 common corruptions x 5 severities (RobustBench)"))
            lines.append(_mean_line(common[common["severity"] == 5], "mean at severity 5 (test-time adaptation papers)"))
    lines.append("")
    return lines


def _mean_line(rows: pd.DataFrame, what: str) -> str:
    if len(rows) == 1:
        row = rows.iloc[0]
        return f"{what} (1 cell): {format_accuracy(int(row['correct']), int(row['n']))}"
    accuracies = (rows["correct"] / rows["n"]).tolist()
    mean = math.fsum(accuracies) / len(accuracies)
    flags = _stacked(rows)
    if flags is None:
        return f"{what} ({len(rows)} cells): {mean * 100:.1f}% (no interval: cells stored without per-example outcomes)"
    _, low, high = mean_interval(flags)
    return (f"{what} ({len(rows)} cells): {mean * 100:.1f}% [{low * 100:.1f}, {high * 100:.1f}] "
            f"(95% bootstrap over the {flags.shape[1]} images)")


def _stacked(rows: pd.DataFrame) -> np.ndarray | None:
    """(cells, n) outcomes aligned on one order of images, or None when a cell lacks them or holds other images."""
    outcomes = []
    for text in rows["outcomes"]:
        if text is None or (isinstance(text, float) and math.isnan(text)):
            return None
        outcomes.append(Outcomes.from_json(text))
    first = outcomes[0]
    try:
        return np.stack([first.aligned(other)[1] for other in outcomes])
    except Exception:  # cells on different images: no joint interval
        return None


def result_lines(result: Any, title: str = "") -> list[str]:
    """The printable summary of an EvalResult: each lambda setting's table and means, then its notes."""
    frame = result.frame
    rows = frame[(frame["attack"] == "none") & (frame["split"] == result.split)]
    lines: list[str] = []
    for setting in result.tables:
        part = rows[rows["lambda_setting"] == setting]
        if not part.empty:
            lines.extend(setting_lines(part, setting, title))
    lines.extend(result.notes())
    return lines


__all__ = ["result_lines", "setting_lines"]
