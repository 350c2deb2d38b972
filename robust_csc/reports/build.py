"""write_report: a results store -> a folder of tables, plots, index.html and report.md.

    path = write_report("results.sqlite", "report", baseline="resnet18",
                        checkpoints=["runs/demo/sdnet18/model.safetensors"])

The report is built in a temporary folder beside out_dir and renamed into
place when complete; an existing report there is replaced only then, so a
failed or interrupted run leaves the old report (or nothing) behind.
"""

from __future__ import annotations

import os
import re
import shutil
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable

import pandas as pd

from robust_csc.errors import RobustCSCError
from robust_csc.scratch import build_folder
from robust_csc.validation import check_writable_folder, os_reason
from robust_csc.evaluation.store import ResultsStore
from robust_csc.reports import plots
from robust_csc.reports.cells import (
    CLEAN,
    Cells,
    attack_norm,
    chosen_lambda,
    corruption_order,
    format_epsilon,
    known_setting,
    lambda_order,
    report_split,
    series_of,
    suite_profile,
    suite_seed,
    tune_split,
)
from robust_csc.reports.formats import write_table
from robust_csc.reports.page import Document, FigureItem, Finding, Row, Section, TableItem, Text, render_html, render_markdown
from robust_csc.reports.robustbench import robustbench_section
from robust_csc.reports import key_results as K
from robust_csc.reports import names as N
from robust_csc.reports import tables as T
from robust_csc.reports import tta

MARKER = ".robust-csc-report"  # marks a folder as a report this function may replace
EXAMPLE_IMAGES = 4
PACKAGES = ("robust-csc", "torch", "torchvision", "torchattacks", "pyautoattack", "numpy", "pandas", "matplotlib",
            "imagecorruptions-imaug")


@dataclass
class Checkpoint:
    path: Path
    sha256: str
    model: object
    meta: dict


@dataclass
class Report:
    """What build_report made: the document, the tables and (optionally) the Figure objects by file stem."""

    folder: Path
    document: Document
    tables: dict = field(default_factory=dict)
    figures: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")


# ---------------------------------------------------------------- input checks


def _check_out_dir(out_dir: Path) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise RobustCSCError(f"{out_dir} exists and is a file, not a folder; pass a folder path for the report with --out")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / MARKER).is_file():
        raise RobustCSCError(
            f"{out_dir} is a folder that holds other files, not an earlier report; choose a new or empty --out folder"
        )


def _read_frame(store) -> tuple[pd.DataFrame, str]:
    """(every cell of the store, its name for the report)."""
    if isinstance(store, ResultsStore):
        return store.to_frame(), str(store.path)
    if not isinstance(store, (str, Path)):
        raise RobustCSCError(f"store is a {type(store).__name__}; pass a ResultsStore or the path of a results file")
    path = Path(store)
    if not path.exists():  # ResultsStore would create it: a report never writes a store
        raise RobustCSCError(f"no results store at {path}; pass the file that robust-csc evaluate or attack wrote (--store)")
    with ResultsStore(path) as results:
        return results.to_frame(), str(path)


def _select(frame: pd.DataFrame, where: str, models, baseline) -> pd.DataFrame:
    if frame.empty:
        raise RobustCSCError(
            f"the results store {where} holds no result cells; fill it with robust-csc evaluate, attack or tune-lambda first"
        )
    present = sorted(set(frame["model"]))
    if isinstance(models, str):
        models = [m.strip() for m in models.split(",") if m.strip()]
    if models is not None:
        models = list(dict.fromkeys(models))
        if not models:
            raise RobustCSCError(f"no model named; pass model names from the store ({', '.join(present)}) or leave --models out")
        unknown = [m for m in models if m not in present]
        if unknown:
            raise RobustCSCError(
                f"model {', '.join(unknown)} is not in the store {where}; pick from {', '.join(present)}"
            )
    if baseline is not None and baseline not in present:
        raise RobustCSCError(f"baseline {baseline!r} is not in the store {where}; pick one of {', '.join(present)}")
    return frame if models is None else frame[frame["model"].isin(models)]


