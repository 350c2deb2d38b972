"""The report's first screen: one short key-results table per evaluation, and sentences that state the comparison.

An evaluation is the images the numbers are on: a corruption suite and split (every model and setting run on it
is a row), or, for a store with attacks only, the attacked images.  A row is one model (checkpoint) and one
setting (lambda, policy, TTA); its columns, each with n and its 95% interval:

- clean accuracy (Wilson), the mean corruption accuracy over the cells run (a bootstrap over images), mCE against
  the baseline where it is defined (all 15 common corruptions);
- robust accuracy at each epsilon: the pointwise worst case over every attack of the row's model and setting on
  images of this evaluation (a policy's reporting split for a policy's rows), the attacks named and graded
  (AutoAttack-grade, or an upper bound); where a model was attacked on several sets of images at one epsilon, the
  AutoAttack-grade figure wins, then the one on more images;
- the paired difference to the row's reference (a setting: the same model at its trained lambda; a model: the
  baseline at its trained lambda) in mean corruption accuracy and in robust accuracy at the headline epsilon,
  with its interval, p-value and verdict (robust_csc.reports.uncertainty.paired_difference).

Each row appears once: a model's corruption figures are never repeated per attack series.  The sentences are
computed from the same numbers (key_sentences); a difference that is not significant is said to be so, never
called a gain.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pandas as pd

from robust_csc.reports.cells import (
    CLEAN,
    TRAINED,
    WORST_CASE,
    Cells,
    Series,
    attack_norm,
    format_epsilon,
    lambda_order,
    report_split,
    series_of,
)
from robust_csc.reports.names import attack_label, data_label, norm_label, pct, setting_label
from robust_csc.reports.uncertainty import accuracy_bounds, paired_difference

AUTOATTACK_GRADE = "AutoAttack-grade"


@dataclass
class Robust:
    """The worst case of one row at one (norm, epsilon): its cell, the attacks in it and whether it is AA-grade."""

    row: pd.Series
    attacks: list[str]
    autoattack: bool
    series: Series

    @property
    def n(self) -> int:
        return int(self.row["n"])

    @property
    def accuracy(self) -> float:
        return float(self.row["correct"]) / self.n if self.n else math.nan

    def frame(self) -> pd.DataFrame:
        return self.row.to_frame().T

    def attack_text(self) -> str:
        names = [attack_label(a) for a in self.attacks]
        text = ", ".join(names) if names else "attacks"
        return text if self.autoattack else f"{text}: an upper bound"


@dataclass
class KeyRow:
    model: str
    sha: str
    setting: str  # the store's exact lambda_setting
    corruption: Series | None  # its corruption series in this evaluation (None: attacked only)
    rows: pd.DataFrame  # the corruption cells (clean included); empty when attacked only
    robust: dict = field(default_factory=dict)  # (norm, eps) -> Robust
    reference: "KeyRow | None" = None
    delta_corruption: object = None  # Difference or None
    delta_robust: object = None
    missing: int = 0  # corruption cells of the evaluation this row has not stored (a run not finished)

    @property
    def label(self) -> str:
        return setting_label(self.setting)

    @property
    def name(self) -> str:
        """"sdnet18, trained λ"."""
        return f"{self.model}, {self.label}"

    def clean(self) -> pd.DataFrame:
        return self.rows[self.rows["corruption"] == CLEAN]

    def corrupted(self) -> pd.DataFrame:
        return self.rows[self.rows["corruption"] != CLEAN]

    def mean_corruption(self) -> float:
        """The mean over the evaluation's cells; NaN while some are missing (a mean over fewer cells would be a
        mean over other corruptions than its neighbours' and its reference's)."""
        values = self.corrupted()["accuracy"].dropna()
        return math.fsum(values) / len(values) if len(values) and not self.missing else math.nan


@dataclass
class Evaluation:
    """One key-results table: its images, its rows, its epsilon columns and its headline epsilon."""

    kind: str  # "corruption" or "attack"
    dataset: str
    split: str
    rows: list[KeyRow]
    columns: list[tuple[str, float]]  # (norm, eps), in order
    baseline: str | None
    headline: tuple[str, float] | None = None

    @property
    def title(self) -> str:
        return data_label(self.dataset, self.split)

    def cells(self) -> int:
        sizes = {len(r.corrupted()) for r in self.rows if not r.rows.empty}
        return max(sizes) if sizes else 0


# ---------------------------------------------------------------- finding the rows


def _split_family(split: str) -> str:
    """What an attack split must start with to belong to a corruption split's evaluation: a reporting split
    (its attacks are on that split, or its first N: "<split>[:64]"); any other split: "" (ordinary splits)."""
    return split if report_split(split) is not None else ""


def _belongs(attack_split: str, family: str) -> bool:
    if family:
        return attack_split == family or attack_split.startswith(family + "[")
    return report_split(attack_split) is None and ":report:" not in attack_split


def _worst_cells(cells: Cells) -> pd.DataFrame:
    frame = cells.attack
    if frame.empty:
        return frame
    return frame[frame["attack"].map(lambda a: attack_norm(a)[0] == WORST_CASE).astype(bool)]


def _robust_of(worst: pd.DataFrame, model: str, sha: str, setting: str, accept) -> dict:
    """(norm, eps) -> Robust for a row, among worst-case cells on splits accept(split) takes: AutoAttack-grade
    first, then the most images."""
    mine = worst[(worst["model"] == model) & (worst["checkpoint_sha256"] == sha) & (worst["lambda_setting"] == setting)]
    mine = mine[mine["split"].map(accept).astype(bool)]
    out: dict = {}
    for _, row in mine.iterrows():
        norm = attack_norm(row["attack"])[1]
        extras = row["extras"]
        attacks = [attack_norm(a)[0] for a in extras.get("attacks") or []]
        own = [a for a in attacks if not a.endswith("~check")]
        candidate = Robust(row, own, bool(extras.get("autoattack_grade")),
                           Series(model, sha, row["dataset"], row["split"], setting))
        key = (norm, float(row["epsilon"]))
        best = out.get(key)
        if best is None or (candidate.autoattack, candidate.n) > (best.autoattack, best.n):
            out[key] = candidate
    return out


def evaluations(cells: Cells, baseline: str | None = None) -> list[Evaluation]:
    """The key-results tables of the cells: one per corruption (data set, split), then attacked-only rows."""
    corruption = cells.corruption
    worst = _worst_cells(cells)
    out: list[Evaluation] = []
    used: set = set()
    groups = corruption.groupby(["dataset", "split"], sort=True) if not corruption.empty else []
    for (dataset, split), rows in groups:
        family = _split_family(split)
        evaluation_rows = []
        for series in series_of(rows):
            robust = _robust_of(worst, series.model, series.checkpoint_sha256, series.lambda_setting,
                                lambda s, family=family: _belongs(s, family)) if not worst.empty else {}
            used.update((r.series, key) for key, r in robust.items())
            evaluation_rows.append(KeyRow(series.model, series.checkpoint_sha256, series.lambda_setting, series,
                                          series.rows(rows), robust))
        out.append(_finish(Evaluation("corruption", dataset, split, evaluation_rows, [], baseline)))
    # Attack series no corruption row took: a table of their own per (data set, split).
    if not worst.empty:
        left = worst[[not any((s.model, s.checkpoint_sha256, s.dataset, s.split, s.lambda_setting) ==
                              (r["model"], r["checkpoint_sha256"], r["dataset"], r["split"], r["lambda_setting"])
                              for s, _ in used) for _, r in worst.iterrows()]]
        for (dataset, split), rows in left.groupby(["dataset", "split"], sort=True):
            evaluation_rows = []
            for series in series_of(rows):
                robust = _robust_of(rows, series.model, series.checkpoint_sha256, series.lambda_setting,
                                    lambda s, split=split: s == split)
                evaluation_rows.append(KeyRow(series.model, series.checkpoint_sha256, series.lambda_setting, None,
                                              rows.iloc[0:0], robust))
            out.append(_finish(Evaluation("attack", dataset, split, evaluation_rows, [], baseline)))
    return out


def _cell_set(row: KeyRow) -> set:
    corrupted = row.corrupted()
    return set(zip(corrupted["corruption"], corrupted["severity"].astype(int)))


def _row_order(row: KeyRow, baseline: str | None) -> tuple:
    return (row.model != baseline, row.model, row.sha, lambda_order(row.setting))


def _finish(evaluation: Evaluation) -> Evaluation:
    """Order the rows, fix the epsilon columns and the headline, pair every row with its reference."""
    rows = sorted(evaluation.rows, key=lambda r: _row_order(r, evaluation.baseline))
    evaluation.rows = rows
    every_cell = {cell for r in rows for cell in _cell_set(r)}
    for row in rows:
        row.missing = len(every_cell - _cell_set(row)) if not row.rows.empty else 0
    keys = sorted({key for r in rows for key in r.robust}, key=lambda k: (k[0], k[1]))
    evaluation.columns = keys
    if keys:
        # The headline budget: AutoAttack-grade where there is one; the largest budget that leaves some row robust
        # (a budget where every row is at 0% compares nothing), else the largest.
        graded = [k for k in keys if any(r.robust.get(k) and r.robust[k].autoattack for r in rows)] or keys
        alive = [k for k in graded if any(r.robust.get(k) and r.robust[k].accuracy > 0 for r in rows)]
        evaluation.headline = max(alive or graded, key=lambda k: k[1])
    models = list(dict.fromkeys(r.model for r in rows))
    reference_model = evaluation.baseline if evaluation.baseline in models else (models[0] if models else None)
    trained = {(r.model, r.sha): r for r in rows if r.setting == TRAINED}
    for row in rows:
        if row.setting != TRAINED and (row.model, row.sha) in trained:
            row.reference = trained[(row.model, row.sha)]
        elif row.setting == TRAINED and row.model != reference_model:
            row.reference = next((r for r in rows if r.model == reference_model and r.setting == TRAINED), None)
        if row.reference is None:
            continue
        if not row.rows.empty and not row.reference.rows.empty and not row.missing and not row.reference.missing:
            row.delta_corruption = paired_difference(row.corrupted(), row.reference.corrupted())
        headline = evaluation.headline
        if headline and headline in row.robust and headline in row.reference.robust:
            row.delta_robust = paired_difference(row.robust[headline].frame(), row.reference.robust[headline].frame())
    return evaluation


# ---------------------------------------------------------------- the table



def _difference_text(difference) -> str:
    if difference is None:
        return ""
    return difference.text()


def robust_column(norm: str, eps: float) -> str:
    return f"{norm_label(norm)} {format_epsilon(eps, norm)}"


def key_frame(evaluation: Evaluation, mce: dict | None = None) -> tuple[pd.DataFrame, dict, list[str]]:
    """(the table's frame, its interval columns, the CSV-only columns).

    The CSV keeps exact names and fractions: lambda_setting, data set, split, each figure, its bounds and n, the
    references and the differences with their bounds and p-values; the page shows the readable columns.
    """
    records = []
    intervals: dict = {}
    for row in evaluation.rows:
        record = {"model": row.model, "checkpoint_sha256": row.sha, "dataset": evaluation.dataset,
                  "split": evaluation.split, "lambda_setting": row.setting, "setting": row.label}
        clean = row.clean()
        record["clean n"] = int(clean["n"].iloc[0]) if len(clean) else math.nan
        record["clean"] = float(clean["accuracy"].iloc[0]) if len(clean) else math.nan
        record["clean low"], record["clean high"] = accuracy_bounds(clean)
        corrupted = row.corrupted()
        record["corruption cells"] = len(corrupted) if len(corrupted) else math.nan
        record["corruptions"] = row.mean_corruption()
        record["corruptions low"], record["corruptions high"] = (
            accuracy_bounds(corrupted) if not row.missing else (math.nan, math.nan))
        figures = (mce or {}).get((row.model, row.sha, row.setting), {})
        record["mCE"] = figures.get("mce", math.nan)
        record["mCE low"], record["mCE high"] = figures.get("mce low", math.nan), figures.get("mce high", math.nan)
        for norm, eps in evaluation.columns:
            column = robust_column(norm, eps)
            robust = row.robust.get((norm, eps))
            record[column] = robust.accuracy if robust else math.nan
            low, high = accuracy_bounds(robust.frame()) if robust else (math.nan, math.nan)
            record[f"{column} low"], record[f"{column} high"] = low, high
            record[f"{column} n"] = robust.n if robust else math.nan
            record[f"{column} attacks"] = "+".join(robust.attacks) if robust else ""
            record[f"{column} grade"] = (AUTOATTACK_GRADE if robust.autoattack else "upper bound") if robust else ""
        reference = row.reference
        record["compared with"] = reference.name if reference else ("reference" if _is_reference(row, evaluation) else "")
        for what, difference in (("corruptions", row.delta_corruption), ("robust", row.delta_robust)):
            column = f"Δ {what}"
            record[column] = difference.difference if difference else math.nan
            record[f"{column} low"] = difference.low if difference else math.nan
            record[f"{column} high"] = difference.high if difference else math.nan
            record[f"{column} p"] = difference.p_value if difference else math.nan
            record[f"{column} text"] = _difference_text(difference)
        records.append(record)
    frame = pd.DataFrame.from_records(records)
    for column in ["clean", "corruptions", "mCE"] + [robust_column(n, e) for n, e in evaluation.columns]:
        intervals[column] = (f"{column} low", f"{column} high")
    csv_only = ["checkpoint_sha256", "dataset", "split", "lambda_setting", "clean n", "corruption cells"]
    csv_only += [f"{robust_column(n, e)} {part}" for n, e in evaluation.columns for part in ("n", "attacks", "grade")]
    csv_only += [f"Δ {w}" + s for w in ("corruptions", "robust") for s in ("", " low", " high", " p")]
    return frame, intervals, csv_only


def _is_reference(row: KeyRow, evaluation: Evaluation) -> bool:
    return any(other.reference is row for other in evaluation.rows)


def headers(evaluation: Evaluation, frame: pd.DataFrame) -> dict[str, str]:
    """Short column headers (what n and the attacks are, the footnote says: robust_footnote)."""
    out = {"setting": "setting", "model": "model", "clean": "clean", "compared with": "compared with"}
    cells = evaluation.cells()
    out["corruptions"] = f"corruptions (mean of {cells} cells)" if cells else "corruptions (mean)"
    if evaluation.baseline:
        out["mCE"] = f"mCE (vs {evaluation.baseline})"
    for norm, eps in evaluation.columns:
        out[robust_column(norm, eps)] = robust_column(norm, eps)
    head = robust_column(*evaluation.headline) if evaluation.headline else "robust"
    out["Δ corruptions text"] = "Δ corruptions"
    out["Δ robust text"] = f"Δ {head}"
    return out


def footnote(evaluation: Evaluation) -> str:
    """What the columns are on: n of the clean and corruption cells, and per robust column its attacks, n and grade."""
    parts = []
    sizes = sorted({int(n) for r in evaluation.rows for n in r.rows["n"]})
    if sizes:
        parts.append(f"clean and corruptions: {_sizes(sizes)} images per cell")
    described: dict[str, list[str]] = {}
    for norm, eps in evaluation.columns:
        per_row = []
        for row in evaluation.rows:
            robust = row.robust.get((norm, eps))
            if robust is not None:
                per_row.append((row.name, f"{robust.attack_text()}, n = {robust.n}"))
        texts = {t for _, t in per_row}
        text = next(iter(texts)) if len(texts) == 1 else "; ".join(f"{name}: {t}" for name, t in per_row)
        described.setdefault(text, []).append(format_epsilon(eps, norm) if described.get(text) else robust_column(norm, eps))
    for text, columns in described.items():
        parts.append(f"{', '.join(columns)}: worst case over {text}")
    head = ""
    if evaluation.headline:
        head = (f" Δ: the paired difference to the row's reference (compared with) on the same images, in mean "
                f"corruption accuracy and in robust accuracy at {robust_column(*evaluation.headline)}.")
    unfinished = [f"{row.name} has {len(row.corrupted())} of {len(row.corrupted()) + row.missing}"
                  for row in evaluation.rows if row.missing]
    if unfinished:  # said, not hidden: the mean is left out until the run is finished
        head += (f" Not finished: {'; '.join(unfinished)} corruption cells in the store, so its mean and difference "
                 "are left out (run the same evaluate again to finish it).")
    return ("n and attacks — " + "; ".join(parts) + "." + head) if parts else head.strip()


def _sizes(sizes: list[int]) -> str:
    return str(sizes[0]) if len(sizes) == 1 else f"{sizes[0]} to {sizes[-1]}"


# ---------------------------------------------------------------- sentences


def _verdict_clause(difference) -> str:
    return difference.text() if difference is not None else "no paired test: the cells lack per-example outcomes"


def _pair_sentence(what: str, a: str, b: str, value_a: float, value_b: float, difference, where: str) -> str:
    """One comparison of a against b (difference = a - b), stated by which is higher, or that they do not differ."""
    if difference is not None and difference.significant:
        if difference.difference > 0:
            winner, loser, high, low = a, b, value_a, value_b
        else:
            winner, loser, high, low = b, a, value_b, value_a
        return (f"{where}, {winner} has the higher {what}: {pct(high)} against {pct(low)} for {loser} "
                f"(difference {_verdict_clause(difference)}).")
    return (f"{where}, {a} and {b} do not differ significantly in {what}: {pct(value_a)} against {pct(value_b)} "
            f"(difference {_verdict_clause(difference)}).")


def key_sentences(evaluation: Evaluation, limit: int = 3) -> list[str]:
    """Two or three sentences stating the evaluation's comparison plainly, from its numbers."""
    sentences: list[str] = []
    where = f"On {evaluation.title}"
    trained_pairs = [r for r in evaluation.rows if r.setting == TRAINED and r.reference is not None]
    for row in trained_pairs[:2]:  # models against the reference model
        ref = row.reference
        if not row.missing and not ref.missing and (row.delta_corruption is not None or
                                                    (not row.rows.empty and not ref.rows.empty)):
            sentences.append(_pair_sentence("mean corruption accuracy", row.model, ref.model, row.mean_corruption(),
                                            ref.mean_corruption(), row.delta_corruption, where))
        if evaluation.headline and evaluation.headline in row.robust and evaluation.headline in ref.robust:
            norm, eps = evaluation.headline
            mine, theirs = row.robust[evaluation.headline], ref.robust[evaluation.headline]
            grade = "AutoAttack-grade" if mine.autoattack and theirs.autoattack else "an upper bound from " + ", ".join(
                attack_label(a) for a in dict.fromkeys(mine.attacks + theirs.attacks))
            sentences.append(_pair_sentence(
                "robust accuracy", row.model, ref.model, mine.accuracy, theirs.accuracy, row.delta_robust,
                f"Under attack ({norm_label(norm)} {format_epsilon(eps, norm)}, {grade}, n = {mine.n})"))
    for model_row in [r for r in evaluation.rows if r.setting == TRAINED]:
        settings = [r for r in evaluation.rows if r.reference is model_row and r.setting != TRAINED]
        if not settings:
            continue
        sentences.append(_settings_sentence(model_row, settings))
    return sentences[:limit] if limit else sentences


def _settings_sentence(trained: KeyRow, settings: list[KeyRow]) -> str:
    tested = [r for r in settings if r.delta_corruption is not None]
    better = [r for r in tested if r.delta_corruption.significant and r.delta_corruption.difference > 0]
    worse = [r for r in tested if r.delta_corruption.significant and r.delta_corruption.difference < 0]
    base = f"For {trained.model} ({pct(trained.mean_corruption())} mean corruption accuracy at the trained λ)"
    if better:
        best = max(better, key=lambda r: r.delta_corruption.difference)
        text = (f"{base}, {best.label} raises it most, to {pct(best.mean_corruption())} "
                f"({best.delta_corruption.text()})")
        others = [r for r in tested if r not in better and r not in worse]
        if others:
            text += f"; {', '.join(r.label for r in others[:3])} {'does' if len(others) == 1 else 'do'} not differ significantly"
    elif tested:
        largest = max(tested, key=lambda r: abs(r.delta_corruption.difference))
        text = (f"{base}, no setting raises it significantly (the largest difference, {largest.label}: "
                f"{largest.delta_corruption.text()})")
    else:
        return f"{base}, the settings have no paired test (cells without per-example outcomes)."
    if worse:
        text += f"; {', '.join(r.label for r in worse[:2])} {'lowers' if len(worse) == 1 else 'lower'} it significantly"
    return text + "."


# ---------------------------------------------------------------- the console


def _cell(value: float, low: float, high: float) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    text = f"{value * 100:.1f}"
    if not (math.isnan(low) or math.isnan(high)):
        text += f" [{low * 100:.1f}, {high * 100:.1f}]"
    return text


def text_lines(cells: Cells, baseline: str | None = None, reference: Cells | None = None) -> list[str]:
    """The key results as console text: per evaluation a table (accuracy in % [95% interval]), its footnote and
    its sentences, from the same numbers as the report's."""
    from robust_csc.reports.names import naming

    lines: list[str] = []
    with naming((reference or cells).frame):
        for evaluation in evaluations(cells, baseline):
            frame, intervals, hidden = key_frame(evaluation)
            names = headers(evaluation, frame)
            shown = {"model": frame["model"], "setting": frame["setting"]}
            for column, (low, high) in intervals.items():
                if frame[column].notna().any():
                    shown[names.get(column, column)] = [_cell(v, lo, hi) for v, lo, hi in
                                                        zip(frame[column], frame[low], frame[high])]
            table = pd.DataFrame(shown)
            lines.append(f"On {evaluation.title} (accuracy in %, [95% interval]):")
            lines.extend("  " + line for line in table.to_string(index=False).splitlines())
            note = footnote(evaluation)
            if note:
                lines.append("  " + note)
            for row in evaluation.rows:
                if row.reference is None:
                    continue
                parts = []
                if row.delta_corruption is not None:
                    parts.append(f"corruptions {row.delta_corruption.text()}")
                if row.delta_robust is not None:
                    parts.append(f"{robust_column(*evaluation.headline)} {row.delta_robust.text()}")
                if parts:
                    lines.append(f"  Δ {row.name} vs {row.reference.name}: " + "; ".join(parts))
            lines.extend(key_sentences(evaluation))
            lines.append("")
    return lines[:-1] if lines else lines


def store_text_lines(store, baseline: str | None = None) -> list[str]:
    """text_lines of a results store (a path or a ResultsStore)."""
    from robust_csc.evaluation.store import open_store

    handle, owned = open_store(store)
    try:
        frame = handle.to_frame()
    finally:
        if owned:
            handle.close()
    return text_lines(Cells.from_frame(frame), baseline)


__all__ = [
    "Evaluation", "KeyRow", "evaluations", "footnote", "headers", "key_frame", "key_sentences", "robust_column",
    "store_text_lines", "text_lines",
]
