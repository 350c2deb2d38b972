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
from robust_csc.corruptions.names import COMMON
from robust_csc.evaluation.metrics import accuracy_table, corruption_errors, summary
from robust_csc.reports.names import attack_label, setting_label
from robust_csc.reports.uncertainty import (
    accuracy_bounds,
    mce_interval,
    paired_difference,
)
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
    report_split,
    series_of,
)

# How the Markdown / LaTeX files print a column (the CSV keeps the raw numbers).
PERCENT, POINTS, LAMBDA, INTEGER, RATIO, TEXT = "percent", "points", "lambda", "integer", "ratio", "text"
PVALUE = "p-value"


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
    # column -> (low column, high column): its 95% interval. The CSV keeps the bounds as columns; Markdown,
    # LaTeX and HTML print "v [lo, hi]" ("brackets") or "v ±h", h half the interval ("pm", for wide grids).
    intervals: dict = field(default_factory=dict)
    interval_style: str = "brackets"
    # Columns only the CSV keeps (exact store names, n, bounds the page prints elsewhere), and readable headers
    # for the page's columns (Markdown, LaTeX, HTML); the CSV keeps the frame's own column names.
    hidden: tuple = ()
    headers: dict = field(default_factory=dict)
    footnote: str = ""  # read after the table (what its columns are on), on the page and in Markdown


def with_bounds(frame: pd.DataFrame, column: str, low, high) -> dict:
    """Add column's interval as f"{column} low" / f"{column} high" after it; the Table.intervals entry."""
    position = list(frame.columns).index(column) + 1
    frame.insert(position, f"{column} low", low)
    frame.insert(position + 1, f"{column} high", high)
    return {column: (f"{column} low", f"{column} high")}


# ---------------------------------------------------------------- per series: corruption x severity


def severity_table(rows: pd.DataFrame, series: Series) -> tuple[pd.DataFrame, dict]:
    """Accuracy per corruption (rows, Hendrycks' order then the extras) and severity 1..5 and mean, plus a mean row,
    each value followed by its 95% interval (Wilson for a cell, a bootstrap over images for a mean).

    A missing cell is NaN, and so is any mean that would need it.  Returns (frame, Table.intervals).
    """
    table = accuracy_table(rows, series.model)
    table.columns = [str(c) for c in table.columns]
    table.columns.name = None
    if table.empty:
        return table, {}
    table.loc["mean"] = table.mean(axis=0, skipna=False)
    corrupted = rows[rows["corruption"] != CLEAN]
    bounds = {}
    for column in list(table.columns):
        low, high = [], []
        for corruption in table.index:
            part = corrupted if corruption == "mean" else corrupted[corrupted["corruption"] == corruption]
            if column != "mean":
                part = part[part["severity"] == int(column)]
            lo, hi = (math.nan, math.nan) if math.isnan(table.loc[corruption, column]) else accuracy_bounds(part)
            low.append(lo)
            high.append(hi)
        bounds[column] = (low, high)
    intervals = {}
    for column, (low, high) in bounds.items():
        intervals.update(with_bounds(table, column, low, high))
    return table, intervals


def series_tables(cells: Cells) -> list[tuple[Series, Table]]:
    out = []
    frame = cells.corruption
    for series in series_of(frame):
        rows = series.rows(frame)
        table, intervals = severity_table(rows, series)
        if table.empty:  # a clean cell only: it shows in the summary
            continue
        kinds = {c: PERCENT for c in table.columns}
        sizes = sorted({int(n) for n in rows["n"]})
        about = (
            "Accuracy in % on each corruption (rows, Hendrycks' order) at severities 1 to 5 and their mean; "
            f"the last row is the mean over the corruptions. n = {sizes[0] if len(sizes) == 1 else sizes} images per "
            "cell; ± is half the 95% interval (Wilson for a cell, a bootstrap over images for a mean; the CSV has "
            "both bounds). A dash is a cell not in the store."
        )
        out.append((series, Table(f"corruptions__{series.slug()}", series.title(), about, table, kinds, index=True,
                                  intervals=intervals, interval_style="pm")))
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
    out = {"mce": math.nan, "mce low": math.nan, "mce high": math.nan, "relative_mce": math.nan, "ce_mean_run": math.nan}
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
    if not math.isnan(errors.mce):
        out["mce low"], out["mce high"] = mce_interval(series.rows(frame), base.rows(base_frame), list(COMMON))
    return out