def _load_checkpoints(paths: Iterable, frame: pd.DataFrame) -> list[Checkpoint]:
    """Checkpoint files (or LoadedModels, robust_csc.models.sources) matched to the store by their sha256."""
    from robust_csc.models.checkpoints import checkpoint_hash
    from robust_csc.models.sources import LoadedModel, as_loaded

    if isinstance(paths, (str, Path, LoadedModel)):
        paths = [paths]
    known = set(frame["checkpoint_sha256"])
    out: dict[str, Checkpoint] = {}
    for path in paths:
        if not isinstance(path, LoadedModel):
            path = Path(path)
        sha = path.sha256 if isinstance(path, LoadedModel) else checkpoint_hash(path)
        if sha not in known:
            raise RobustCSCError(
                f"checkpoint {path} (sha256 {sha[:12]}...) matches no series of the store's models; "
                "pass a checkpoint whose results are in the store, or drop --checkpoint"
            )
        if sha not in out:
            loaded = as_loaded(path)
            out[sha] = Checkpoint(path, sha, loaded.model, loaded.meta)
    return list(out.values())


# ---------------------------------------------------------------- the folder swap


def _swap_into_place(built: Path, out_dir: Path) -> None:
    """Rename the finished folder to out_dir; an earlier report there is moved aside first, then deleted."""
    old = None
    if out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(out_dir, old)
    try:
        os.replace(built, out_dir)
    except OSError:
        if old is not None:
            os.replace(old, out_dir)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_report(
    store,
    out_dir,
    *,
    models=None,
    baseline: str | None = None,
    checkpoints: Iterable = (),
    title: str | None = None,
    data_root=None,
) -> Path:
    """Write the report of store (a ResultsStore or a path) into out_dir; returns out_dir / "index.html".

    models: names to show (default all; the baseline's cells are used for mCE
    either way); baseline: the model mCE is relative to; checkpoints: files
    whose stem atoms and reconstructions to show, matched to the store by
    sha256; data_root: where the checkpoints' data sets live (digits needs none).
    """
    out_dir = Path(out_dir)
    _check_out_dir(out_dir)
    frame, where = _read_frame(store)
    shown = _select(frame, where, models, baseline)
    loaded = _load_checkpoints(checkpoints, shown)
    check_writable_folder(out_dir.parent, "--out", shown=out_dir)  # before any work: a read-only folder or a full disk
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        with build_folder(out_dir) as built:  # removes the build folders of killed runs first
            try:
                build_report(
                    Cells.from_frame(shown),
                    built,
                    reference=Cells.from_frame(frame),
                    baseline=baseline,
                    checkpoints=loaded,
                    title=title,
                    store_name=where,
                    data_root=data_root,
                )
                _swap_into_place(built, out_dir)
            except BaseException:
                shutil.rmtree(built, ignore_errors=True)
                raise
    except OSError as err:
        raise RobustCSCError(
            f"could not write the report to {out_dir} ({os_reason(err)}); free space on that disk or choose a writable --out"
        ) from None
    return out_dir / "index.html"


# ---------------------------------------------------------------- building


class _Builder:
    def __init__(self, folder: Path, keep_figures: bool) -> None:
        self.folder = folder
        self.keep_figures = keep_figures
        self.report = Report(folder, Document("", "", []))

    def table(self, table: T.Table) -> TableItem:
        files = write_table(table, self.folder / "tables")
        self.report.tables[table.name] = table
        return TableItem(table, {fmt: path.relative_to(self.folder).as_posix() for fmt, path in files.items()})

    def figure(self, figure, name: str, caption: str) -> FigureItem:
        files = plots.save_figure(figure, self.folder / "figures", name)
        if self.keep_figures:
            self.report.figures[name] = figure
        return FigureItem(caption, {fmt: path.relative_to(self.folder).as_posix() for fmt, path in files.items()})

    def note(self, text: str) -> Text:
        self.report.notes.append(text)
        return Text(text)


def build_report(
    cells: Cells,
    folder: Path,
    *,
    reference: Cells | None = None,
    baseline: str | None = None,
    checkpoints: list[Checkpoint] = (),
    title: str | None = None,
    store_name: str = "",
    data_root=None,
    keep_figures: bool = False,
) -> Report:
    """Every table, plot and both pages into folder (which must exist). keep_figures keeps the Figure objects."""
    folder = Path(folder)
    b = _Builder(folder, keep_figures)
    reference = reference or cells
    created = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    models = sorted(set(cells.frame["model"]))
    with N.naming(reference.frame):  # policies get their readable names (recon rule, per sample (7f27…))
        sections = [
            _key_results(b, cells, reference, baseline),
            *_tta_sections(b, cells),
            _summary(b, cells, reference, baseline),
            *_corruptions(b, cells),
            *_curves(b, cells),
            _attacks(b, cells),
            _tuning(b, cells),
            _model_plots(b, cells, checkpoints, data_root),
            robustbench_section(folder, cells),
            _glossary(),
            _settings(b, cells, checkpoints, baseline, store_name, created),
        ]
    if b.report.notes:
        sections.append(Section("notes", "Notes", "What this report could not show, and why.",
                                [Text(n) for n in b.report.notes]))
    doc = Document(
        title or f"Robustness report: {', '.join(models)}",
        f"robust-csc report of {store_name or 'a results store'}, created {created}. Accuracies in percent with "
        "their 95% interval; the run's provenance (checkpoints, seeds, versions) is at the end.",
        sections,
    )
    b.report.document = doc
    (folder / "index.html").write_text(render_html(doc, folder), encoding="utf-8")
    (folder / "report.md").write_text(render_markdown(doc), encoding="utf-8")
    (folder / MARKER).write_text("robust-csc report folder: `robust-csc report` may replace it\n", encoding="utf-8")
    return b.report


