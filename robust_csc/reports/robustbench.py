"""RobustBench's own result files for every series of a report, in the layout its code reads.

    files = write_robustbench(cells, report_folder)      # robustbench/model_info/...

RobustBench keeps its results in ``model_info/<dataset>/<threat model>/``:

- ``<model name>.json``: one leaderboard entry per model (the fields of
  ``robustbench.utils.ModelInfo``; accuracies as strings of percentages with
  2 decimals, e.g. ``"73.46"``); the corruption leaderboard reads
  ``corruptions_acc`` (the mean over the 15 common corruptions x 5
  severities) and ``corruptions_mce``, the Linf / L2 ones ``autoattack_acc``
  and, where a stronger evaluation exists, ``external`` (with ``footnote``)
  and ``unreliable``;
- ``corruptions/unaggregated_results.csv``: a row per model (the index), a
  column per (corruption, severity) as a two-row header, accuracies as
  fractions; ``robustbench.eval.corruptions_evaluation`` reads it with
  ``pd.read_csv(path, header=[0, 1], index_col=0)`` and appends its own rows.

Here a series (model, checkpoint, data set, split, lambda setting) is one
RobustBench model, named ``<model>_<sha256[:8]>[_<lambda setting>][_<split>]``
(the setting when it is not the trained one, the split when it is not the
whole test set).  The data set folder is RobustBench's name for the published
benchmarks (cifar10-c -> cifar10, cifar100-c -> cifar100, imagenet-c ->
imagenet; attacks on cifar10 / cifar100 / imagenet test images) and the store's
data set name otherwise (a generated suite such as digits-c[cifar] gets its
own folder, so it never mixes with the published benchmark's leaderboard).
Attacks: one entry per (series, norm, epsilon), named ``..._eps<epsilon>``,
with ``autoattack_acc`` only when AutoAttack (standard) is among the attacks
(its own cell is exactly AutoAttack's robust accuracy) and ``external`` for the
pointwise worst case over every attack of the series otherwise or in addition.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pandas as pd

from robust_csc import __version__
from robust_csc.evaluation.metrics import COMMON_CORRUPTIONS, SEVERITIES, imagenet_mce, summary
from robust_csc.reports.cells import (
    CLEAN,
    TRAINED,
    WORST_CASE,
    Cells,
    Series,
    attack_norm,
    corruption_order,
    format_epsilon,
    series_of,
)
from robust_csc.reports.page import Link, Section, Text

FOLDER = "robustbench"
RESULTS_CSV = "unaggregated_results.csv"
# The published benchmarks' store names -> RobustBench's data set names.
BENCHMARKS = {"cifar10-c": "cifar10", "cifar100-c": "cifar100", "imagenet-c": "imagenet",
              "cifar10": "cifar10", "cifar100": "cifar100", "imagenet": "imagenet"}
THREAT_MODELS = {"Linf": "Linf", "L2": "L2"}
AUTOATTACK_STANDARD = "autoattack-standard"
FIELDS = ("link", "name", "authors", "additional_data", "number_forward_passes", "dataset", "venue", "architecture",
          "eps", "clean_acc", "reported", "corruptions_acc", "corruptions_mce", "autoattack_acc", "external",
          "footnote", "unreliable")


def robustbench_dataset(dataset: str) -> str:
    """RobustBench's folder name for a store data set (see the module docstring)."""
    return BENCHMARKS.get(dataset, _slug(dataset))


def entry_name(series: Series) -> str:
    """The RobustBench model name of a series; its first "_" part is the model (RobustBench's citation key)."""
    parts = [_slug(series.model), series.short_sha]
    if series.lambda_setting != TRAINED:
        parts.append(_slug(series.lambda_setting))
    if series.split != "test":
        parts.append(_slug(series.split))
    return "_".join(parts)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.-]+", "-", text).strip("-") or "x"


