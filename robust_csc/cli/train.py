"""`robust-csc train`: a zoo model with its data set's recipe; resumable."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from robust_csc.cli import options as O
from robust_csc.cli.app import app
from robust_csc.cli.output import Clock, command, finish, say
from robust_csc.errors import RobustCSCError


def _deprecated(old: str, new: str) -> None:
    print(f"note: {old} is deprecated; use {new}", file=sys.stderr, flush=True)


@app.command(short_help="Train a zoo model with its data set's recipe (resumable).")
def train(
    arch: Optional[str] = O.ARCH,
    dataset: str = O.DATASET_REQUIRED,
    out: Optional[Path] = typer.Option(None, "--out", metavar="DIR", help="Output folder [default: runs/<arch>-<dataset>]."),
    epochs: Optional[int] = typer.Option(None, "--epochs", metavar="N", help="Override the recipe's epochs."),
    batch_size: Optional[int] = typer.Option(
        None, "--batch-size", metavar="N", help="Images per batch [default: the recipe's, over all GPUs under torchrun]."
    ),
    lr: Optional[float] = typer.Option(None, "--lr", metavar="FLOAT", help="Override the recipe's learning rate."),
    width: Optional[int] = typer.Option(None, "--width", metavar="N", help="Channels of the first stage [model default 64]."),
    lam: Optional[float] = typer.Option(
        None, "--lambda", metavar="FLOAT", help="The lambda of every CSC layer to train with (SDNet models) [default: 0.1]."
    ),
    seed: int = O.SEED,
    data_root: Optional[Path] = O.DATA_ROOT,
    download: bool = O.DOWNLOAD,
    verify_checksums: bool = O.VERIFY_CHECKSUMS,
    workers: int = O.WORKERS,
    no_resume: bool = typer.Option(False, "--no-resume", help="Start over even if OUT/resume.pt exists."),
    amp: Optional[bool] = typer.Option(None, "--amp/--no-amp", help="Mixed precision [default: on with CUDA]."),
    progress: Optional[bool] = O.PROGRESS,
    old_model: Optional[str] = typer.Option(None, "--model", metavar="NAME", hidden=True, help="Deprecated: --arch."),
    old_lam: Optional[float] = typer.Option(None, "--lam", metavar="FLOAT", hidden=True, help="Deprecated: --lambda."),
) -> None:
    """Train a zoo model with its data set's recipe; resumable (rerun the same command).

    Under torchrun it trains with DistributedDataParallel: torchrun --nproc_per_node 4 -m robust_csc.cli train ...
    """
    from robust_csc.training import TrainConfig, train as run_training

    clock = Clock()
    # --model and --lam were train's names before every verb shared --model REF and --lambda.
    if old_model is not None:
        _deprecated("train --model", "--arch")
        arch = arch or old_model
    if old_lam is not None:
        _deprecated("train --lam", "--lambda")
        lam = old_lam if lam is None else lam
    if arch is None:
        raise RobustCSCError("no model to train; pass --arch NAME, e.g. --arch sdnet18 (see robust-csc models)")
    config = TrainConfig(
        model=arch,
        dataset=dataset,
        out_dir=out,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        width=width,
        lam=lam,
        seed=seed,
        num_workers=workers,
        data_root=data_root,
        download=download,
        verify_checksums=verify_checksums,
        amp=amp,
        resume=not no_resume,
        progress=O.progress_on(progress),
    )
    summary = run_training(config, log=say)
    if summary["rank"] == 0:
        final = next((f for f in summary["files"] if f.endswith("model.safetensors")), None)
        where = final or summary["out_dir"]
        say(f"done {where} test_acc {summary['test_acc']:.4f} epochs {summary['epochs_done']}/{summary['epochs']}")
        suite = {"cifar10": "cifar10-c", "cifar100": "cifar100-c", "fashion-mnist": "fashion-mnist-c",
                 "mnist": "mnist-c"}.get(dataset.lower(), "generated")
        finish(clock, summary["files"], [command("robust-csc", "evaluate", "--checkpoint", where, "--suite", suite)])