# ---------------------------------------------------------------- sections


def _versions() -> str:
    from importlib import metadata

    from robust_csc import __version__

    found = [f"robust-csc {__version__}"]  # the code that is running, whatever an older install's metadata says
    for name in PACKAGES[1:]:
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            found.append(f"{name} (not installed)")
    return ", ".join(found)


def _seeds(rows: pd.DataFrame, dataset: str, split: str) -> str:
    seeds = []
    if suite_profile(dataset):
        seeds.append(f"suite {suite_seed(dataset)}")
    for parse, what in ((tune_split, "tuning split"), (report_split, "reporting split")):
        found = parse(split)
        if found:
            seeds.append(f"{what} {found[1]}")
    extra = sorted({str(e["seed"]) for e in rows["extras"] if "seed" in e})
    if extra:
        seeds.append("run " + "/".join(extra))
    return "; ".join(seeds)


def _compress(names: list[str]) -> str:
    """A lambda sweep as "stem=0.1 ... stem=1.4 (14 values)"; short lists as they are."""
    kinds: dict[str, list[str]] = {}
    for name in names:
        kinds.setdefault(lambda_order(name)[1] if lambda_order(name)[0] == 1 else name, []).append(name)
    parts = [f"{v[0]} ... {v[-1]} ({len(v)} values)" if len(v) > 4 else ", ".join(v) for v in kinds.values()]
    return ", ".join(parts)


def _kinds(rows: pd.DataFrame) -> str:
    kinds = []
    attacked = rows["attack"] != "none"
    if (~attacked).any():
        kinds.append("lambda grid" if tune_split(rows["split"].iloc[0]) else "corruption")
    if attacked.any():
        kinds.append("attack")
    return ", ".join(kinds)


def _settings(b: _Builder, cells: Cells, checkpoints, baseline, store_name, created) -> Section:
    frame = cells.frame
    records = []
    groups = frame.groupby(["model", "checkpoint_sha256", "dataset", "split"], sort=True)
    for (model, sha, dataset, split), rows in groups:
        settings = _compress(sorted(set(rows["lambda_setting"]), key=lambda_order))
        records.append(
            {
                "model": model,
                "checkpoint_sha256": sha,
                "dataset": dataset,
                "split": split,
                "cells": len(rows),
                "kinds": _kinds(rows),
                "lambda_settings": settings,
                "seeds": _seeds(rows, dataset, split),
            }
        )
    table = pd.DataFrame.from_records(records)
    kinds = {c: T.TEXT for c in table.columns}
    kinds["cells"] = T.INTEGER
    about = "Every model, checkpoint (first 8 hex digits of its sha256; the CSV has all 64), data set and split in this report."
    items = [b.table(T.Table("runs", "Runs in this report", about, table, kinds))]
    facts = [
        f"Store: {store_name} ({len(frame)} cells shown). Created {created}.",
        f"Baseline for mCE: {baseline}." if baseline else "No baseline given (--baseline), so no mCE.",
        f"Packages: {_versions()}.",
    ]
    for ck in checkpoints:
        lam = ck.meta.get("lambda") or {}
        lam_text = ", ".join(f"{k} = {v:g}" for k, v in lam.items()) if lam else "no CSC layers"
        facts.append(
            f"Checkpoint {ck.path}: sha256 {ck.sha256}, {ck.meta.get('arch')} trained on "
            f"{ck.meta.get('dataset') or 'an unrecorded data set'}, "
            f"trained lambda {lam_text}."
        )
    items += [Text(f, note=False) for f in facts]
    intro = ("Provenance: the models, their checkpoints' sha256, the data sets (suite names), splits, settings (exact "
             "store names), seeds and versions.")
    return Section("settings", "Run settings", intro, items)


