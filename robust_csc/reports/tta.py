"""Lambda tuning beside test-time adaptation: accuracy by severity per setting, and what each adds to the other.

For an evaluation (a corruption suite and split) whose settings include a tuned policy or a TTA setting
(bn-adapt, tent, or one composed with a lambda setting), per model:

- by_severity: a row per setting (trained, tuned lambda, bn-adapt, tent, TTA + lambda), the mean accuracy over
  the corruptions at each severity (0 = clean) and over every cell, each with its 95% interval (a bootstrap over
  images; Wilson for one cell);
- additions: paired differences on the same images, over every corruption cell and at severity 5: each setting
  against the trained lambda, and for a composed setting "TTA + λ" both what λ adds on top of the TTA alone and
  what the TTA adds on top of λ alone;
- answer: the sentence that says whether lambda tuning adds to TTA or is replaced by it, from those numbers.
"""

from __future__ import annotations

import math

import pandas as pd

from robust_csc.evaluation.metrics import SEVERITIES
from robust_csc.reports.cells import CLEAN, TRAINED, Series, lambda_order, series_of
from robust_csc.reports.names import adaptation_part, lambda_part, setting_kind, setting_label
from robust_csc.reports.tables import INTEGER, PERCENT, POINTS, PVALUE, TEXT, Table, verdict
from robust_csc.reports.uncertainty import accuracy_bounds, paired_difference


def applies(rows: pd.DataFrame) -> bool:
    """Whether a corruption evaluation has something to compare here: a TTA setting beside other settings
    (a policy alone against the trained lambda is the key results' and the tuning table's)."""
    kinds = {setting_kind(name) for name in rows["lambda_setting"]}
    return bool(kinds & {"tta", "tta+lambda"}) and len(set(rows["lambda_setting"])) > 1



def _mean(rows: pd.DataFrame) -> float:
    values = rows["accuracy"].dropna()
    return math.fsum(values) / len(values) if len(values) else math.nan


def _order(series: Series) -> tuple:
    kind = {"trained": 0, "lambda": 1, "policy": 2, "tta": 3, "tta+lambda": 4}[setting_kind(series.lambda_setting)]
    return (series.model, series.checkpoint_sha256, kind, lambda_order(lambda_part(series.lambda_setting)),
            series.lambda_setting)


def ordered_series(rows: pd.DataFrame) -> list[Series]:
    return sorted(series_of(rows), key=_order)


def by_severity(rows: pd.DataFrame) -> Table:
    """Per model and setting: mean accuracy at each severity (0 = clean) and over all corruption cells."""
    records = []
    for series in ordered_series(rows):
        mine = series.rows(rows)
        record = {"model": series.model, "checkpoint_sha256": series.checkpoint_sha256, "dataset": series.dataset,
                  "split": series.split, "lambda_setting": series.lambda_setting,
                  "setting": setting_label(series.lambda_setting)}
        for severity in (0, *SEVERITIES):
            part = mine[mine["severity"] == severity] if severity else mine[mine["corruption"] == CLEAN]
            column = "clean" if severity == 0 else f"severity {severity}"
            record[column] = _mean(part)
            record[f"{column} low"], record[f"{column} high"] = accuracy_bounds(part)
        corrupted = mine[mine["corruption"] != CLEAN]
        record["mean"] = _mean(corrupted)
        record["mean low"], record["mean high"] = accuracy_bounds(corrupted)
        record["n"] = int(mine["n"].max()) if len(mine) else 0
        records.append(record)
    frame = pd.DataFrame.from_records(records)
    value_columns = ["clean", *[f"severity {s}" for s in SEVERITIES], "mean"]
    kinds = {c: TEXT for c in frame.columns}
    kinds.update({c: PERCENT for c in value_columns}, n=INTEGER)
    corruptions = sorted(set(rows.loc[rows["corruption"] != CLEAN, "corruption"]))
    about = (f"Accuracy in % of each setting at each severity (the mean over {len(corruptions)} corruptions: "
             f"{', '.join(c.replace('_', ' ') for c in corruptions)}; 0 = clean) and over every corruption cell, "
             "± half the 95% interval (a bootstrap over the images; Wilson for one cell). Every setting ran on the "
             "same images, so the differences below are paired.")
    return Table("tta_by_severity", "Lambda tuning and test-time adaptation, by severity", about, frame, kinds,
                 intervals={c: (f"{c} low", f"{c} high") for c in value_columns}, interval_style="pm",
                 hidden=("checkpoint_sha256", "dataset", "split", "lambda_setting"))


