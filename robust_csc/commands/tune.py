"""`robust-csc tune-lambda`: choose lambda per noise cell on a tuning split, report on the other, write a policy."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer

from robust_csc.cli import _positive, _say, _workers, app, build_suite
from robust_csc.commands import model_options as M
from robust_csc.errors import RobustCSCError
from robust_csc.validation import check_device, check_writable_file


@app.command("tune-lambda")
def tune_lambda(
    checkpoint: Optional[Path] = M.CHECKPOINT,
    model: Optional[str] = M.MODEL,
    weights: Optional[Path] = M.WEIGHTS,
    num_classes: Optional[int] = M.NUM_CLASSES,
    mean: Optional[str] = M.MEAN,
    std: Optional[str] = M.STD,
    model_dir: Optional[Path] = M.MODEL_DIR,
    allow_download: bool = M.ALLOW_DOWNLOAD,
    suite: str = typer.Option(..., "--suite", help="generated, cifar10-c, cifar100-c or imagenet-c."),
    out: Path = typer.Option(..., "--out", help="The lambda policy file to write (JSON)."),
    dataset: Optional[str] = typer.Option(None, "--dataset", help="Base data set of a generated suite [default: the checkpoint's]."),
    profile: Optional[str] = typer.Option(None, "--profile", help="Generated suite parameters: cifar or imagenet [default: cifar]."),
    data_root: Optional[Path] = typer.Option(None, "--data-root", help="Data folder [default: ./data]."),
    corruptions: Optional[List[str]] = typer.Option(None, "--corruptions", help="Comma list [default: all in the suite]."),
    severities: Optional[List[str]] = typer.Option(None, "--severities", help="Comma list from 1..5 [default: all]."),
    n_examples: Optional[int] = typer.Option(None, "--n-examples", help="Images per cell, halved into tuning and reporting."),
    grid: Optional[str] = typer.Option(
        None, "--grid", help="start:stop:count or a comma list [default: 0.1:1.4:14; 0.5:5:10 with --layers scale]."
    ),
    layers: str = typer.Option("stem", "--layers", help="stem, all (one value for every CSC layer) or scale (x trained)."),
    rule: str = typer.Option("grid", "--rule", help="grid (a lambda per cell) or recon (from the stem's recon error)."),
    per: str = typer.Option("sample", "--per", help="The recon rule picks lambda per sample or per batch."),
    seed: int = typer.Option(0, "--seed", help="Seed of the tuning/reporting split (and a generated suite)."),
    store: Path = typer.Option(Path("results.sqlite"), "--store", help="SQLite results store (created if missing)."),
    batch_size: int = typer.Option(256, "--batch-size", help="Rows per model pass (the sweep packs the grid into them)."),
    workers: int = typer.Option(0, "--workers", help="DataLoader worker processes."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, ... [default: where the model loads]."),
    download: bool = typer.Option(False, "--download", help="Download the suite or base data set if missing."),
    force: bool = typer.Option(False, "--force", help="Replace an existing --out file."),
    verify_checksums: bool = typer.Option(
        True, "--verify-checksums/--no-verify-checksums",
        help="Check the clean CIFAR files against torchvision's MD5s; --no-verify-checksums accepts a copy you trust.",
    ),
    progress: Optional[bool] = typer.Option(None, "--progress/--no-progress", help="Progress bars on stderr."),
    recompute: bool = typer.Option(False, "--recompute", help="Sweep and evaluate again, replacing stored cells."),
) -> None:
    """Tune lambda per (corruption, severity) on a tuning split; print the choice and the gains on the reporting split."""
    from robust_csc.evaluation.store import ResultsStore
    from robust_csc.tuning import check_grid, default_grid, parse_grid
    from robust_csc.tuning.grid import check_layers
    from robust_csc.tuning.policy import RULES
    from robust_csc.tuning.rule import PER
    from robust_csc.tuning.tuner import tune_checkpoint

    # Every mistake is refused before the store opens and before any model runs.
    device = check_device(device)
    if out.exists() and not force:
        raise RobustCSCError(f"{out} already exists; pass --force to replace it or choose another --out")
    check_writable_file(out, "--out")  # the policy is written after the sweep: its folder is tried first
    layers = check_layers(layers.lower())
    if rule not in RULES:
        raise RobustCSCError(f"unknown --rule {rule!r}; use grid or recon")
    if per not in PER:
        raise RobustCSCError(f"unknown --per {per!r}; use sample or batch")
    values = default_grid(layers) if grid is None else parse_grid(grid, layers)
    check_grid(values, layers)
    _positive(batch_size, "--batch-size")
    _workers(workers)
    checkpoint = M.load_model_option(checkpoint, model, weights, num_classes, mean, std, model_dir, allow_download)
    chosen = build_suite(
        checkpoint, suite, dataset=dataset, profile=profile, data_root=data_root, corruptions=corruptions,
        severities=severities, n_examples=n_examples, seed=seed, download=download,
        verify_checksums=verify_checksums,
    )
    if not chosen.meta.get("lambda"):
        raise RobustCSCError(
            f"{checkpoint} holds a {chosen.meta.get('arch')} model without CSC layers, so lambda cannot be tuned; "
            "pass an SDNet checkpoint"
        )
    if chosen.clean_note:
        _say(chosen.clean_note)
    with ResultsStore(store) as results:
        result = tune_checkpoint(
            checkpoint, chosen.suite, store=results, clean=chosen.clean, grid=values, layers=layers, rule=rule,
            per=per, seed=seed, out=out, force=force, dataset=chosen.suite.name, split_base=chosen.split,
            batch_size=batch_size, num_workers=workers, device=device,
            progress=sys.stderr.isatty() if progress is None else progress, recompute=recompute,
            suite_options={"suite": suite.lower(), "dataset": dataset or (chosen.meta.get("dataset") if suite.lower() == "generated" else None),
                           "profile": (profile or "cifar") if suite.lower() == "generated" else None, "seed": seed,
                           "n_examples": n_examples},
        )
    _say(f"{chosen.meta.get('arch')} ({checkpoint}) on {chosen.suite.name}: {len(chosen.suite.corruptions)} corruptions x "
         f"{len(chosen.suite.severities)} severities, {chosen.suite.images_per_cell} images per cell")
    for line in result.lines():
        _say(line)
    _say(f"store: {store}")