def key_tables(cells: Cells, reference: Cells | None = None, baseline: str | None = None):
    """[(evaluation, its Table, its sentences)]: the report's key results (robust_csc.reports.key_results)."""
    reference = reference or cells
    mce = {}
    if baseline is not None:
        frame, base_frame = cells.corruption, reference.corruption
        for series in series_of(frame):
            figures = T._mce(frame, base_frame, series, baseline, [])
            mce[(series.model, series.checkpoint_sha256, series.lambda_setting, series.dataset, series.split)] = figures
    out = []
    evaluations = K.evaluations(cells, baseline)
    for i, evaluation in enumerate(evaluations):
        mine = {(m, sha, setting): f for (m, sha, setting, d, sp), f in mce.items()
                if (d, sp) == (evaluation.dataset, evaluation.split)}
        frame, intervals, hidden = K.key_frame(evaluation, mine)
        kinds = {c: T.TEXT for c in frame.columns}
        for column in intervals:
            kinds[column] = T.PERCENT
        headers = K.headers(evaluation, frame)
        about = ("Accuracy in % with its 95% interval (Wilson for one cell, a bootstrap over the images for a mean "
                 "and for mCE); robust accuracy: the worst case over every attack run at that budget. Only a "
                 "difference marked significant (p < 0.05) is evidence. The CSV has the exact store names and bounds.")
        name = "key_results" if i == 0 else f"key_results__{slug(evaluation.dataset + '__' + evaluation.split)}"
        table = T.Table(name, f"On {evaluation.title}", about, frame, kinds, intervals=intervals,
                        hidden=tuple(hidden), headers=headers, footnote=K.footnote(evaluation))
        out.append((evaluation, table, K.key_sentences(evaluation)))
    return out


def _key_results(b: _Builder, cells: Cells, reference: Cells, baseline) -> Section:
    section = Section("key", "Key results", "")
    found = key_tables(cells, reference, baseline)
    if not found:
        section.items.append(b.note("The store holds no corruption or attack cells to summarise."))
    for _, table, sentences in found:
        item = b.table(table)
        item.findings = [Finding(text) for text in sentences]
        section.items.append(item)
    return section


def _tta_sections(b: _Builder, cells: Cells) -> list[Section]:
    """Lambda tuning beside test-time adaptation, per evaluation that has a policy or a TTA setting."""
    frame = cells.corruption
    if frame.empty:
        return []
    groups = [(key, rows) for key, rows in frame.groupby(["dataset", "split"], sort=True) if tta.applies(rows)]
    if not groups:
        return []
    intro = ("Does lambda tuning add to the standard test-time remedies, or replace them? Accuracy by severity for "
             "the trained λ, the tuned λ, bn-adapt, tent and their combinations, on the same images, and the paired "
             "differences between them.")
    section = Section("tta", "Lambda tuning and test-time adaptation", intro)
    for (dataset, split), rows in groups:
        where = N.data_label(dataset, split)
        by_severity = tta.by_severity(rows)
        by_severity.name = f"tta_by_severity__{slug(dataset + '__' + split)}"
        by_severity.title = f"{by_severity.title}: {where}"
        section.items.append(b.table(by_severity))
        figure = plots.tta_by_severity(by_severity.frame, f"Accuracy by severity per setting, {where}")
        section.items.append(b.figure(figure, f"tta__{slug(dataset + '__' + split)}",
                                      f"Accuracy (%) against severity per setting and model on {where}; bars: 95% "
                                      "intervals; the points of each setting are offset sideways to stay visible."))
        additions = tta.additions(rows)
        if not additions.frame.empty:
            additions.name = f"tta_additions__{slug(dataset + '__' + split)}"
            section.items.append(b.table(additions))
            section.items.extend(Finding(text) for text in tta.answer(additions))
    return [section]


