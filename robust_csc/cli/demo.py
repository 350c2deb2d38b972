"""`robust-csc demo`: the whole main job on the embedded digits set (robust_csc.demo)."""

from __future__ import annotations

from pathlib import Path

import typer

from robust_csc.cli import options as O
from robust_csc.cli.app import app
from robust_csc.cli.output import Clock, command, finish


@app.command(short_help="The whole main job on digits, offline, in a few minutes.")
def demo(
    out: Path = typer.Option(Path("runs/demo"), "--out", metavar="DIR", help="Output folder."),
    quick: bool = typer.Option(False, "--quick", help="4 epochs and a 2-corruption suite (a smoke test)."),
) -> None:
    """Train SDNet-18 and ResNet-18 on the embedded digits set, evaluate, attack, tune lambda, compare with TTA, report."""
    from robust_csc.demo import run_demo

    clock = Clock()
    run_demo(out, quick=quick, progress=O.progress_on(None))
    finish(clock, [out], [command("robust-csc", "report", "--store", Path(out) / "results.sqlite", "--out", "report")])
