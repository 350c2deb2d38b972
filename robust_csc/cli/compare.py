"""`robust-csc compare`: two series of a store on the same images, per cell (McNemar) and on average (bootstrap)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from robust_csc.cli import options as O
from robust_csc.cli.app import app
from robust_csc.cli.output import Clock, command, finish, say


@app.command(short_help="Paired comparison of two stored series, with significance.")
def compare(
    a: str = typer.Option(..., "--a", metavar="SERIES", help="The first series, MODEL[@LAMBDA], e.g. sdnet18@policy:7f2753419926."),
    b: str = typer.Option(..., "--b", metavar="SERIES", help="The second series, MODEL[@LAMBDA], e.g. sdnet18@trained or resnet18."),
    store: Path = O.STORE,
    store_dataset: Optional[str] = typer.Option(
        None, "--store-dataset", metavar="NAME", help="The store's data set (a suite name) when a series has several."
    ),
    split: Optional[str] = typer.Option(None, "--split", metavar="NAME", help="The split when a series has several."),
    checkpoint_sha: Optional[str] = typer.Option(
        None, "--checkpoint-sha", metavar="PREFIX", help="A sha256 prefix when a model has several checkpoints."
    ),
    attack_cell: str = typer.Option(
        "none", "--attack-cell", metavar="NAME", help="Compare attack cells instead, e.g. worst-case:Linf."
    ),
) -> None:
    """Paired comparison of two series on the same images: per cell and over their common cells, with significance."""
    from robust_csc.evaluation.compare import compare_series, comparison_lines

    clock = Clock()
    frame, mean = compare_series(store, a, b, dataset=store_dataset, split=split, attack=attack_cell,
                                 checkpoint=checkpoint_sha)
    for line in comparison_lines(frame, mean, a, b):
        say(line)
    finish(clock, [], [command("robust-csc", "report", "--store", store, "--out", "report")])