def _curves(b: _Builder, cells: Cells) -> list[Section]:
    """The noise curves in the store: accuracy against a continuous noise level per setting, with intervals."""
    from robust_csc.evaluation.noise_curve import curve_level
    from robust_csc.evaluation.stats import wilson_columns

    frame = cells.curve
    if frame.empty:
        return []
    intro = ("Accuracy against a continuous noise level (the paper's λ-versus-noise curves), per λ setting, on the "
             "same noisy images for every setting; bands and ± are the 95% Wilson intervals.")
    section = Section("noise-curves", "Noise curves", intro)
    parsed = [curve_level(c) for c in frame["corruption"]]
    frame = frame.assign(kind=[p[0] for p in parsed], level=[p[1] for p in parsed])
    for (model, sha, dataset, split, kind), rows in frame.groupby(
            ["model", "checkpoint_sha256", "dataset", "split", "kind"], sort=True):
        settings = sorted(set(rows["lambda_setting"]), key=lambda n: (N.setting_kind(n) != "trained", lambda_order(n)))
        curve = rows.assign(order=rows["lambda_setting"].map({n: i for i, n in enumerate(settings)}))
        curve = curve.sort_values(["order", "level"])
        curve["low"], curve["high"] = wilson_columns(curve["correct"].tolist(), curve["n"].tolist())
        where = f"{model} (checkpoint {sha[:8]}), {N.data_label(dataset, split)}"
        figure = plots.accuracy_vs_noise_level(curve, f"{where}: accuracy against {kind} noise")
        name = slug(f"{model}__{sha[:8]}__{dataset}__{split}__{kind}")
        section.items.append(b.figure(figure, f"noise_curve__{name}",
                                      f"Accuracy (%) against the {kind} noise level: {where}; bands: 95% Wilson "
                                      f"intervals (n = {int(rows['n'].max())} images per point)."))
        table = curve.pivot(index="level", columns="lambda_setting", values="accuracy")[settings]
        lows = curve.pivot(index="level", columns="lambda_setting", values="low")[settings]
        highs = curve.pivot(index="level", columns="lambda_setting", values="high")[settings]
        out = pd.DataFrame({"level": table.index})
        intervals, headers = {}, {}
        for setting in settings:
            out[setting] = table[setting].to_numpy()
            out[f"{setting} low"], out[f"{setting} high"] = lows[setting].to_numpy(), highs[setting].to_numpy()
            intervals[setting] = (f"{setting} low", f"{setting} high")
            headers[setting] = N.setting_label(setting)
        kinds = {c: T.PERCENT for c in out.columns}
        kinds["level"] = T.RATIO
        headers["level"] = plots.LEVEL_UNITS.get(kind, "level")
        about = (f"Accuracy in % ± half the 95% Wilson interval at each {kind} noise level (rows) per setting "
                 f"(columns); n = {int(rows['n'].max())} images. The CSV names the settings exactly.")
        section.items.append(b.table(T.Table(f"noise_curve__{name}", f"Noise curve: {where}", about, out, kinds,
                                             intervals=intervals, interval_style="pm", headers=headers)))
    return [section]


GLOSSARY = (
    ("λ (lambda)", "the sparsity weight of a CSC layer's code; it can be changed at test time without retraining."),
    ("trained λ", "the lambdas the checkpoint was trained with; the reference every other setting is compared with."),
    ("severity", "the corruption strength, 1 to 5 (CIFAR-10-C / ImageNet-C parameters); 0 is the clean image."),
    ("mean corruption accuracy", "the mean accuracy over the corruption cells (corruption × severity) that were run."),
    ("mCE", "Hendrycks' mean corruption error: per corruption, the errors summed over severities divided by the "
            "baseline model's, averaged over the 15 common corruptions; below 100% beats the baseline."),
    ("recon error", "the stem CSC layer's reconstruction error ‖x − Az‖² per image: how far its sparse code's "
                    "synthesis A z is from the input x; it grows with noise."),
    ("code density", "the fraction of the stem's code entries that are non-zero; a larger λ makes codes sparser."),
    ("oracle", "the per-cell best λ of a grid sweep, chosen with the labels of the tuning split: an upper reference, "
               "not a deployable rule (a grid policy applies it per corruption and severity)."),
    ("recon rule", "a label-free policy: λ from a straight line fitted to the stem's recon error at the trained λ, "
                   "chosen per sample or per batch at test time."),
    ("tuning / reporting split", "every cell's images halved by a seeded permutation: λ is chosen on the tuning half "
                                 "and scored only on the reporting half, never on an image that chose it."),
    ("bn-adapt", "BatchNorm statistics re-estimated on each test batch (N: the prior strength of the source "
                 "statistics; N = 0 uses the batch alone)."),
    ("tent", "one entropy-minimisation step per test batch on the BatchNorm affine parameters, reset per cell "
             "(episodic) or carried on (online)."),
    ("worst case", "per image, robust only if it survived every attack run at that budget (the sanity checks' "
                   "stronger attack and the adaptive attacks included)."),
    ("AutoAttack-grade", "the worst case includes the full standard AutoAttack, comparable with RobustBench figures."),
    ("upper bound", "a robust accuracy from weaker attacks only (e.g. PGD): the true robust accuracy may be lower."),
    ("interval", "the 95% interval of a figure: Wilson for one cell, a bootstrap over images for a mean or mCE, a "
                 "paired bootstrap for a difference."),
    ("significant", "a paired difference with p < 0.05 (exact McNemar for one cell, the paired bootstrap for a mean); "
                    "a difference that is not significant is no evidence of a gain or a loss."),
)