def corruption_summary(cells: Cells, baseline: str | None, notes: list[str], reference: Cells | None = None) -> pd.DataFrame:
    """One row per corruption series: clean accuracy, the means, mCE against the baseline (looked up in reference),
    each with its 95% interval columns ("<column> low", "<column> high")."""
    frame = cells.corruption
    base_frame = (reference or cells).corruption
    records = []
    for series in series_of(frame):
        rows = series.rows(frame)
        figures = summary(rows, series.model)
        mean_run, n_run = _cells_mean(rows)
        corrupted = rows[rows["corruption"] != CLEAN]
        common = corrupted[corrupted["corruption"].isin(COMMON)]
        complete = not math.isnan(figures["mean_accuracy_75"])
        record = {
            "model": series.model,
            "checkpoint_sha256": series.checkpoint_sha256,
            "lambda_setting": series.lambda_setting,
            "corruption_data": series.data,
            "n": int(rows["n"].max()),
            "clean": figures["clean_accuracy"],
            "cells_run": n_run,
            "mean_cells_run": mean_run,
            "mean_75": figures["mean_accuracy_75"],
            "severity5_mean": figures["severity5_accuracy"],
            **_mce(frame, base_frame, series, baseline, notes),
        }
        for column, part in (("clean", rows[rows["corruption"] == CLEAN]), ("mean_cells_run", corrupted),
                             ("mean_75", common if complete else corrupted.iloc[0:0]),
                             ("severity5_mean", common[common["severity"] == 5] if complete else corrupted.iloc[0:0])):
            record[f"{column} low"], record[f"{column} high"] = accuracy_bounds(part)
        records.append(record)
    return pd.DataFrame.from_records(records, columns=_SUMMARY_COLUMNS)


_INTERVAL_COLUMNS = ("clean", "mean_cells_run", "mean_75", "severity5_mean", "mce")
_SUMMARY_COLUMNS = [
    "model", "checkpoint_sha256", "lambda_setting", "corruption_data", "n",
    "clean", "clean low", "clean high", "cells_run",
    "mean_cells_run", "mean_cells_run low", "mean_cells_run high", "mean_75", "mean_75 low", "mean_75 high",
    "severity5_mean", "severity5_mean low", "severity5_mean high", "mce", "mce low", "mce high", "relative_mce",
    "ce_mean_run",
]
_SUMMARY_KINDS = {
    "model": TEXT, "checkpoint_sha256": TEXT, "lambda_setting": TEXT, "corruption_data": TEXT, "n": INTEGER,
    "clean": PERCENT, "cells_run": INTEGER, "mean_cells_run": PERCENT, "mean_75": PERCENT,
    "severity5_mean": PERCENT, "mce": PERCENT, "relative_mce": PERCENT, "ce_mean_run": PERCENT,
    "attack_data": TEXT, "attack_n": INTEGER, "evaluation": TEXT,
}


def attack_column(attack: str, epsilon: float) -> str:
    name, norm = attack_norm(attack)
    return f"{name} {norm} {format_epsilon(epsilon, norm)}".replace("  ", " ")


def attack_columns(frame: pd.DataFrame) -> list[tuple[str, float]]:
    """(attack, epsilon) pairs in the order tables and plots show them: per norm, worst case last, eps rising."""
    pairs = frame[["attack", "epsilon"]].drop_duplicates().itertuples(index=False, name=None)
    return sorted(pairs, key=lambda pair: (attack_order(pair[0]), pair[1]))


