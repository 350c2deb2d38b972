"""`robust-csc convert-official`: an official SDNet checkpoint as a robust-csc checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from robust_csc.cli import options as O
from robust_csc.cli.app import PlainArguments, app
from robust_csc.cli.output import Clock, command, finish, say
from robust_csc.errors import RobustCSCError

@app.command("convert-official", cls=PlainArguments, short_help="An official SDNet checkpoint as a robust-csc checkpoint.")
def convert_official(
    src: Path = typer.Argument(..., metavar="SRC", help="Official SDNet .pt/.pth checkpoint."),
    dst: Path = typer.Argument(..., metavar="DST", help="Output .safetensors checkpoint."),
    arch: str = O.ARCH_REQUIRED,
    dataset: Optional[str] = typer.Option(
        None, "--dataset", metavar="NAME", help="Data set: digits, cifar10, cifar100, fashion-mnist, mnist or imagenet."
    ),
    force: bool = O.FORCE,
) -> None:
    """Convert an official SDNet checkpoint (github.com/Delay-Xili/SDNet) to a robust-csc checkpoint."""
    from robust_csc.models.checkpoints import convert_official_checkpoint, read_metadata

    clock = Clock()
    # Checked here too, before anything is read: DST must survive a refused call untouched.
    if dst.exists() and not force:
        raise RobustCSCError(f"{dst} already exists; pass --force to replace it")
    path = convert_official_checkpoint(src, dst, arch, dataset=dataset, overwrite=force)
    meta = read_metadata(path)
    say(f"wrote {path} arch {meta['arch']} num_classes {meta['num_classes']}")
    finish(clock, [path], [command("robust-csc", "info", path),
                           command("robust-csc", "evaluate", "--checkpoint", path, "--suite", "cifar10-c")])
