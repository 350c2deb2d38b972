"""The robust-csc command line: train, demo, convert-official, models, info.

Every user-fixable problem (a RobustCSCError) ends the program with one line
``error: <message>`` on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from robust_csc.errors import RobustCSCError

app = typer.Typer(
    name="robust-csc",
    help="Convolutional sparse coding (SDNet) networks: train, convert and inspect checkpoints.",
    add_completion=False,
    no_args_is_help=True,
    rich_markup_mode=None,  # plain, greppable help and usage errors
    pretty_exceptions_enable=False,
)


def _say(line: str) -> None:
    print(line, flush=True)


@app.command()
def train(
    model: str = typer.Option(..., "--model", help="Model name (see `robust-csc models`)."),
    dataset: str = typer.Option(..., "--dataset", help="digits, cifar10 or cifar100."),
    out: Optional[Path] = typer.Option(None, "--out", help="Output folder [default: runs/<model>-<dataset>]."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Override the recipe's epochs."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Global batch size (split across GPUs)."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Override the recipe's learning rate."),
    width: Optional[int] = typer.Option(None, "--width", help="Channels of the first stage [model default 64]."),
    lam: Optional[float] = typer.Option(None, "--lam", help="Lambda of the CSC layers (SDNet models)."),
    seed: int = typer.Option(0, "--seed"),
    data_root: Optional[Path] = typer.Option(None, "--data-root", help="Data folder [default: ./data]."),
    download: bool = typer.Option(False, "--download", help="Download the data set if missing."),
    workers: int = typer.Option(0, "--workers", help="DataLoader worker processes."),
    no_resume: bool = typer.Option(False, "--no-resume", help="Start over even if OUT/resume.pt exists."),
    amp: Optional[bool] = typer.Option(None, "--amp/--no-amp", help="Mixed precision [default: on with CUDA]."),
    progress: Optional[bool] = typer.Option(
        None, "--progress/--no-progress", help="Progress bar on stderr [default: when stderr is a terminal]."
    ),
) -> None:
    """Train a model with its data set's recipe; resumable (rerun the same command)."""
    from robust_csc.training import TrainConfig, train as run_training

    config = TrainConfig(
        model=model,
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
        amp=amp,
        resume=not no_resume,
        progress=sys.stderr.isatty() if progress is None else progress,
    )
    summary = run_training(config, log=_say)
    if summary["rank"] == 0:
        final = next((f for f in summary["files"] if f.endswith("model.safetensors")), None)
        where = final or summary["out_dir"]
        _say(f"done {where} test_acc {summary['test_acc']:.4f} epochs {summary['epochs_done']}/{summary['epochs']}")


@app.command()
def demo(
    out: Path = typer.Option(Path("runs/demo"), "--out", help="Output folder for both checkpoints."),
    quick: bool = typer.Option(False, "--quick", help="4 epochs instead of 15 (a smoke test)."),
) -> None:
    """Train SDNet-18 and ResNet-18 on the embedded digits set and sweep lambda (a few minutes on a CPU)."""
    from robust_csc.demo import run_demo

    run_demo(out, quick=quick, progress=sys.stderr.isatty())


@app.command("convert-official")
def convert_official(
    src: Path = typer.Argument(..., help="Official SDNet .pt/.pth checkpoint."),
    dst: Path = typer.Argument(..., help="Output .safetensors checkpoint."),
    arch: str = typer.Option(..., "--arch", help="sdnet18, sdnet34, sdnet18_all or sdnet34_all."),
    dataset: Optional[str] = typer.Option(None, "--dataset", help="Data set the weights were trained on."),
    force: bool = typer.Option(False, "--force", help="Overwrite DST."),
) -> None:
    """Convert an official SDNet checkpoint (github.com/Delay-Xili/SDNet) to a robust-csc checkpoint."""
    from robust_csc.models.checkpoints import convert_official_checkpoint, read_metadata

    # Checked here too, before anything is read: DST must survive a refused call untouched.
    if dst.exists() and not force:
        raise RobustCSCError(f"{dst} already exists; pass --force to replace it")
    path = convert_official_checkpoint(src, dst, arch, dataset=dataset, overwrite=force)
    meta = read_metadata(path)
    _say(f"wrote {path} arch {meta['arch']} num_classes {meta['num_classes']}")


@app.command()
def models() -> None:
    """List the model zoo: one name per line, then its arguments and defaults."""
    from robust_csc.models import list_models, model_arguments

    for name in list_models():
        arguments = " ".join(f"{k}={v}" for k, v in model_arguments(name).items())
        _say(f"{name:<12} {arguments}")


@app.command()
def info(checkpoint: Path = typer.Argument(..., help="A robust-csc .safetensors checkpoint.")) -> None:
    """Print a checkpoint's metadata (JSON) and its sha256."""
    from robust_csc.models.checkpoints import checkpoint_hash, load_checkpoint

    # Loading every tensor (not only the header) is what finds a truncated file.
    model, meta = load_checkpoint(checkpoint)
    meta = dict(meta)
    meta["parameters"] = sum(p.numel() for p in model.parameters())
    meta["sha256"] = checkpoint_hash(checkpoint)
    _say(json.dumps(meta, indent=2, sort_keys=True))


def _one_line(message: str) -> str:
    return " ".join(str(message).split())


def main(argv: list[str] | None = None) -> None:
    """Console entry point: runs the app; a RobustCSCError becomes `error: ...` and exit code 2."""
    try:
        app(args=argv, prog_name="robust-csc")
    except RobustCSCError as err:
        print(f"error: {_one_line(str(err))}", file=sys.stderr, flush=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