def _own_cells(frame: pd.DataFrame) -> pd.DataFrame:
    """Attack cells that carry a figure of their own: not the sanity checks' cells (run on a few points only)."""
    if frame.empty:
        return frame
    return frame[~frame["attack"].map(lambda a: attack_norm(a)[0].endswith("~check")).astype(bool)]


def _grade(rows: pd.DataFrame) -> str:
    """What the series' worst case is: AutoAttack-grade or an upper bound (as the attack runner recorded it)."""
    from robust_csc.attacks.record import evaluation_grade

    worst = rows[rows["attack"].map(lambda a: attack_norm(a)[0] == WORST_CASE).astype(bool)]
    grades = {str(e.get("grade")) for e in worst["extras"] if e.get("grade")}
    if len(grades) == 1:
        return grades.pop()
    return evaluation_grade(rows["attack"])[1]


def _worst_over(rows: pd.DataFrame) -> str:
    """The attacks (their ids name steps and restarts) and the seed behind the series' worst case."""
    attacks, seeds = [], set()
    for attack, extras in zip(rows["attack"], rows["extras"]):
        if attack_norm(attack)[0] != WORST_CASE:
            continue
        for name in extras.get("attacks") or []:
            if attack_norm(name)[0] not in attacks:
                attacks.append(attack_norm(name)[0])
        if "seed" in extras:
            seeds.add(str(extras["seed"]))
    text = ", ".join(sorted(attacks))
    return f"{text}; seed {'/'.join(sorted(seeds))}" if text and seeds else text


def robustness_table(cells: Cells) -> tuple[pd.DataFrame, dict]:
    """One row per attacked series; a column per (attack, epsilon): robust accuracy and its Wilson interval;
    what the worst case is (evaluation); the checks that passed.  Returns (frame, Table.intervals)."""
    frame = _own_cells(cells.attack)
    pairs = attack_columns(frame)
    records = []
    for series in series_of(frame):
        rows = series.rows(frame)
        record = {
            "model": series.model,
            "checkpoint_sha256": series.checkpoint_sha256,
            "lambda_setting": series.lambda_setting,
            "attack_data": series.data,
            "attack_n": int(rows["n"].max()),
            "evaluation": _grade(rows),
            "worst case over": _worst_over(series.rows(cells.attack)),
        }
        by_pair = {(a, e): r for a, e, (_, r) in zip(rows["attack"], rows["epsilon"], rows.iterrows())}
        for attack, epsilon in pairs:
            column = attack_column(attack, epsilon)
            row = by_pair.get((attack, epsilon))
            record[column] = math.nan if row is None else row["accuracy"]
            low, high = (math.nan, math.nan) if row is None else accuracy_bounds(row.to_frame().T)
            record[f"{column} low"], record[f"{column} high"] = low, high
        passed = total = 0
        for attack, extras in zip(rows["attack"], rows["extras"]):
            if attack_norm(attack)[0] != WORST_CASE:
                continue
            for check in (extras.get("checks") or {}).values():
                total += 1
                passed += bool(isinstance(check, dict) and check.get("passed"))
        record["checks_passed"] = f"{passed}/{total}" if total else ""
        records.append(record)
    columns = ["model", "checkpoint_sha256", "lambda_setting", "attack_data", "attack_n", "evaluation", "worst case over"]
    intervals = {}
    for attack, epsilon in pairs:
        column = attack_column(attack, epsilon)
        columns += [column, f"{column} low", f"{column} high"]
        intervals[column] = (f"{column} low", f"{column} high")
    columns.append("checks_passed")
    return pd.DataFrame.from_records(records, columns=columns), intervals


def robustness_kinds(table: pd.DataFrame) -> dict:
    kinds = {c: PERCENT for c in table.columns}
    kinds.update({c: TEXT for c in ("model", "checkpoint_sha256", "lambda_setting", "attack_data", "checks_passed",
                                    "evaluation", "worst case over")})
    kinds["attack_n"] = INTEGER
    return kinds


