"""`robust-csc noise-curve`: accuracy against a continuous noise level, one curve per lambda setting."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer

from robust_csc.cli import at_least_two, _not_negative, _positive, _say, _workers, app, lambda_settings, refuse_lambdas_without_csc
from robust_csc.commands import model_options as M
from robust_csc.errors import RobustCSCError
from robust_csc.validation import check_device, check_writable_file

LEVELS_HINT = "write start:stop:count (e.g. 0:0.3:7) or a comma list (e.g. 0,0.05,0.1)"


@app.command("noise-curve")
def noise_curve_command(
    checkpoint: Optional[Path] = M.CHECKPOINT,
    model: Optional[str] = M.MODEL,
    weights: Optional[Path] = M.WEIGHTS,
    num_classes: Optional[int] = M.NUM_CLASSES,
    mean: Optional[str] = M.MEAN,
    std: Optional[str] = M.STD,
    model_dir: Optional[Path] = M.MODEL_DIR,
    allow_download: bool = M.ALLOW_DOWNLOAD,
    kind: str = typer.Option(..., "--kind", help="gaussian, shot, impulse or speckle."),
    levels: str = typer.Option(
        ..., "--levels", help="Noise levels (gaussian/speckle sigma, shot photons, impulse amount): " + LEVELS_HINT + "."
    ),
    lambdas: Optional[List[str]] = typer.Option(
        None, "--lambda",
        help="'trained', a number (every CSC layer), stem=0.5 or scale=1.5; repeat or comma-separate [default: trained].",
    ),
    lambda_policy: Optional[Path] = typer.Option(
        None, "--lambda-policy", help="A recon-rule lambda policy from tune-lambda (a curve beside --lambda)."
    ),
    dataset: Optional[str] = typer.Option(None, "--dataset", help="The clean test set [default: the checkpoint's]."),
    data_root: Optional[Path] = typer.Option(None, "--data-root", help="Data folder [default: ./data]."),
    n_examples: Optional[int] = typer.Option(None, "--n-examples", help="The first N test images [default: all]."),
    seed: int = typer.Option(0, "--seed", help="Seed of the noise (each image's noise also depends on its index)."),
    out: Optional[Path] = typer.Option(
        None, "--out", help="Write the curve to this CSV file and its figure beside it (.png, .pdf)."
    ),
    force: bool = typer.Option(False, "--force", help="Replace existing --out files."),
    batch_size: int = typer.Option(256, "--batch-size"),
    workers: int = typer.Option(0, "--workers", help="DataLoader worker processes."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, ... [default: where the model loads]."),
    eager: bool = typer.Option(False, "--eager", help="Add the noise with eager torch ops instead of torch.compile."),
    download: bool = typer.Option(False, "--download", help="Download the clean test set if missing."),
    verify_checksums: bool = typer.Option(
        True, "--verify-checksums/--no-verify-checksums",
        help="Check the clean CIFAR files against torchvision's MD5s; --no-verify-checksums accepts a copy you trust.",
    ),
    progress: Optional[bool] = typer.Option(None, "--progress/--no-progress", help="Progress bar on stderr."),
) -> None:
    """Accuracy at each noise level (any continuous value) under each lambda setting, on the clean test set."""
    from robust_csc.evaluation.noise_curve import (
        best_per_level, check_levels, curve_files, curve_table, curve_text, noise_curve, noise_kind, save_curve,
    )
    from robust_csc.tuning.grid import parse_number_list

    # Every mistake is refused before any model runs and before a file is written.
    device = check_device(device)
    kind = noise_kind(kind)
    values = check_levels(kind, parse_number_list(levels, "noise levels", LEVELS_HINT))
    checkpoint = M.load_model_option(checkpoint, model, weights, num_classes, mean, std, model_dir, allow_download)
    settings = lambda_settings(lambdas, lambda_policy, checkpoint)
    at_least_two(n_examples)
    _positive(batch_size, "--batch-size")
    _not_negative(seed, "--seed")
    _workers(workers)
    if out is not None:
        if out.suffix.lower() != ".csv":
            raise RobustCSCError(f"--out {out} is not a .csv file; name the table FILE.csv (its figure goes beside it)")
        existing = [path for path in curve_files(out).values() if path.exists()]
        if existing and not force:
            raise RobustCSCError(f"{existing[0]} already exists; pass --force to replace it or choose another --out")
        check_writable_file(out, "--out")
    meta = checkpoint.meta
    refuse_lambdas_without_csc(checkpoint, meta, settings)
    policies = [s for s in settings if hasattr(s, "reporting_images")]
    base = dataset or (policies[0].base_dataset() if policies else None) or meta.get("dataset")
    if not base:
        raise RobustCSCError(f"{checkpoint} records no data set; pass --dataset (digits, cifar10, cifar100, imagenet)")
    if policies and base != policies[0].base_dataset():
        raise RobustCSCError(f"--dataset {base} is not the data set lambda policy {lambda_policy} was tuned on "
                             f"({policies[0].base_dataset()}); leave --dataset out")

    from torch.utils.data import Subset

    from robust_csc.data import dataset_info, load_dataset
    from robust_csc.data.generated import generated_clean

    if download:
        load_dataset(base, "test", root=data_root, download=True)
    if policies:
        # A tuned policy is only run on images it was not tuned on: its reporting half.
        whole = int(policies[0].meta["suite"]["images_per_cell"])
        clean = policies[0].reporting_images(generated_clean(base, "test", data_root, whole, verify_checksums=verify_checksums))
        if n_examples is not None:
            if n_examples > len(clean):
                raise RobustCSCError(f"--n-examples {n_examples} exceeds the {len(clean)} reporting images of lambda policy "
                                     f"{lambda_policy}; pass at most {len(clean)}")
            clean = Subset(clean, range(n_examples))
    else:
        clean = generated_clean(base, "test", data_root, n_examples, verify_checksums=verify_checksums)
    checkpoint.expect_classes(dataset_info(base).num_classes, f"the {base} test set")
    frame = noise_curve(
        checkpoint.model, clean, kind, values, settings, seed=seed, batch_size=batch_size, num_workers=workers,
        device=device, compiled=not eager, model_name=meta["arch"],
        progress=sys.stderr.isatty() if progress is None else progress,
    )
    which = f"the reporting split of {policies[0].name}" if policies else "test"
    _say(f"{meta['arch']} ({checkpoint}) on {base} {which}, n = {len(clean)} images, {kind} noise, seed {seed}: "
         "accuracy in % ± half the 95% Wilson interval")
    _say(curve_text(frame).to_string())
    table = curve_table(frame)
    if len(table.columns) > 1:
        best = best_per_level(frame)["best_lambda_setting"]
        _say("best lambda setting per level: " + ", ".join(f"{level:g} {best[level]}" for level in table.index))
    if out is not None:
        save_curve(frame, out, f"{meta['arch']} on {base}: accuracy against {kind} noise level")
        _say(f"wrote {out} and {out.with_suffix('.png')}")

