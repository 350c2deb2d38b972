"""`robust-csc compare`: two series of a store on the same images, per cell (McNemar) and on average (bootstrap)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from robust_csc.cli import _say, app


@app.command()
def compare(
    a: str = typer.Option(..., "--a", metavar="MODEL[@LAMBDA]", help="The first series, e.g. sdnet18@policy:7f2753419926."),
    b: str = typer.Option(..., "--b", metavar="MODEL[@LAMBDA]", help="The second series, e.g. sdnet18@trained or resnet18."),
    store: Path = typer.Option(Path("results.sqlite"), "--store", metavar="FILE", help="SQLite results store."),
    dataset: Optional[str] = typer.Option(None, "--dataset", help="The data set (suite name) when a series has several."),
    split: Optional[str] = typer.Option(None, "--split", help="The split when a series has several."),
    checkpoint: Optional[str] = typer.Option(None, "--checkpoint", help="A sha256 prefix when a model has several checkpoints."),
    attack: str = typer.Option("none", "--attack", help="Compare attack cells instead, e.g. worst-case:Linf."),
) -> None:
    """Paired comparison of two series on the same images: per cell and over their common cells, with significance."""
    from robust_csc.evaluation.compare import compare_series, comparison_lines

    frame, mean = compare_series(store, a, b, dataset=dataset, split=split, attack=attack, checkpoint=checkpoint)
    for line in comparison_lines(frame, mean, a, b):
        _say(line)