def _summary_intervals(columns) -> dict:
    return {c: (f"{c} low", f"{c} high") for c in columns if f"{c} low" in columns and not c.endswith((" low", " high"))}


def summary_table(cells: Cells, baseline: str | None, notes: list[str], reference: Cells | None = None) -> Table:
    """One row per corruption series (model, checkpoint, lambda setting, data set and split): clean accuracy, the
    means, mCE against the baseline, each with its interval.

    Attack results are not joined here (a join on the model and setting repeated a corruption row once per attack
    series): they are in the robustness table, and the key-results table pairs each row with its attacks.
    """
    table = corruption_summary(cells, baseline, notes, reference)
    order = sorted(range(len(table)), key=lambda i: (
        table["model"].iloc[i], table["checkpoint_sha256"].iloc[i], lambda_order(table["lambda_setting"].iloc[i]),
        str(table["corruption_data"].iloc[i]),
    ))
    table = table.iloc[order].reset_index(drop=True)
    table.insert(3, "setting", [setting_label(name) for name in table["lambda_setting"]])
    kinds = {c: _SUMMARY_KINDS.get(c, PERCENT) for c in table.columns}
    kinds["setting"] = TEXT
    about = (
        "One row per model, checkpoint, lambda setting and data set; accuracies in % with their 95% interval in "
        "brackets (Wilson for one cell, a bootstrap over images for a mean, paired with the baseline for mCE); n: "
        "images per cell. clean: clean accuracy; mean_cells_run: mean accuracy over the corruption cells in the store "
        "(cells_run of them); mean_75: RobustBench's mean over the 15 common corruptions x 5 severities; "
        "severity5_mean: the mean at severity 5; mce / relative_mce: Hendrycks' mCE against the baseline (needs all "
        "15 common corruptions), ce_mean_run: the mean CE over the corruptions run. Robust accuracy: the key results "
        "and the robustness table. A dash: not in the store."
    )
    return Table("summary", "Clean and corruption accuracy per model and setting", about, table, kinds,
                 intervals=_summary_intervals(list(table.columns)), hidden=("lambda_setting",))


def robustness(cells: Cells) -> Table:
    table, intervals = robustness_table(cells)
    about = (
        "Robust accuracy in % (the fraction of examples still classified correctly under attack) with its 95% Wilson "
        "interval, per attack (each run on its own on every clean-correct point), norm and epsilon; worst-case counts "
        "an example as robust only if it survived every attack ever run on it at that budget (the sanity checks' "
        "stronger attack and the adaptive attacks included). evaluation: AutoAttack-grade or an upper bound. "
        "worst case over: the attacks that make up the worst case (an id names non-default steps and restarts: "
        "pgd-40x2 is 40 steps, 2 restarts; ~check is the sanity check's cross-check, ~bpda-* and ~transfer the "
        "adaptive attacks) and their seed. checks_passed: the attack runner's sanity checks that passed."
    )
    table.insert(3, "setting", [setting_label(name) for name in table["lambda_setting"]])
    kinds = robustness_kinds(table)
    kinds["setting"] = TEXT
    headers = {attack_column(a, e): readable_attack_column(a, e) for a, e in attack_columns(_own_cells(cells.attack))}
    headers.update(attack_data="data", attack_n="n", checks_passed="checks passed")
    return Table("robustness", "Robust accuracy per attack and epsilon", about, table, kinds,
                 intervals=intervals, hidden=("lambda_setting",), headers=headers)


def readable_attack_column(attack: str, epsilon: float) -> str:
    """"PGD L∞ 8/255" for the column attack_column names "pgd Linf 8/255"."""
    from robust_csc.reports.names import norm_label

    name, norm = attack_norm(attack)
    return f"{attack_label(name)} {norm_label(norm)} {format_epsilon(epsilon, norm)}"


# ---------------------------------------------------------------- lambda tuning