def _pairs(rows: pd.DataFrame) -> list[tuple[str, Series, Series]]:
    """(what, a, b) to compare as a - b, per model: each setting vs trained; TTA + λ vs the TTA and vs λ alone."""
    out = []
    for (model, sha), _ in rows.groupby(["model", "checkpoint_sha256"], sort=True):
        mine = [s for s in ordered_series(rows) if s.model == model and s.checkpoint_sha256 == sha]
        by_name = {s.lambda_setting: s for s in mine}
        trained = by_name.get(TRAINED)
        for series in mine:
            name = series.lambda_setting
            if trained is not None and name != TRAINED:
                out.append(("setting vs trained λ", series, trained))
            if setting_kind(name) == "tta+lambda":
                tta, lam = adaptation_part(name), lambda_part(name)
                tta_alone = next((s for s in mine if s.lambda_setting == tta), None)
                lam_alone = by_name.get(lam)
                if tta_alone is not None:
                    out.append(("λ on top of TTA", series, tta_alone))
                if lam_alone is not None:
                    out.append(("TTA on top of λ", series, lam_alone))
    return out


def additions(rows: pd.DataFrame) -> Table:
    """Paired differences (a - b, percentage points) over every corruption cell and at severity 5."""
    records = []
    for what, a, b in _pairs(rows):
        ra, rb = a.rows(rows), b.rows(rows)
        record = {"model": a.model, "comparison": what, "a": setting_label(a.lambda_setting),
                  "b": setting_label(b.lambda_setting), "a_setting": a.lambda_setting, "b_setting": b.lambda_setting}
        for label, pick in (("all cells", lambda f: f[f["corruption"] != CLEAN]),
                            ("severity 5", lambda f: f[(f["corruption"] != CLEAN) & (f["severity"] == 5)])):
            difference = paired_difference(pick(ra), pick(rb))
            record[f"Δ {label}"] = difference.difference if difference else math.nan
            record[f"Δ {label} low"] = difference.low if difference else math.nan
            record[f"Δ {label} high"] = difference.high if difference else math.nan
            record[f"p {label}"] = difference.p_value if difference else math.nan
            record[f"verdict {label}"] = verdict(difference)
        records.append(record)
    frame = pd.DataFrame.from_records(records)
    kinds = {c: TEXT for c in frame.columns}
    for label in ("all cells", "severity 5"):
        kinds[f"Δ {label}"] = POINTS
        kinds[f"p {label}"] = PVALUE
    about = ("Paired differences a − b in percentage points on the same images, over every corruption cell and over "
             "the severity-5 cells, with the 95% paired bootstrap interval and its p-value. 'λ on top of TTA' is what "
             "the tuned or fixed λ adds to the TTA alone; 'TTA on top of λ' what the TTA adds to that λ alone. Only a "
             "difference marked significant (p < 0.05) is evidence of a change.")
    intervals = {f"Δ {label}": (f"Δ {label} low", f"Δ {label} high") for label in ("all cells", "severity 5")}
    return Table("tta_additions", "Does lambda tuning add to test-time adaptation, or replace it?", about, frame, kinds,
                 intervals=intervals, hidden=("a_setting", "b_setting"))


def answer(table: Table) -> list[str]:
    """Per model, one sentence from the additions table: does λ tuning add to TTA, or does TTA replace it?"""
    frame = table.frame
    if frame.empty:
        return []
    sentences = []
    for model, rows in frame.groupby("model", sort=True):
        on_top = rows[rows["comparison"] == "λ on top of TTA"]
        alone = rows[rows["comparison"] == "setting vs trained λ"]
        tta_alone = alone[alone["a_setting"].map(lambda n: setting_kind(n) == "tta")]
        lam_alone = alone[alone["a_setting"].map(lambda n: setting_kind(n) in ("policy", "lambda"))]
        parts = []
        for _, row in lam_alone.iterrows():
            parts.append(f"{row['a']} alone: {_delta(row)} against the trained λ")
        for _, row in tta_alone.iterrows():
            parts.append(f"{row['a']}: {_delta(row)}")
        if on_top.empty:
            if parts:
                sentences.append(f"For {model}, over every corruption cell, " + "; ".join(parts) + ".")
            continue
        adds = on_top[on_top["verdict all cells"] == "significant"]
        gains = adds[adds["Δ all cells"] > 0]
        text = f"For {model}, over every corruption cell, " + "; ".join(parts) + ". " if parts else f"For {model}: "
        details = "; ".join(f"{row['a']} against {row['b']}: {_delta(row)}" for _, row in on_top.iterrows())
        if len(gains) == len(on_top):
            text += f"Lambda tuning adds to test-time adaptation here ({details})."
        elif gains.empty and adds.empty:
            text += (f"Lambda tuning adds nothing significant on top of test-time adaptation here ({details}): "
                     "the adaptation replaces it on these images.")
        else:
            text += f"Lambda tuning adds to some adaptations and not to others ({details})."
        sentences.append(text)
    return sentences


def _delta(row) -> str:
    from robust_csc.evaluation.stats import format_difference

    if math.isnan(row["Δ all cells"]):
        return "no paired test"
    return format_difference(row["Δ all cells"], row["Δ all cells low"], row["Δ all cells high"], row["p all cells"])


__all__ = ["additions", "answer", "applies", "by_severity", "ordered_series"]
