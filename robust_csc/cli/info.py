"""`robust-csc info`: a checkpoint's metadata and sha256, as JSON."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from robust_csc.cli.app import PlainArguments, app
from robust_csc.cli.output import Clock, command, finish, say


@app.command(cls=PlainArguments, short_help="A checkpoint's metadata and sha256, as JSON.")
def info(checkpoint: Path = typer.Argument(..., metavar="FILE", help="A robust-csc .safetensors checkpoint.")) -> None:
    """Print a checkpoint's metadata (JSON on stdout) and its sha256."""
    from robust_csc.models.checkpoints import checkpoint_hash, load_checkpoint

    clock = Clock()
    # Loading every tensor (not only the header) is what finds a truncated file.
    model, meta = load_checkpoint(checkpoint)
    meta = dict(meta)
    meta["parameters"] = sum(p.numel() for p in model.parameters())
    meta["sha256"] = checkpoint_hash(checkpoint)
    say(json.dumps(meta, indent=2, sort_keys=True))
    suite = {"cifar10": "cifar10-c", "cifar100": "cifar100-c", "imagenet": "imagenet-c"}.get(str(meta.get("dataset")),
                                                                                          "generated")
    finish(clock, [], [command("robust-csc", "evaluate", "--checkpoint", checkpoint, "--suite", suite)])