def tuning_frame(cells: Cells, notes: list[str] | None = None) -> pd.DataFrame:
    """Per policy and cell of a reporting split: the chosen lambda, the accuracy at the trained lambdas and at the
    chosen one, and the gain with its paired interval, exact McNemar p-value and verdict.

    Policy cells on any other split were scored on images that may have chosen them: they are left out and named
    in notes.
    """
    frame = cells.corruption
    policy = cells.policy
    records = []
    for series in series_of(policy):
        if report_split(series.split) is None:
            if notes is not None:
                notes.append(f"{series.model} {series.lambda_setting} on {series.data}: not a reporting split, so the "
                             "policy may have been chosen on these images; left out of the tuning table")
            continue
        trained = Series(series.model, series.checkpoint_sha256, series.dataset, series.split, TRAINED).rows(frame)
        trained_cells = {(c, int(s)): r for c, s, (_, r) in zip(trained["corruption"], trained["severity"], trained.iterrows())}
        rows = series.rows(policy)
        order = {c: i for i, c in enumerate(corruption_order(rows["corruption"]))}
        ordered = sorted(rows.itertuples(index=False), key=lambda r: (order[r.corruption], r.severity))
        for row in ordered:
            extras = row.extras
            base = trained_cells.get((row.corruption, int(row.severity)))
            difference = None
            if base is not None:
                difference = paired_difference(pd.DataFrame([row._asdict()]), base.to_frame().T)
            gain = row.accuracy - base["accuracy"] if base is not None else math.nan
            records.append(
                {
                    "model": series.model,
                    "checkpoint_sha256": series.checkpoint_sha256,
                    "data": series.data,
                    "policy": series.lambda_setting,
                    "setting": setting_label(series.lambda_setting),
                    "rule": str(extras.get("rule", "")),
                    "layers": str(extras.get("layers", "")),
                    "corruption": "clean" if row.corruption == CLEAN else row.corruption,
                    "severity": int(row.severity),
                    "n": int(row.n),
                    "lambda": chosen_lambda(extras),
                    "acc_trained": base["accuracy"] if base is not None else math.nan,
                    "acc_tuned": row.accuracy,
                    "gain": gain,
                    "gain low": difference.low if difference else math.nan,
                    "gain high": difference.high if difference else math.nan,
                    "p_value": difference.p_value if difference else math.nan,
                    "verdict": verdict(difference),
                }
            )
    columns = ["model", "checkpoint_sha256", "data", "policy", "setting", "rule", "layers", "corruption", "severity", "n",
               "lambda", "acc_trained", "acc_tuned", "gain", "gain low", "gain high", "p_value", "verdict"]
    return pd.DataFrame.from_records(records, columns=columns)


def verdict(difference) -> str:
    """'significant' / 'not significant' at 5%, or why there is no test."""
    if difference is None:
        return "no paired test (no per-example outcomes)"
    return "significant" if difference.significant else "not significant"


def tuning(cells: Cells, notes: list[str] | None = None) -> Table:
    table = tuning_frame(cells, notes)
    kinds = {c: TEXT for c in table.columns}
    kinds.update(severity=INTEGER, n=INTEGER, acc_trained=PERCENT, acc_tuned=PERCENT, gain=POINTS, p_value=PVALUE,
                 **{"lambda": LAMBDA})
    about = (
        "Lambda chosen per cell on the tuning split, scored on the disjoint reporting split only: lambda (for the "
        "label-free recon rule, the mean over images), accuracy at the trained lambdas and at the chosen one (%), and "
        "the gain in percentage points with its 95% paired bootstrap interval over the same images and the exact "
        "McNemar p-value; a gain marked 'not significant' is no evidence of a difference."
    )
    return Table("lambda_tuning", "Chosen lambda and gain per cell (reporting split)", about, table, kinds,
                 intervals={"gain": ("gain low", "gain high")}, hidden=("policy", "rule", "layers"))


# ---------------------------------------------------------------- paired comparisons


