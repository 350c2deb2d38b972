"""Corruption metrics computed from result cells (the frame ResultsStore.to_frame returns).

Accuracies and errors are fractions in [0, 1]; multiply by 100 for the
percentages papers print. A frame may hold several models; every function
takes the model to report by name. Cells with an attack other than "none"
are ignored here: these are the corruption metrics.

- accuracy_table: corruption x severity accuracies (CIFAR-10-C style).
- summary: clean accuracy, RobustBench's mean over the 75 common cells, the
  severity-5 mean of test-time-adaptation papers, a mean per corruption.
- corruption_errors: Hendrycks & Dietterich's CE and mCE (and their relative
  versions) against a baseline model in the same frame.
- imagenet_mce: the same against AlexNet's published ImageNet-C errors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pandas as pd

from robust_csc.corruptions.names import ALL, COMMON, EXTRA
from robust_csc.errors import RobustCSCError

# The 15 common corruptions in Hendrycks' order, then the 4 extra ones of the
# CIFAR-10-C / ImageNet-C releases (reference facts, "Corruption benchmarks").
COMMON_CORRUPTIONS = COMMON
EXTRA_CORRUPTIONS = EXTRA
ALL_CORRUPTIONS = ALL
SEVERITIES = (1, 2, 3, 4, 5)
CLEAN = "none"  # the corruption name of a clean cell (severity 0)

# AlexNet's ImageNet-C top-1 errors, summed over the 5 severities and divided
# by 5 (so: its mean error per severity), in Hendrycks' order. Source: the
# reference facts, section "ImageNet-C", which copy Hendrycks & Dietterich's
# published normalisation constants.
ALEXNET_ERRORS = dict(
    zip(
        COMMON_CORRUPTIONS,
        (
            0.886428, 0.894468, 0.922640, 0.819880, 0.826268,
            0.785948, 0.798360, 0.866816, 0.826572, 0.819324,
            0.564592, 0.853204, 0.646056, 0.717840, 0.606500,
        ),
    )
)
# AlexNet's clean top-1 error on ImageNet ("about 43.5%", reference facts,
# section "ImageNet-C"); used only for the relative mCE.
ALEXNET_CLEAN_ERROR = 0.435

_NEEDED_COLUMNS = ("model", "corruption", "severity", "n", "correct")


def _model_cells(df: pd.DataFrame, model: str) -> dict[tuple[str, int], float]:
    """{(corruption, severity): accuracy} of one model's unattacked cells; clean is (CLEAN, 0)."""
    if not isinstance(df, pd.DataFrame):
        raise RobustCSCError(f"the cells are a {type(df).__name__}; pass the DataFrame ResultsStore.to_frame returns")
    missing = [name for name in _NEEDED_COLUMNS if name not in df.columns]
    if missing:
        raise RobustCSCError(
            f"the cells frame lacks the columns {', '.join(missing)}; pass the DataFrame ResultsStore.to_frame returns"
        )
    present = sorted(str(name) for name in df["model"].unique())
    if model not in present:
        listed = ", ".join(present) if present else "none"
        raise RobustCSCError(f"model {model!r} is not in the cells (models present: {listed}); pass one of those names")
    rows = df[df["model"] == model]
    if "attack" in rows.columns:
        rows = rows[rows["attack"] == "none"]
    cells: dict[tuple[str, int], float] = {}
    for corruption, severity, n, correct in zip(rows["corruption"], rows["severity"], rows["n"], rows["correct"]):
        key = (str(corruption), int(severity))
        if key in cells:
            raise RobustCSCError(
                f"model {model!r} has several cells for {_name(key)}; filter the frame to one data set, "
                "split, checkpoint and lambda setting first"
            )
        cells[key] = int(correct) / int(n) if int(n) > 0 else math.nan
    return cells


def _name(key: tuple[str, int]) -> str:
    corruption, severity = key
    return "clean" if corruption == CLEAN else f"{corruption} severity {severity}"


def _corruption_order(corruptions: set[str]) -> list[str]:
    known = [c for c in ALL_CORRUPTIONS if c in corruptions]
    return known + sorted(corruptions - set(ALL_CORRUPTIONS) - {CLEAN})