def _glossary() -> Section:
    items = [Text(f"{term}: {text}", note=False) for term, text in GLOSSARY]
    return Section("glossary", "Glossary", "The few terms the tables and plots use.", items)


def _summary(b: _Builder, cells: Cells, reference: Cells, baseline) -> Section:
    notes: list[str] = []
    table = T.summary_table(cells, baseline, notes, reference=reference)
    items = [b.table(table)]
    if notes:
        items.append(b.note(
            f"mCE needs the baseline {baseline} on the same data set and split at its trained lambdas; "
            f"it is missing for: {'; '.join(notes)}."
        ))
    comparisons = T.comparisons(cells, baseline, reference=reference)
    if not comparisons.frame.empty:
        items.append(b.table(comparisons))
    items.extend(b.note(text) for text in _provenance_notes(cells))
    intro = ("Every corruption series with its 95% intervals: clean accuracy, the means over the cells run, the "
             "RobustBench and severity-5 means, mCE; then every paired difference with its significance.")
    return Section("summary", "Summary across models", intro, items)


def _provenance_notes(cells: Cells) -> list[str]:
    """Cells without per-example outcomes (said once), and series whose cells come from several versions."""
    from robust_csc.reports.uncertainty import versions_of

    frame = cells.frame
    notes = []
    legacy = int(frame["outcomes"].isna().sum())
    if legacy:
        notes.append(
            f"{legacy} cells were stored without per-example outcomes (robust-csc < 0.2): they have Wilson intervals "
            "but no bootstrap intervals or paired tests; rerun them with --recompute to get both."
        )
    for series in series_of(frame):
        versions = versions_of(series.rows(frame))
        if len(versions) > 1:
            notes.append(f"{series.title()} mixes cells computed by robust-csc {', '.join(versions)}; rerun it with "
                         "--recompute so that every number comes from one version.")
    return notes


def _corruptions(b: _Builder, cells: Cells) -> list[Section]:
    frame = cells.corruption
    intro = (
        "Accuracy on corrupted test images: per data set and split, accuracy against severity with one line per "
        "model and lambda setting; then each series' corruption x severity table and heatmap."
    )
    section = Section("corruptions", "Corruption robustness", intro)
    if frame.empty:
        section.items.append(b.note("No corruption cells in the store: run robust-csc evaluate to fill this section."))
        return [section]
    per_series = dict(T.series_tables(cells))
    subsections = [section]
    for (dataset, split), rows in frame.groupby(["dataset", "split"], sort=True):
        sub = Section(f"corruptions-{slug(dataset + '-' + split)}", f"{dataset}, split {split}", level=3)
        if (rows["corruption"] != CLEAN).any():
            figure = plots.accuracy_vs_severity(rows, f"{dataset}, split {split}")
            sub.items.append(b.figure(figure, f"severity__{slug(dataset + '__' + split)}",
                                      f"Accuracy against severity (clean at 0) on {dataset}, split {split}."))
        for series in series_of(rows):
            table = per_series.get(series)
            if table is None:
                continue
            figure = plots.heatmap(table.frame, series.title())
            sub.items.append(Row([
                b.table(table),
                b.figure(figure, f"heatmap__{series.slug()}", "The same accuracies as a heatmap (percent in the cells)."),
            ]))
        subsections.append(sub)
    return subsections


def _attacks(b: _Builder, cells: Cells) -> Section:
    frame = cells.attack
    intro = (
        "Robust accuracy under adversarial attacks (epsilon in pixel units of [0, 1] images), per attack and as the "
        "pointwise worst case over all attacks at one budget, with the attack runner's sanity checks."
    )
    section = Section("attacks", "Adversarial robustness", intro)
    if frame.empty:
        section.items.append(b.note("No attack cells in the store: run robust-csc attack to fill this section."))
        return section
    section.items.append(b.table(T.robustness(cells)))
    norms = [attack_norm(a)[1] for a in frame["attack"]]
    frame = frame.assign(norm=norms)
    for (dataset, split, norm), rows in frame.groupby(["dataset", "split", "norm"], sort=True):
        caption = f"Robust accuracy against epsilon ({norm}) on {dataset}, split {split}; thick lines: worst case."
        figure = plots.robust_vs_epsilon(rows, f"{dataset}, split {split}, {norm}")
        section.items.append(b.figure(figure, f"epsilon__{slug(dataset + '__' + split + '__' + norm)}", caption))
    for series in series_of(frame):
        rows = series.rows(frame)
        failed: dict[str, list] = {}  # check name -> [(where, detail)]
        for attack, epsilon, extras in zip(rows["attack"], rows["epsilon"], rows["extras"]):
            for name, check in sorted((extras.get("checks") or {}).items()):
                if isinstance(check, dict) and not check.get("passed"):
                    where = f"{attack} {format_epsilon(epsilon, attack_norm(attack)[1])}"
                    failed.setdefault(name, []).append((where, str(check.get("detail", ""))))
        for name, cases in failed.items():
            section.items.append(b.note(
                f"Sanity check {name} failed for {series.title()} at {', '.join(w for w, _ in cases)}: {cases[0][1]}"
            ))
    return section