def comparisons(cells: Cells, baseline: str | None, reference: Cells | None = None) -> Table:
    """Every paired difference the store supports, each with its interval, p-value and verdict:

    - a lambda setting (or policy) against the trained lambdas of the same model on the same images;
    - a model against the baseline on the same data set and split (clean, mean over the common cells);
    - at each attack budget, each attack's own robust accuracy against the worst case (how much it overstates).
    """
    frame = cells.corruption
    base_frame = (reference or cells).corruption
    records: list[dict] = []

    def add(what, a, b, data, metric, difference):
        records.append({"comparison": what, "a": a, "b": b, "data": data, "metric": metric,
                        "n": difference.n if difference else math.nan,
                        "cells": difference.cells if difference else math.nan,
                        "difference": difference.difference if difference else math.nan,
                        "difference low": difference.low if difference else math.nan,
                        "difference high": difference.high if difference else math.nan,
                        "p_value": difference.p_value if difference else math.nan,
                        "test": difference.test if difference else "", "verdict": verdict(difference)})

    for series in series_of(frame):
        rows = series.rows(frame)
        corrupted = rows[rows["corruption"] != CLEAN]
        if series.lambda_setting != TRAINED:
            trained = Series(series.model, series.checkpoint_sha256, series.dataset, series.split, TRAINED).rows(frame)
            if not trained.empty:
                a = f"{series.model}, {setting_label(series.lambda_setting)}"
                b = f"{series.model}, {setting_label(TRAINED)}"
                for metric, part in (("clean", rows[rows["corruption"] == CLEAN]), ("mean over the corruption cells", corrupted)):
                    if not part.empty:
                        add("lambda setting vs trained", a, b, series.data, metric,
                            paired_difference(part, trained))
        if baseline is not None and series.model != baseline and series.lambda_setting == TRAINED:
            base = _baseline_series(base_frame, baseline, series)
            if base is not None:
                base_rows = base.rows(base_frame)
                for metric, part in (("clean", rows[rows["corruption"] == CLEAN]), ("mean over the corruption cells", corrupted)):
                    if not part.empty:
                        add("model vs baseline", series.model, baseline, series.data, metric,
                            paired_difference(part, base_rows))
    attack_frame = _own_cells(cells.attack)
    for series in series_of(attack_frame):
        rows = series.rows(attack_frame)
        worst = rows[rows["attack"].map(lambda a: attack_norm(a)[0] == WORST_CASE).astype(bool)]
        for _, w in worst.iterrows():
            norm = attack_norm(w["attack"])[1]
            same = rows[(rows["epsilon"] == w["epsilon"]) & (rows["attack"] != w["attack"])
                        & rows["attack"].map(lambda a, norm=norm: attack_norm(a)[1] == norm)]
            for _, r in same.iterrows():
                add("attack vs worst case", attack_label(attack_norm(r["attack"])[0]), "worst case",
                    f"{series.model}, {setting_label(series.lambda_setting)}, {series.data}",
                    f"robust accuracy, {norm} {format_epsilon(float(w['epsilon']), norm)}",
                    paired_difference(r.to_frame().T, w.to_frame().T))
    columns = ["comparison", "a", "b", "data", "metric", "n", "cells", "difference", "difference low", "difference high",
               "p_value", "test", "verdict"]
    table = pd.DataFrame.from_records(records, columns=columns)
    kinds = {c: TEXT for c in columns}
    kinds.update(n=INTEGER, cells=INTEGER, difference=POINTS, p_value=PVALUE)
    about = (
        "Paired differences a - b in percentage points on the same images, with the 95% interval (a paired bootstrap "
        "over images; for a mean over cells, one draw of images serves every cell) and the p-value (exact McNemar "
        "for one cell, the bootstrap for a mean). Only a difference marked 'significant' (p < 0.05) is evidence of a "
        "gain or a loss. An attack's own figure minus the worst case is how much that attack alone overstates "
        "robust accuracy."
    )
    return Table("comparisons", "Paired comparisons with significance", about, table, kinds,
                 intervals={"difference": ("difference low", "difference high")})


