"""`robust-csc demo`: the whole main job on the embedded digits set (robust_csc.demo), or the full-size
run on Fashion-MNIST-C / MNIST-C (robust_csc.fullrun)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from robust_csc.cli import options as O
from robust_csc.cli.app import app
from robust_csc.cli.output import Clock, command, finish, say
from robust_csc.errors import RobustCSCError


@app.command(short_help="The whole main job on digits, offline, in a few minutes; --full: Fashion-MNIST-C at full size.")
def demo(
    out: Optional[Path] = typer.Option(None, "--out", metavar="DIR",
                                       help="Output folder [default: runs/demo, runs/<dataset> with --full]."),
    quick: bool = typer.Option(False, "--quick", help="4 epochs and a 2-corruption suite (a smoke test)."),
    dataset: str = typer.Option("digits", "--dataset", metavar="NAME",
                                help=f"{O._DATASETS} [default: digits; fashion-mnist or mnist with --full]."),
    full: bool = typer.Option(False, "--full", help="The full-size run: all 95 cells x 10,000 test images (hours on 2 cores)."),
    suite_dir: Optional[Path] = typer.Option(None, "--suite-dir", metavar="DIR",
                                             help="A stored suite to reuse [default: OUT/<dataset>-c]."),
    data_root: Optional[Path] = O.DATA_ROOT,
) -> None:
    """Train SDNet-18 and ResNet-18, evaluate, attack, tune lambda, compare with TTA and report: on the embedded
    digits set, or at full size with --full."""
    clock = Clock()
    if full or dataset != "digits":
        if not full:
            raise RobustCSCError(f"the {dataset} demo is the full-size run; pass --full (hours on 2 cores)")
        if quick:
            raise RobustCSCError("--quick and --full ask for opposite runs; pass one of them")
        from robust_csc.fullrun import run_full

        out = out or Path("runs") / dataset
        run_full(out, dataset=dataset, suite_dir=suite_dir, data_root=data_root, echo=say)
    else:
        if suite_dir is not None or data_root is not None:
            raise RobustCSCError("--suite-dir and --data-root belong to the full run; add --full --dataset fashion-mnist")
        from robust_csc.demo import run_demo

        out = out or Path("runs/demo")
        run_demo(out, quick=quick, progress=O.progress_on(None))
    finish(clock, [out], [command("robust-csc", "report", "--store", Path(out) / "results.sqlite", "--out", "report")])