def _chosen_for_group(cells: Cells, key: tuple, kind: str) -> tuple[dict, str]:
    """{(corruption, severity): lambda} a grid policy chose for this tuning group, and where it came from."""
    model, sha, dataset, split = key
    base, seed = tune_split(split)
    policy = cells.policy
    matches = policy[
        (policy["model"] == model)
        & (policy["checkpoint_sha256"] == sha)
        & (policy["dataset"] == dataset)
        & (policy["split"] == f"{base}:report:s{seed}")
    ]
    layers = {"all": "all", "stem": "stem", "scale": "scale"}[kind]
    for name in sorted(set(matches["lambda_setting"])):
        rows = matches[matches["lambda_setting"] == name]
        extras = list(rows["extras"])
        if all(e.get("rule") == "grid" and e.get("layers") == layers for e in extras):
            chosen = {(c, int(s)): chosen_lambda(e) for c, s, e in zip(rows["corruption"], rows["severity"], extras)}
            return chosen, f"marked: the lambda policy {name} chose"
    return {}, "marked: the best grid lambda on the tuning split (no grid policy in the store)"


def _tuning(b: _Builder, cells: Cells) -> Section:
    intro = (
        "Lambda chosen per corruption and severity on a tuning split and scored on the disjoint reporting split; "
        "the sweep on the tuning split (accuracy, the stem's code density and reconstruction error against lambda)."
    )
    section = Section("tuning", "Lambda tuning", intro)
    grid = cells.grid
    if cells.policy.empty and grid.empty:
        section.items.append(b.note("No lambda tuning cells in the store: run robust-csc tune-lambda to fill this section."))
        return section
    if not cells.policy.empty:
        notes: list[str] = []
        section.items.append(b.table(T.tuning(cells, notes)))
        section.items.extend(b.note(text) for text in notes)
        for series in series_of(cells.policy):
            rows = series.rows(cells.policy)
            figure = plots.chosen_lambda_vs_noise(rows, series.title())
            section.items.append(b.figure(figure, f"chosen_lambda__{series.slug()}",
                                          f"Chosen lambda against severity: {series.title()}."))
    if grid.empty:
        return section
    kinds = [_grid_kind(name) for name in grid["lambda_setting"]]
    grid = grid.assign(kind=kinds)
    grid = grid[grid["kind"].notna()]
    for (model, sha, dataset, split, kind), rows in grid.groupby(
        ["model", "checkpoint_sha256", "dataset", "split", "kind"], sort=True
    ):
        what = f"{model} (checkpoint {sha[:8]}), {dataset}, split {split}, lambda of {kind}"
        name = slug(f"{model}__{sha[:8]}__{dataset}__{split}__{kind}")
        chosen, how = _chosen_for_group(cells, (model, sha, dataset, split), kind)
        if not chosen:
            points = plots.grid_points(rows, "accuracy")
            chosen = {key: plots.best_on_grid(p) for key, p in points.items()}
        figure = plots.accuracy_vs_lambda(rows, chosen, what)
        section.items.append(b.figure(figure, f"lambda_accuracy__{name}",
                                      f"Accuracy against lambda per noise level: {what}; stars {how}."))
        if rows["mean_code_density"].notna().any() or rows["mean_recon_error"].notna().any():
            figure = plots.sparsity_recon_vs_lambda(rows, what)
            section.items.append(b.figure(figure, f"lambda_sparsity__{name}",
                                          f"The stem's code density and reconstruction error against lambda: {what}."))
    return section


def _grid_kind(name: str) -> str | None:
    setting = known_setting(name)
    return None if setting is None or setting.kind == "trained" else setting.kind


# ---------------------------------------------------------------- the model's own plots


