"""`robust-csc report`: tables, plots and an HTML page from a results store."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from robust_csc.cli import options as O
from robust_csc.cli.app import app
from robust_csc.cli.output import Clock, finish, say
from robust_csc.errors import RobustCSCError


@app.command(short_help="Key results, tables, plots and an HTML page from a results store.")
def report(
    store: Path = O.STORE_REQUIRED,
    out: Path = typer.Option(
        ..., "--out", metavar="DIR",
        help="Report folder (index.html, report.md, tables/, figures/); an earlier report there is replaced.",
    ),
    models: Optional[List[str]] = typer.Option(
        None, "--models", metavar="LIST", help="Comma list of models to show [default: all in the store]."
    ),
    baseline: Optional[str] = typer.Option(
        None, "--baseline", metavar="NAME", help="The model every other is compared with, and mCE is relative to (e.g. resnet18)."
    ),
    checkpoints: Optional[List[Path]] = typer.Option(
        None, "--checkpoint", metavar="FILE", help="A checkpoint in the store, for its atoms and reconstructions; repeatable."
    ),
    model: Optional[str] = O.MODEL,
    weights: Optional[Path] = O.WEIGHTS,
    num_classes: Optional[int] = O.NUM_CLASSES,
    mean: Optional[str] = O.MEAN,
    std: Optional[str] = O.STD,
    model_dir: Optional[Path] = O.MODEL_DIR,
    allow_download: bool = O.ALLOW_DOWNLOAD,
    title: Optional[str] = typer.Option(None, "--title", metavar="TEXT", help="Title of the report."),
    data_root: Optional[Path] = O.DATA_ROOT,
) -> None:
    """Write a report of a results store: the key results first, then CSV / Markdown / LaTeX tables, PNG / PDF plots,
    index.html and report.md. --checkpoint / --model add the stem's atoms and reconstructions."""
    from robust_csc.reports import write_report

    clock = Clock()
    chosen = O.items(models)
    if model is not None:  # beside any --checkpoint files, matched to the store by its weights hash
        checkpoints = [*(checkpoints or ()),
                       O.load_model_option(None, model, weights, num_classes, mean, std, model_dir, allow_download)]
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
    from robust_csc.reports.key_results import store_text_lines

    for line in store_text_lines(store, baseline):  # the key results, as the page opens with them
        say(line)
    say()
    tables = sorted((out / "tables").glob("*.csv"))
    figures = sorted((out / "figures").glob("*.png"))
    say(f"wrote {len(tables)} tables (CSV, Markdown, LaTeX) and {len(figures)} plots (PNG, PDF) to {out}")
    say(f"markdown: {out / 'report.md'}")
    say(str(path))
    finish(clock, [out], [f"open {path} in a browser (it prints to A4)"])