def _percent(fraction: float) -> str | None:
    """RobustBench's spelling of an accuracy: a percentage with 2 decimals, as a string; None for a missing one."""
    if fraction is None or not math.isfinite(fraction):
        return None
    return str(round(fraction * 100, 2))


def _entry(series: Series, dataset: str, **values) -> dict:
    entry = {
        "link": "",
        "name": f"{series.model} (robust-csc, lambda {series.lambda_setting})",
        "authors": "",
        "additional_data": None,  # not recorded in the store
        "number_forward_passes": 1,
        "dataset": dataset,
        "venue": "N/A",
        "architecture": series.model,
        "eps": None,
        "clean_acc": None,
        "reported": None,
    }
    entry.update(values)
    return {key: entry[key] for key in FIELDS if key in entry}


def _source(series: Series, extra: str = "") -> str:
    return (f"robust-csc {__version__}: {series.model}, checkpoint sha256 {series.checkpoint_sha256}, data set "
            f"{series.dataset}, split {series.split}, lambda {series.lambda_setting}{extra}.")


# ---------------------------------------------------------------- corruptions


def corruption_entries(cells: Cells) -> dict[str, dict[str, dict]]:
    """{RobustBench data set: {entry name: JSON entry}} of every corruption series."""
    out: dict[str, dict[str, dict]] = {}
    frame = cells.corruption
    for series in series_of(frame):
        rows = series.rows(frame)
        figures = summary(rows, series.model)
        present = {(c, int(s)) for c, s in zip(rows["corruption"], rows["severity"]) if c != CLEAN}
        if not present:
            continue  # a clean cell alone is no corruption result
        dataset = robustbench_dataset(series.dataset)
        by_cell = {(c, int(s)): k / n for c, s, k, n in zip(rows["corruption"], rows["severity"], rows["correct"], rows["n"])}
        common = sorted(present & {(c, s) for c in COMMON_CORRUPTIONS for s in SEVERITIES})
        used = common or sorted(present)
        mean = math.fsum(by_cell[key] for key in used) / len(used)
        note = ""
        if math.isnan(figures["mean_accuracy_75"]):
            what = "common" if common else "(extra)"
            note = f"; corruptions_acc is the mean over the {len(used)} {what} cells run, not all 75 common ones"
        mce = None
        if dataset == "imagenet" and not math.isnan(figures["mean_accuracy_75"]):
            mce = _percent(imagenet_mce(rows, series.model).mce)
            note += "; corruptions_mce against AlexNet's published ImageNet-C errors"
        entry = _entry(series, dataset, clean_acc=_percent(figures["clean_accuracy"]), corruptions_acc=_percent(mean),
                       corruptions_mce=mce, footnote=_source(series, note))
        out.setdefault(dataset, {})[entry_name(series)] = entry
    return out


def corruption_results(cells: Cells) -> dict[str, pd.DataFrame]:
    """{RobustBench data set: unaggregated results}: a row per corruption series, a (corruption, severity) column per cell."""
    frame = cells.corruption
    frame = frame[frame["corruption"] != CLEAN]
    out: dict[str, pd.DataFrame] = {}
    for dataset, rows in frame.assign(rb=[robustbench_dataset(d) for d in frame["dataset"]]).groupby("rb", sort=True):
        columns = [(c, s) for c in corruption_order(set(rows["corruption"])) for s in SEVERITIES
                   if ((rows["corruption"] == c) & (rows["severity"] == s)).any()]
        records, names = [], []
        for series in series_of(rows):
            part = series.rows(rows)
            by_cell = {(c, int(s)): k / n for c, s, k, n in zip(part["corruption"], part["severity"], part["correct"], part["n"])}
            records.append([by_cell.get(key, math.nan) for key in columns])
            names.append(entry_name(series))
        out[dataset] = pd.DataFrame(records, index=names, columns=pd.MultiIndex.from_tuples(columns))
    return out


# ---------------------------------------------------------------- attacks