def _example_plan(cells: Cells, sha: str):
    """(corruption, severity, suite name, tuned LambdaSetting or None, tuned label) for a checkpoint's examples."""
    from robust_csc.lambdas import LambdaSetting

    policy = cells.policy[cells.policy["checkpoint_sha256"] == sha]
    policy = policy[policy["corruption"] != CLEAN]
    if not policy.empty:
        order = {c: i for i, c in enumerate(corruption_order(policy["corruption"]))}
        row = min(policy.itertuples(index=False), key=lambda r: (order[r.corruption], -r.severity, r.lambda_setting))
        value = chosen_lambda(row.extras)
        layers = row.extras.get("layers", "stem")
        if value == value and layers in ("stem", "all", "scale"):
            setting = LambdaSetting(layers, value)
            label = f"{row.lambda_setting}" + (" (mean over images)" if "mean_lambda" in row.extras else "")
            return row.corruption, int(row.severity), row.dataset, setting, f"tuned lambda {setting.name}, {label}"
    corr = cells.corruption[(cells.corruption["checkpoint_sha256"] == sha) & (cells.corruption["corruption"] != CLEAN)]
    if corr.empty:
        return "gaussian_noise", 5, "", None, ""
    first = corruption_order(corr["corruption"])[0]
    severity = int(corr[corr["corruption"] == first]["severity"].max())
    return first, severity, str(corr[corr["corruption"] == first]["dataset"].iloc[0]), None, ""


def _example_images(meta: dict, corruption: str, severity: int, suite: str, data_root):
    """The first test images of the checkpoint's data set, clean and corrupted as the generated suite does."""
    import numpy as np
    import torch

    from robust_csc.corruptions import corrupt_images
    from robust_csc.data import dataset_info, load_dataset
    from robust_csc.data.generated import from_uint8_hwc, to_uint8_hwc

    name = meta.get("dataset")
    if not name:
        raise RobustCSCError("the checkpoint records no data set")
    info = dataset_info(name)
    test = load_dataset(info.name, "test", root=data_root)
    pixels = np.stack([to_uint8_hwc(test[i][0]) for i in range(min(EXAMPLE_IMAGES, len(test)))])
    profile = suite_profile(suite) or ("cifar" if info.image_size == 32 else "imagenet")
    corrupted = corrupt_images(pixels, corruption, severity, profile=profile, seed=suite_seed(suite))
    to_tensor = lambda batch: torch.stack([from_uint8_hwc(p) for p in batch])  # noqa: E731
    return to_tensor(pixels), to_tensor(corrupted), profile


def _model_plots(b: _Builder, cells: Cells, checkpoints, data_root) -> Section:
    from robust_csc.lambdas import LambdaSetting
    from robust_csc.reports import model_plots as M

    intro = (
        "The stem's dictionary (each atom stretched to the full colour range on its own) and a few test images: "
        "clean, corrupted, and the stem's reconstruction A z of its sparse code, at the trained lambda and at the "
        "tuned one. Reconstructions are mapped back from the normalised input space to pixels."
    )
    section = Section("model", "Dictionary and reconstructions", intro)
    if not checkpoints:
        section.items.append(b.note(
            "Atoms and example reconstructions need the model: pass its checkpoint (--checkpoint FILE) to show them."
        ))
        return section
    for ck in checkpoints:
        layer = M.stem_layer(ck.model)
        name = f"{ck.meta.get('arch')} (checkpoint {ck.sha256[:8]})"
        if layer is None:
            section.items.append(b.note(f"{name} has no CSC layer, so it has no dictionary or reconstructions to show."))
            continue
        figure = M.atoms_figure(layer.weight, f"{name}: {layer.out_channels} stem atoms, {layer.kernel_size}x{layer.kernel_size}")
        section.items.append(b.figure(figure, f"atoms__{ck.sha256[:8]}", f"Stem dictionary of {name}."))
        corruption, severity, suite, tuned, tuned_label = _example_plan(cells, ck.sha256)
        try:
            clean, corrupted, profile = _example_images(ck.meta, corruption, severity, suite, data_root)
        except RobustCSCError as err:
            section.items.append(b.note(f"No example images for {name}: {err}"))
            continue
        columns = [("clean", clean), (f"{corruption} {severity}", corrupted)]
        columns.append(("recon, trained lambda", M.stem_reconstruction(ck.model, corrupted, LambdaSetting())))
        if tuned is not None:
            columns.append((f"recon, {tuned.name}", M.stem_reconstruction(ck.model, corrupted, tuned, corruption, severity)))
        else:
            section.items.append(b.note(f"No tuned lambda for {name} in the store, so its examples show the trained lambda only."))
        caption = (
            f"{name}: the first {len(clean)} test images, {corruption} at severity {severity} ({profile} profile), "
            f"and the stem's reconstructions" + (f"; {tuned_label}." if tuned is not None else ".")
        )
        figure = M.examples_figure(columns, name)
        section.items.append(b.figure(figure, f"examples__{ck.sha256[:8]}", caption))
    return section
