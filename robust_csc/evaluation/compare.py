"""Compare two series of a results store on the same images: per cell and over their common cells.

A series is a model (with its checkpoint, data set, split and lambda setting);
two series are compared on the cells both have (same corruption, severity,
attack and epsilon), image by image: exact McNemar per cell, a paired
bootstrap over images for the mean over the common cells.

    frame, mean = compare_series("results.sqlite", "sdnet18@policy:7f2753419926", "sdnet18@trained")
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from robust_csc.errors import RobustCSCError
from robust_csc.evaluation.outcomes import Outcomes
from robust_csc.evaluation.stats import Difference, compare, format_difference
from robust_csc.evaluation.store import ResultsStore, open_store

SERIES_FIELDS = ("model", "checkpoint_sha256", "dataset", "split", "lambda_setting")


@dataclass(frozen=True)
class SeriesRef:
    """What names a series on the command line: MODEL[@LAMBDA_SETTING], narrowed by data set, split, checkpoint."""

    model: str
    lambda_setting: str = "trained"

    @classmethod
    def parse(cls, text: str) -> "SeriesRef":
        model, _, setting = str(text).strip().partition("@")
        if not model:
            raise RobustCSCError(f"series {text!r} names no model; write MODEL or MODEL@LAMBDA_SETTING, e.g. sdnet18@trained")
        return cls(model, setting or "trained")

    def __str__(self) -> str:
        return f"{self.model}@{self.lambda_setting}"


def _rows(frame: pd.DataFrame, ref: SeriesRef, narrow: dict) -> pd.DataFrame:
    rows = frame[(frame["model"] == ref.model) & (frame["lambda_setting"] == ref.lambda_setting)]
    for column, value in narrow.items():
        if value is not None:
            rows = rows[rows[column].astype(str).str.startswith(value) if column == "checkpoint_sha256" else rows[column] == value]
    if rows.empty:
        present = sorted({f"{m}@{s}" for m, s in zip(frame["model"], frame["lambda_setting"])})
        raise RobustCSCError(f"no cells of {ref} in the store (with {narrow}); pick one of {', '.join(present[:12])}")
    series = rows[list(SERIES_FIELDS)].drop_duplicates()
    if len(series) > 1:
        listed = "; ".join(f"{r.dataset} {r.split} ({r.checkpoint_sha256[:8]})" for r in series.itertuples())
        raise RobustCSCError(f"{ref} names {len(series)} series ({listed}); narrow it with --store-dataset, --split or --checkpoint-sha")
    return rows


def compare_series(
    store: ResultsStore | str | Path,
    a: str | SeriesRef,
    b: str | SeriesRef,
    *,
    dataset: str | None = None,
    split: str | None = None,
    attack: str = "none",
    checkpoint: str | None = None,
) -> tuple[pd.DataFrame, Difference | None]:
    """(one row per common cell: accuracies, difference with interval and McNemar p, verdict; the mean difference
    over the common cells, or None with one cell).  attack: "none" for corruption cells, or an attack column."""
    a = a if isinstance(a, SeriesRef) else SeriesRef.parse(a)
    b = b if isinstance(b, SeriesRef) else SeriesRef.parse(b)
    if isinstance(store, (str, Path)) and not Path(store).exists():  # a comparison never creates a store
        raise RobustCSCError(f"no results store at {store}; pass the file robust-csc evaluate or attack wrote (--store)")
    handle, owned = open_store(store)
    try:
        frame = handle.to_frame(attack=attack)
    finally:
        if owned:
            handle.close()
    narrow = {"dataset": dataset, "split": split}
    first = _rows(frame, a, {**narrow, "checkpoint_sha256": checkpoint if a.model == b.model else None})
    second = _rows(frame, b, narrow if (dataset or split) else {"dataset": first["dataset"].iloc[0], "split": first["split"].iloc[0]})
    key = ["corruption", "severity", "epsilon"]
    merged = first.merge(second, on=key, suffixes=(" a", " b"))
    if merged.empty:
        raise RobustCSCError(f"{a} and {b} share no cell (same corruption, severity and epsilon); evaluate both on the same suite")
    records, stacked_a, stacked_b = [], [], []
    for row in merged.to_dict("records"):
        if row["outcomes a"] is None or row["outcomes b"] is None:
            raise RobustCSCError(
                f"the cell {row['corruption']} {row['severity']} was stored without per-example outcomes (robust-csc < 0.2), "
                "so it cannot be paired; run it again with --recompute"
            )
        left = Outcomes.from_json(row["outcomes a"])
        right = Outcomes.from_json(row["outcomes b"])
        flags = left.aligned(right, f"{a} and {b} in cell {row['corruption']} {row['severity']}")
        difference = compare(*flags) if left.n >= 2 else None
        records.append({
            "corruption": row["corruption"], "severity": int(row["severity"]), "epsilon": float(row["epsilon"]),
            "n": left.n, "accuracy a": left.count / left.n, "accuracy b": right.count / right.n,
            "difference": difference.difference if difference else np.nan,
            "low": difference.low if difference else np.nan, "high": difference.high if difference else np.nan,
            "p_value": difference.p_value if difference else np.nan,
            "verdict": ("significant" if difference.significant else "not significant") if difference else "n < 2",
        })
        stacked_a.append(flags[0])
        stacked_b.append(flags[1])
    out = pd.DataFrame.from_records(records)
    mean = None
    if len(records) > 1 and len({f.size for f in stacked_a}) == 1 and stacked_a[0].size >= 2:
        mean = compare(np.stack(stacked_a), np.stack(stacked_b))
    return out, mean


def comparison_lines(frame: pd.DataFrame, mean: Difference | None, a: str, b: str) -> list[str]:
    """The printable comparison: a line per cell, then the mean."""
    lines = [f"{a} minus {b}, on the same images (accuracy in %, difference in points with its 95% paired bootstrap "
             "interval, exact McNemar p):"]
    for row in frame.to_dict("records"):
        cell = "clean" if row["corruption"] == "none" else f"{row['corruption']} {row['severity']}"
        if row["epsilon"]:
            cell += f" eps {row['epsilon']:g}"
        text = format_difference(row["difference"], row["low"], row["high"], row["p_value"])
        lines.append(f"  {cell:<24} n={row['n']:<6} {row['accuracy a'] * 100:5.1f} vs {row['accuracy b'] * 100:5.1f}  {text}")
    if mean is not None:
        lines.append(f"mean over the {mean.cells} common cells: {mean.text()} (bootstrap over the {mean.n} images)")
    significant = int((frame["verdict"] == "significant").sum())
    lines.append(f"{significant} of {len(frame)} cells differ significantly at 5%")
    return lines


__all__ = ["SeriesRef", "compare_series", "comparison_lines"]