def attack_entries(cells: Cells) -> dict[tuple[str, str], dict[str, dict]]:
    """{(RobustBench data set, threat model): {entry name: JSON entry}}, one per (series, norm, epsilon)."""
    out: dict[tuple[str, str], dict[str, dict]] = {}
    frame = cells.attack
    for series in series_of(frame):
        rows = series.rows(frame)
        for attack, epsilon, n, correct, extras in zip(rows["attack"], rows["epsilon"], rows["n"], rows["correct"], rows["extras"]):
            name, norm = attack_norm(attack)
            if name != WORST_CASE or norm not in THREAT_MODELS:
                continue
            chain = list(extras.get("attacks") or [])
            values = {"eps": format_epsilon(float(epsilon), norm)}
            clean = extras.get("clean_correct")
            values["clean_acc"] = _percent(clean / n) if isinstance(clean, int) and n else None
            worst = correct / n
            # Every attack ran on its own on every clean-correct point: the standard AutoAttack cell's own figure
            # is exactly AutoAttack's robust accuracy; the worst case over all of them is the "external" one.
            standard = next((a for a in chain if attack_norm(a)[0] == AUTOATTACK_STANDARD), None)
            if standard is not None:
                match = rows[(rows["attack"] == standard) & (rows["epsilon"] == epsilon)]
                values["autoattack_acc"] = _percent(float(match["correct"].iloc[0]) / n) if len(match) else None
            if len(chain) > 1 or "autoattack_acc" not in values:
                values["external"] = _percent(worst)
            checks = extras.get("checks") or {}
            if checks:
                values["unreliable"] = not all(isinstance(c, dict) and c.get("passed") for c in checks.values())
            what = f"; robust accuracy is the pointwise worst case over {', '.join(chain) or 'the attacks'}"
            if "autoattack_acc" not in values:
                what += " (not AutoAttack standard, so no autoattack_acc)"
            values["footnote"] = _source(series, what)
            dataset = robustbench_dataset(series.dataset)
            entry = _entry(series, dataset, **values)
            key = (dataset, THREAT_MODELS[norm])
            out.setdefault(key, {})[f"{entry_name(series)}_eps{_slug(values['eps'])}"] = entry
    return out


# ---------------------------------------------------------------- files and the report section


def write_robustbench(cells: Cells, folder: Path) -> list[Path]:
    """Write folder/robustbench/model_info/... for every series; the paths written, in a fixed order."""
    root = Path(folder) / FOLDER / "model_info"
    written: list[Path] = []
    entries = {(dataset, "corruptions"): found for dataset, found in corruption_entries(cells).items()}
    entries.update(attack_entries(cells))
    for (dataset, threat), found in sorted(entries.items()):
        for name, entry in sorted(found.items()):
            path = root / dataset / threat / f"{name}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(entry, indent=2) + "\n", encoding="utf-8")
            written.append(path)
    for dataset, table in sorted(corruption_results(cells).items()):
        path = root / dataset / "corruptions" / RESULTS_CSV
        path.parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(path)  # RobustBench's own writer call: a two-row (corruption, severity) header
        written.append(path)
    return written


def robustbench_section(folder: Path, cells: Cells) -> Section:
    """Write the files and the report section that links them."""
    folder = Path(folder)
    files = write_robustbench(cells, folder)
    intro = (
        "RobustBench's own result files for every series: a leaderboard entry (JSON) per model and threat model, "
        "and the per-corruption results table, in model_info/<dataset>/<threat model>/ as in RobustBench's "
        "repository; a series is named <model>_<sha256[:8]>[_<lambda setting>][_<split>]."
    )
    section = Section("robustbench", "RobustBench files", intro)
    if not files:
        section.items.append(Text("No corruption or attack cells in the store, so no RobustBench files."))
    for path in files:
        relative = path.relative_to(folder).as_posix()
        section.items.append(Link(relative[len(FOLDER) + 1:], relative))
    return section


__all__ = [
    "attack_entries", "corruption_entries", "corruption_results", "entry_name", "robustbench_dataset",
    "robustbench_section", "write_robustbench",
]