def accuracy_table(df: pd.DataFrame, model: str) -> pd.DataFrame:
    """Accuracy per corruption (rows, Hendrycks' order then the extras) and severity (columns 1..5, "mean").

    Only corruptions with at least one cell appear; a missing cell is NaN, and
    so is the mean of a corruption that lacks any severity.
    """
    cells = _model_cells(df, model)
    order = _corruption_order({c for c, _ in cells})
    table = pd.DataFrame(
        [[cells.get((c, s), math.nan) for s in SEVERITIES] for c in order],
        index=pd.Index(order, name="corruption"),
        columns=list(SEVERITIES),
        dtype="float64",
    )
    table["mean"] = table[list(SEVERITIES)].mean(axis=1, skipna=False)
    table.columns.name = "severity"
    return table


def summary(df: pd.DataFrame, model: str) -> dict:
    """The headline numbers of one model.

    Returns a dict with
      clean_accuracy      accuracy on the clean cell (NaN if absent),
      mean_accuracy_75    mean accuracy over the 15 common corruptions x 5
                          severities (RobustBench), NaN unless all 75 exist,
      missing_75          how many of those 75 cells are missing,
      severity5_accuracy  mean accuracy over the 15 common corruptions at
                          severity 5 (test-time-adaptation papers), NaN unless
                          all 15 exist,
      missing_severity5   how many of those 15 cells are missing,
      missing_cells       the missing common cells as (corruption, severity),
      per_corruption      {corruption: mean over severities 1..5}, NaN for a
                          corruption that lacks a severity.
    """
    cells = _model_cells(df, model)
    common = [(c, s) for c in COMMON_CORRUPTIONS for s in SEVERITIES]
    missing = [key for key in common if key not in cells]
    missing5 = [key for key in missing if key[1] == 5]
    mean75 = math.fsum(cells[key] for key in common) / len(common) if not missing else math.nan
    mean5 = (
        math.fsum(cells[(c, 5)] for c in COMMON_CORRUPTIONS) / len(COMMON_CORRUPTIONS) if not missing5 else math.nan
    )
    table = accuracy_table(df, model)
    return {
        "model": model,
        "clean_accuracy": cells.get((CLEAN, 0), math.nan),
        "mean_accuracy_75": mean75,
        "missing_75": len(missing),
        "severity5_accuracy": mean5,
        "missing_severity5": len(missing5),
        "missing_cells": missing,
        "per_corruption": {c: float(v) for c, v in table["mean"].items()},
    }


@dataclass(frozen=True, eq=False)
class CorruptionErrors:
    """CE per corruption and mCE of a model against a baseline, as fractions (1.0 = as bad as the baseline).

    ce / relative_ce: Series indexed by corruption (NaN where the model lacks
    a severity, or where the relative denominator is 0). mce / relative_mce:
    means over the 15 common corruptions, NaN unless all 15 CEs exist
    (relative ones also need the model's clean cell). missing_cells lists the
    model's missing common cells (and clean, for the relative numbers).
    """

    model: str
    baseline: str
    ce: pd.Series
    mce: float
    relative_ce: pd.Series
    relative_mce: float
    missing_cells: list = field(default_factory=list)

    def table(self) -> pd.DataFrame:
        """CE and relative CE per corruption with an "mCE" row (the mean over the 15 common)."""
        out = pd.DataFrame({"ce": self.ce, "relative_ce": self.relative_ce})
        out.loc["mCE"] = [self.mce, self.relative_mce]
        out.index.name = "corruption"
        return out


def _ratio(numerator: float, denominator: float) -> float:
    if math.isnan(numerator) or math.isnan(denominator) or denominator == 0:
        return math.nan
    return numerator / denominator


def _mean_common(series: pd.Series) -> float:
    values = [series.get(c, math.nan) for c in COMMON_CORRUPTIONS]
    if any(math.isnan(v) for v in values):
        return math.nan
    return math.fsum(values) / len(values)


