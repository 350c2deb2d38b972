"""`robust-csc report`: tables, plots and an HTML page from a results store."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from robust_csc.cli import _items, _say, app
from robust_csc.commands import model_options as M
from robust_csc.errors import RobustCSCError


@app.command()
def report(
    store: Path = typer.Option(..., "--store", help="The SQLite results store to report on."),
    out: Path = typer.Option(..., "--out", help="Report folder (index.html, report.md, tables/, figures/); an earlier report there is replaced."),
    models: Optional[List[str]] = typer.Option(None, "--models", help="Comma list of models to show [default: all in the store]."),
    baseline: Optional[str] = typer.Option(None, "--baseline", help="Model the mCE is relative to (e.g. resnet18)."),
    checkpoints: Optional[List[Path]] = typer.Option(
        None, "--checkpoint", help="A checkpoint in the store, for its atoms and reconstructions; repeatable."
    ),
    model: Optional[str] = typer.Option(
        None, "--model", help="A model reference in the store (as evaluate's --model), for its atoms and reconstructions."
    ),
    weights: Optional[Path] = M.WEIGHTS,
    num_classes: Optional[int] = M.NUM_CLASSES,
    mean: Optional[str] = M.MEAN,
    std: Optional[str] = M.STD,
    model_dir: Optional[Path] = M.MODEL_DIR,
    allow_download: bool = M.ALLOW_DOWNLOAD,
    title: Optional[str] = typer.Option(None, "--title", help="Title of the report."),
    data_root: Optional[Path] = typer.Option(None, "--data-root", help="Data folder of the checkpoints' data sets [default: ./data]."),
) -> None:
    """Write a report of a results store: CSV / Markdown / LaTeX tables, PNG / PDF plots, index.html and report.md."""
    from robust_csc.reports import write_report

    chosen = _items(models)
    if model is not None:  # beside any --checkpoint files, matched to the store by its weights hash
        checkpoints = [*(checkpoints or ()), M.load_model_option(None, model, weights, num_classes, mean, std, model_dir, allow_download)]
    elif any(v is not None for v in (weights, num_classes, mean, std, model_dir)) or allow_download:
        raise RobustCSCError("--weights, --num-classes, --mean, --std, --model-dir and --allow-download go with --model; pass it or drop them")
    path = write_report(
        store,
        out,
        models=chosen if models else None,
        baseline=baseline,
        checkpoints=checkpoints or (),
        title=title,
        data_root=data_root,
    )
    tables = sorted((out / "tables").glob("*.csv"))
    figures = sorted((out / "figures").glob("*.png"))
    _say(f"wrote {len(tables)} tables (CSV, Markdown, LaTeX) and {len(figures)} plots (PNG, PDF) to {out}")
    _say(f"markdown: {out / 'report.md'}")
    _say(str(path))
