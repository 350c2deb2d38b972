"""The model options every verb shares: --checkpoint FILE or --model REF, and what a reference needs.

    checkpoint: Optional[Path] = CHECKPOINT, model: Optional[str] = MODEL, weights: Optional[Path] = WEIGHTS,
    num_classes: Optional[int] = NUM_CLASSES, mean: Optional[str] = MEAN, std: Optional[str] = STD,
    model_dir: Optional[Path] = MODEL_DIR, allow_download: bool = ALLOW_DOWNLOAD,
    ...
    source = load_model_option(checkpoint, model, weights, num_classes, mean, std, model_dir, allow_download)

`--model` names any classifier (robust_csc.models.sources): a checkpoint
file, torchvision:NAME, timm:NAME, robustbench:DATASET:THREAT:NAME or a
builder; `--checkpoint` stays the plain file option it always was.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from robust_csc.errors import RobustCSCError

CHECKPOINT = typer.Option(None, "--checkpoint", help="A robust-csc .safetensors checkpoint (or use --model).")
MODEL = typer.Option(
    None, "--model",
    help="Any classifier instead of --checkpoint: a checkpoint file, torchvision:NAME, timm:NAME, "
    "robustbench:DATASET:corruptions|Linf|L2:NAME, package.module:function or path/file.py:function.",
)
WEIGHTS = typer.Option(
    None, "--weights", help="Weights for a torchvision, timm or builder --model: .safetensors, or .pt (read weights-only)."
)
NUM_CLASSES = typer.Option(None, "--num-classes", help="Classes of a torchvision, timm or builder --model.")
MEAN = typer.Option(
    None, "--mean", help="Per-channel input mean of a --model that expects normalised input, e.g. 0.485,0.456,0.406 (with --std)."
)
STD = typer.Option(None, "--std", help="Per-channel input std (with --mean) [default: none for builders; ImageNet's for torchvision/timm].")
MODEL_DIR = typer.Option(
    None, "--model-dir", help="RobustBench's model folder, <dir>/<dataset>/<threat model>/<name>.pt [default: ./models]."
)
ALLOW_DOWNLOAD = typer.Option(
    False, "--allow-download", help="Let robustbench download a missing zoo checkpoint (needs the network)."
)


def load_model_option(
    checkpoint: Optional[Path],
    model: Optional[str],
    weights: Optional[Path] = None,
    num_classes: Optional[int] = None,
    mean: Optional[str] = None,
    std: Optional[str] = None,
    model_dir: Optional[Path] = None,
    allow_download: bool = False,
):
    """The LoadedModel that --checkpoint or --model names (exactly one of them), every option checked."""
    from robust_csc.models.sources import as_loaded, load_model

    if (checkpoint is None) == (model is None):
        raise RobustCSCError(
            "pass the model as --checkpoint FILE (a robust-csc checkpoint) or --model REF (e.g. torchvision:resnet18), one of them"
        )
    if checkpoint is not None:
        extra = [name for name, value in (("--weights", weights), ("--num-classes", num_classes), ("--mean", mean),
                                          ("--std", std), ("--model-dir", model_dir)) if value is not None]
        if extra or allow_download:
            raise RobustCSCError(
                f"{', '.join(extra + (['--allow-download'] if allow_download else []))} describe a --model reference, "
                "not a --checkpoint; pass the reference with --model or drop them"
            )
        if not Path(checkpoint).exists() and ":" in str(checkpoint):
            raise RobustCSCError(f"--checkpoint takes a file and {checkpoint} is none; pass a model reference with --model")
        return as_loaded(checkpoint)
    return load_model(
        model, weights=weights, num_classes=num_classes, mean=mean, std=std, model_dir=model_dir, allow_download=allow_download
    )
