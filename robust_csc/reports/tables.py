"""The report's tables as pandas DataFrames, computed from the store's cells only.

Accuracies stay fractions in [0, 1] here (and in the CSV files); the
Markdown and LaTeX files print them as percentages (robust_csc.reports.formats).
The corruption numbers come from robust_csc.evaluation.metrics (accuracy_table,
summary, corruption_errors); nothing here recomputes what those define.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pandas as pd

from robust_csc.errors import RobustCSCError
from robust_csc.evaluation.metrics import SEVERITIES, accuracy_table, corruption_errors, summary
from robust_csc.reports.cells import (
    CLEAN,
    TRAINED,
    WORST_CASE,
    Cells,
    Series,
    attack_norm,
    attack_order,
    chosen_lambda,
    corruption_order,
    format_epsilon,
    lambda_order,
    series_of,
)

# How the Markdown / LaTeX files print a column (the CSV keeps the raw numbers).
PERCENT, POINTS, LAMBDA, INTEGER, RATIO, TEXT = "percent", "points", "lambda", "integer", "ratio", "text"


@dataclass
class Table:
    """A table to write: name (file stem), title, a sentence on how to read it, the frame, column kinds."""

    name: str
    title: str
    about: str
    frame: pd.DataFrame
    kinds: dict = field(default_factory=dict)  # column -> PERCENT | POINTS | LAMBDA | INTEGER | RATIO | TEXT
    index: bool = False  # whether the frame's index is a column of the table (the corruption tables)
    formats: tuple = ("csv", "md", "tex")


# ---------------------------------------------------------------- per series: corruption x severity


def severity_table(rows: pd.DataFrame, series: Series) -> pd.DataFrame:
    """Accuracy per corruption (rows, Hendrycks' order then the extras) and severity 1..5 and mean, plus a mean row.

    A missing cell is NaN, and so is any mean that would need it.
    """
    table = accuracy_table(rows, series.model)
    table.columns = [str(c) for c in table.columns]
    table.columns.name = None
    if not table.empty:
        table.loc["mean"] = table.mean(axis=0, skipna=False)
    return table


def series_tables(cells: Cells) -> list[tuple[Series, Table]]:
    out = []
    frame = cells.corruption
    for series in series_of(frame):
        rows = series.rows(frame)
        table = severity_table(rows, series)
        if table.empty:  # a clean cell only: it shows in the summary
            continue
        kinds = {c: PERCENT for c in table.columns}
        about = (
            "Accuracy on each corruption (rows, Hendrycks' order) at severities 1 to 5 and their mean; "
            "the last row is the mean over the corruptions. A dash is a cell not in the store."
        )
        out.append((series, Table(f"corruptions__{series.slug()}", series.title(), about, table, kinds, index=True)))
    return out


# ---------------------------------------------------------------- the summary across models


def _cells_mean(rows: pd.DataFrame) -> tuple[float, int]:
    corrupted = rows[rows["corruption"] != CLEAN]
    values = corrupted["accuracy"].dropna()
    return (math.fsum(values) / len(values) if len(values) else math.nan), int(len(values))


def _baseline_series(frame: pd.DataFrame, baseline: str, series: Series) -> Series | None:
    """The baseline's series on the same data set and split at its trained lambdas (one checkpoint only)."""
    candidates = [
        s
        for s in series_of(frame[frame["model"] == baseline])
        if s.dataset == series.dataset and s.split == series.split and s.lambda_setting == TRAINED
    ]
    return candidates[0] if len(candidates) == 1 else None


def _mce(frame: pd.DataFrame, base_frame: pd.DataFrame, series: Series, baseline: str | None, notes: list[str]) -> dict:
    out = {"mce": math.nan, "relative_mce": math.nan, "ce_mean_run": math.nan}
    if baseline is None:
        return out
    base = _baseline_series(base_frame, baseline, series)
    if base is None:
        notes.append(f"{series.model} {series.lambda_setting} on {series.data}")
        return out
    # corruption_errors compares models by name: give the two series two names in one frame.
    both = pd.concat([series.rows(frame).assign(model="series"), base.rows(base_frame).assign(model="baseline")])
    try:
        errors = corruption_errors(both, "series", "baseline")
    except RobustCSCError as err:
        notes.append(f"{series.model} {series.lambda_setting} on {series.data} ({err})")
        return out
    ce = errors.ce.dropna()
    out.update(mce=errors.mce, relative_mce=errors.relative_mce, ce_mean_run=float(ce.mean()) if len(ce) else math.nan)
    return out


def corruption_summary(cells: Cells, baseline: str | None, notes: list[str], reference: Cells | None = None) -> pd.DataFrame:
    """One row per corruption series: clean accuracy, the means, mCE against the baseline (looked up in reference)."""
    frame = cells.corruption
    base_frame = (reference or cells).corruption
    records = []
    for series in series_of(frame):
        rows = series.rows(frame)
        figures = summary(rows, series.model)
        mean_run, n_run = _cells_mean(rows)
        records.append(
            {
                "model": series.model,
                "checkpoint_sha256": series.checkpoint_sha256,
                "lambda_setting": series.lambda_setting,
                "corruption_data": series.data,
                "clean": figures["clean_accuracy"],
                "cells_run": n_run,
                "mean_cells_run": mean_run,
                "mean_75": figures["mean_accuracy_75"],
                "severity5_mean": figures["severity5_accuracy"],
                **_mce(frame, base_frame, series, baseline, notes),
            }
        )
    return pd.DataFrame.from_records(records, columns=_SUMMARY_COLUMNS)


_SUMMARY_COLUMNS = [
    "model", "checkpoint_sha256", "lambda_setting", "corruption_data", "clean", "cells_run",
    "mean_cells_run", "mean_75", "severity5_mean", "mce", "relative_mce", "ce_mean_run",
]
_SUMMARY_KINDS = {
    "model": TEXT, "checkpoint_sha256": TEXT, "lambda_setting": TEXT, "corruption_data": TEXT,
    "clean": PERCENT, "cells_run": INTEGER, "mean_cells_run": PERCENT, "mean_75": PERCENT,
    "severity5_mean": PERCENT, "mce": PERCENT, "relative_mce": PERCENT, "ce_mean_run": PERCENT,
    "attack_data": TEXT,
}


def attack_column(attack: str, epsilon: float) -> str:
    name, norm = attack_norm(attack)
    return f"{name} {norm} {format_epsilon(epsilon, norm)}".replace("  ", " ")


def attack_columns(frame: pd.DataFrame) -> list[tuple[str, float]]:
    """(attack, epsilon) pairs in the order tables and plots show them: per norm, worst case last, eps rising."""
    pairs = frame[["attack", "epsilon"]].drop_duplicates().itertuples(index=False, name=None)
    return sorted(pairs, key=lambda pair: (attack_order(pair[0]), pair[1]))


def robustness_table(cells: Cells) -> pd.DataFrame:
    """One row per attacked series; a column per (attack, epsilon): robust accuracy; the checks that passed."""
    frame = cells.attack
    pairs = attack_columns(frame)
    records = []
    for series in series_of(frame):
        rows = series.rows(frame)
        record = {
            "model": series.model,
            "checkpoint_sha256": series.checkpoint_sha256,
            "lambda_setting": series.lambda_setting,
            "attack_data": series.data,
        }
        by_pair = {(a, e): acc for a, e, acc in zip(rows["attack"], rows["epsilon"], rows["accuracy"])}
        for attack, epsilon in pairs:
            record[attack_column(attack, epsilon)] = by_pair.get((attack, epsilon), math.nan)
        passed = total = 0
        for attack, extras in zip(rows["attack"], rows["extras"]):
            if attack_norm(attack)[0] != WORST_CASE:
                continue
            for check in (extras.get("checks") or {}).values():
                total += 1
                passed += bool(isinstance(check, dict) and check.get("passed"))
        record["checks_passed"] = f"{passed}/{total}" if total else ""
        records.append(record)
    columns = ["model", "checkpoint_sha256", "lambda_setting", "attack_data"]
    columns += [attack_column(a, e) for a, e in pairs] + ["checks_passed"]
    return pd.DataFrame.from_records(records, columns=columns)


def robustness_kinds(table: pd.DataFrame) -> dict:
    kinds = {c: PERCENT for c in table.columns}
    kinds.update({c: TEXT for c in ("model", "checkpoint_sha256", "lambda_setting", "attack_data", "checks_passed")})
    return kinds


def summary_table(cells: Cells, baseline: str | None, notes: list[str], reference: Cells | None = None) -> Table:
    """The corruption summary joined to the attack results of the same model, checkpoint and lambda setting.

    Each side names its own data set and split (corruption_data, attack_data);
    a model evaluated on two corruption splits gets a row per split.
    """
    corr = corruption_summary(cells, baseline, notes, reference)
    attacks = robustness_table(cells).drop(columns=["checks_passed"])
    keys = ["model", "checkpoint_sha256", "lambda_setting"]
    if attacks.empty:
        table = corr.assign(attack_data=pd.Series(dtype="object"))
    elif corr.empty:
        table = attacks.reindex(columns=_SUMMARY_COLUMNS + list(attacks.columns[3:]))
    else:
        table = corr.merge(attacks, on=keys, how="outer", sort=False)
    order = sorted(range(len(table)), key=lambda i: (
        table["model"].iloc[i], table["checkpoint_sha256"].iloc[i], lambda_order(table["lambda_setting"].iloc[i]),
        str(table["corruption_data"].iloc[i]), str(table["attack_data"].iloc[i]),
    ))
    table = table.iloc[order].reset_index(drop=True)
    kinds = {c: _SUMMARY_KINDS.get(c, PERCENT) for c in table.columns}
    about = (
        "One row per model, checkpoint and lambda setting. clean: clean accuracy; mean_cells_run: mean accuracy over "
        "the corruption cells in the store (cells_run of them); mean_75: RobustBench's mean over the 15 common "
        "corruptions x 5 severities; severity5_mean: the mean at severity 5; mce / relative_mce: Hendrycks' mCE "
        "against the baseline (needs all 15 common corruptions), ce_mean_run: the mean CE over the corruptions run; "
        "the other columns: robust accuracy per attack, norm and epsilon on attack_data. A dash: not in the store."
    )
    return Table("summary", "Clean, corruption and adversarial accuracy per model", about, table, kinds)


def robustness(cells: Cells) -> Table:
    table = robustness_table(cells)
    about = (
        "Robust accuracy (the fraction of examples still classified correctly under attack) per attack, norm and "
        "epsilon; worst-case counts an example as robust only if it survived every attack run at that budget. "
        "checks_passed: the attack runner's sanity checks that passed."
    )
    return Table("robustness", "Robust accuracy per attack and epsilon", about, table, robustness_kinds(table))


# ---------------------------------------------------------------- lambda tuning


def tuning_frame(cells: Cells) -> pd.DataFrame:
    """Per policy and cell of a reporting split: the chosen lambda and the accuracy against the trained lambdas."""
    frame = cells.corruption
    policy = cells.policy
    records = []
    for series in series_of(policy):
        trained = Series(series.model, series.checkpoint_sha256, series.dataset, series.split, TRAINED).rows(frame)
        trained_acc = {(c, s): a for c, s, a in zip(trained["corruption"], trained["severity"], trained["accuracy"])}
        rows = series.rows(policy)
        order = {c: i for i, c in enumerate(corruption_order(rows["corruption"]))}
        ordered = sorted(rows.itertuples(index=False), key=lambda r: (order[r.corruption], r.severity))
        for row in ordered:
            extras = row.extras
            base = trained_acc.get((row.corruption, row.severity), math.nan)
            records.append(
                {
                    "model": series.model,
                    "checkpoint_sha256": series.checkpoint_sha256,
                    "data": series.data,
                    "policy": series.lambda_setting,
                    "rule": str(extras.get("rule", "")),
                    "layers": str(extras.get("layers", "")),
                    "corruption": "clean" if row.corruption == CLEAN else row.corruption,
                    "severity": int(row.severity),
                    "lambda": chosen_lambda(extras),
                    "acc_trained": base,
                    "acc_tuned": row.accuracy,
                    "gain": row.accuracy - base,
                }
            )
    columns = ["model", "checkpoint_sha256", "data", "policy", "rule", "layers", "corruption", "severity",
               "lambda", "acc_trained", "acc_tuned", "gain"]
    return pd.DataFrame.from_records(records, columns=columns)


def tuning(cells: Cells) -> Table:
    table = tuning_frame(cells)
    kinds = {c: TEXT for c in table.columns}
    kinds.update(severity=INTEGER, acc_trained=PERCENT, acc_tuned=PERCENT, gain=POINTS, **{"lambda": LAMBDA})
    about = (
        "Lambda chosen per cell on the tuning split, scored on the disjoint reporting split: lambda (for the "
        "label-free recon rule, the mean over images), accuracy at the trained lambdas and at the chosen one, "
        "and the gain (percentage points in the Markdown / LaTeX files, a fraction in the CSV)."
    )
    return Table("lambda_tuning", "Chosen lambda and gain per cell", about, table, kinds)