def _errors(
    model: str,
    baseline_name: str,
    cells: dict[tuple[str, int], float],
    baseline_error,
    baseline_clean_error: float,
    corruptions: list[str],
) -> CorruptionErrors:
    """CE_c = sum_s E(s,c) / sum_s E_base(s,c); relative: both sides minus their own clean error."""
    clean_error = 1.0 - cells[(CLEAN, 0)] if (CLEAN, 0) in cells else math.nan
    ce: dict[str, float] = {}
    rel: dict[str, float] = {}
    for c in corruptions:
        if any((c, s) not in cells for s in SEVERITIES):
            ce[c] = rel[c] = math.nan
            continue
        errors = [1.0 - cells[(c, s)] for s in SEVERITIES]
        base = [baseline_error(c, s) for s in SEVERITIES]
        ce[c] = _ratio(math.fsum(errors), math.fsum(base))
        rel[c] = _ratio(
            math.fsum(e - clean_error for e in errors),
            math.fsum(b - baseline_clean_error for b in base),
        )
    ce_series = pd.Series(ce, dtype="float64", name="ce")
    rel_series = pd.Series(rel, dtype="float64", name="relative_ce")
    ce_series.index.name = rel_series.index.name = "corruption"
    missing = [(c, s) for c in COMMON_CORRUPTIONS for s in SEVERITIES if (c, s) not in cells]
    if (CLEAN, 0) not in cells:
        missing.insert(0, (CLEAN, 0))
    return CorruptionErrors(
        model=model,
        baseline=baseline_name,
        ce=ce_series,
        mce=_mean_common(ce_series),
        relative_ce=rel_series,
        relative_mce=_mean_common(rel_series),
        missing_cells=missing,
    )


def corruption_errors(df: pd.DataFrame, model: str, baseline: str) -> CorruptionErrors:
    """Hendrycks & Dietterich's CE and mCE of model against baseline, both from the cells frame.

    CE_c = sum_s E_model(s,c) / sum_s E_baseline(s,c) for every corruption the
    model has all 5 severities of; mCE = mean CE over the 15 common ones.
    Relative CE subtracts each model's own clean error from each of its errors.
    The baseline must have every cell the model has (clean included).
    """
    cells = _model_cells(df, model)
    base_cells = _model_cells(df, baseline)
    order = _corruption_order({c for c, _ in cells})
    complete = [c for c in order if all((c, s) in cells for s in SEVERITIES)]
    needed = [(c, s) for c in complete for s in SEVERITIES]
    if (CLEAN, 0) in cells:
        needed.insert(0, (CLEAN, 0))
    lacking = [key for key in needed if key not in base_cells]
    if lacking:
        shown = ", ".join(_name(key) for key in lacking[:10])
        more = f" and {len(lacking) - 10} more" if len(lacking) > 10 else ""
        raise RobustCSCError(
            f"baseline {baseline!r} lacks the cells {shown}{more}; evaluate the baseline on them first"
        )
    base_clean = 1.0 - base_cells[(CLEAN, 0)] if (CLEAN, 0) in base_cells else math.nan
    return _errors(
        model,
        baseline,
        cells,
        lambda c, s: 1.0 - base_cells[(c, s)],
        base_clean,
        order,
    )


def imagenet_mce(df: pd.DataFrame, model: str) -> CorruptionErrors:
    """CE and mCE of model against AlexNet's published ImageNet-C errors (the 15 common corruptions).

    Since ALEXNET_ERRORS[c] is AlexNet's error summed over severities / 5,
    CE_c = sum_s E(s,c) / (5 * ALEXNET_ERRORS[c]); the relative CE uses
    ALEXNET_CLEAN_ERROR. The model's cells must be ImageNet-C top-1 accuracies.
    """
    cells = _model_cells(df, model)
    return _errors(
        model,
        "alexnet (published)",
        cells,
        lambda c, s: ALEXNET_ERRORS[c],  # summed over the 5 severities gives 5 * the published value
        ALEXNET_CLEAN_ERROR,
        list(COMMON_CORRUPTIONS),
    )


__all__ = [
    "COMMON_CORRUPTIONS",
    "EXTRA_CORRUPTIONS",
    "ALL_CORRUPTIONS",
    "ALEXNET_ERRORS",
    "ALEXNET_CLEAN_ERROR",
    "CorruptionErrors",
    "accuracy_table",
    "summary",
    "corruption_errors",
    "imagenet_mce",
]
