"""`robust-csc tune-lambda`: choose lambda per noise cell on a tuning split, report on the other, write a policy."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from robust_csc.cli import options as O
from robust_csc.cli.app import app
from robust_csc.cli.output import Clock, command, finish, say
from robust_csc.cli.suites import build_suite
from robust_csc.errors import RobustCSCError
from robust_csc.validation import check_writable_file


@app.command("tune-lambda", short_help="Choose lambda per noise level on a tuning split; write a policy.")
def tune_lambda(
    checkpoint: Optional[Path] = O.CHECKPOINT,
    model: Optional[str] = O.MODEL,
    weights: Optional[Path] = O.WEIGHTS,
    num_classes: Optional[int] = O.NUM_CLASSES,
    mean: Optional[str] = O.MEAN,
    std: Optional[str] = O.STD,
    model_dir: Optional[Path] = O.MODEL_DIR,
    allow_download: bool = O.ALLOW_DOWNLOAD,
    suite: str = O.SUITE_REQUIRED,
    out: Path = typer.Option(..., "--out", metavar="FILE", help="The lambda policy file to write (JSON)."),
    dataset: Optional[str] = O.DATASET,
    profile: Optional[str] = O.PROFILE,
    data_root: Optional[Path] = O.DATA_ROOT,
    corruptions: Optional[List[str]] = O.CORRUPTIONS,
    severities: Optional[List[str]] = O.SEVERITIES,
    n_examples: Optional[int] = O.N_EXAMPLES,
    grid: Optional[str] = typer.Option(
        None, "--grid", metavar="LIST",
        help="Lambda values: start:stop:count or a comma list [default: 0.1:1.4:14; 0.5:5:10 with --layers scale].",
    ),
    layers: str = typer.Option(
        "stem", "--layers", metavar="NAME", help="stem, all (one value for every CSC layer) or scale (x trained)."
    ),
    rule: str = typer.Option(
        "grid", "--rule", metavar="NAME", help="grid (a lambda per cell) or recon (from the stem's recon error)."
    ),
    per: str = typer.Option("sample", "--per", metavar="NAME", help="The recon rule picks lambda per sample or per batch."),
    seed: int = O.SEED,
    store: Path = O.STORE,
    batch_size: int = O.batch_size_option(256),
    workers: int = O.WORKERS,
    device: Optional[str] = O.DEVICE,
    download: bool = O.DOWNLOAD,
    force: bool = O.FORCE,
    verify_checksums: bool = O.VERIFY_CHECKSUMS,
    progress: Optional[bool] = O.PROGRESS,
    recompute: bool = O.RECOMPUTE,
) -> None:
    """Tune lambda per (corruption, severity) on a tuning split; print the choice and the gains on the reporting split.

    Each cell's --n-examples images are halved by a seeded permutation: lambda is chosen on one half and scored on
    the other; the policy file records both, and evaluate / attack / noise-curve score it on the reporting half only.
    """
    clock = Clock()
    from robust_csc.evaluation.store import ResultsStore
    from robust_csc.tuning import check_grid, default_grid, parse_grid
    from robust_csc.tuning.grid import check_layers
    from robust_csc.tuning.policy import RULES
    from robust_csc.tuning.rule import PER
    from robust_csc.tuning.tuner import tune_checkpoint

    # Every mistake is refused before the store opens and before any model runs.
    device = O.resolve_device(device)
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
    O.positive(batch_size, "--batch-size")
    O.workers(workers)
    loaded = O.load_model_option(checkpoint, model, weights, num_classes, mean, std, model_dir, allow_download)
    chosen = build_suite(
        loaded, suite, dataset=dataset, profile=profile, data_root=data_root, corruptions=corruptions,
        severities=severities, n_examples=n_examples, seed=seed, download=download,
        verify_checksums=verify_checksums,
    )
    if not chosen.meta.get("lambda"):
        raise RobustCSCError(
            f"{loaded} holds a {chosen.meta.get('arch')} model without CSC layers, so lambda cannot be tuned; "
            "pass an SDNet checkpoint"
        )
    if chosen.clean_note:
        say(chosen.clean_note)
    with ResultsStore(store) as results:
        result = tune_checkpoint(
            loaded, chosen.suite, store=results, clean=chosen.clean, grid=values, layers=layers, rule=rule,
            per=per, seed=seed, out=out, force=force, dataset=chosen.suite.name, split_base=chosen.split,
            batch_size=batch_size, num_workers=workers, device=device,
            progress=O.progress_on(progress), recompute=recompute,
            suite_options={"suite": suite.lower(), "dataset": dataset or (chosen.meta.get("dataset") if suite.lower() == "generated" else None),
                           "profile": (profile or "cifar") if suite.lower() == "generated" else None, "seed": seed,
                           "n_examples": n_examples},
        )
    say(f"{chosen.meta.get('arch')} ({loaded}) on {chosen.suite.name}: {len(chosen.suite.corruptions)} corruptions x "
         f"{len(chosen.suite.severities)} severities, {chosen.suite.images_per_cell} images per cell")
    for line in result.lines():
        say(line)
    say(f"store: {store}")
    model_parts = O.model_args(checkpoint, model, weights, num_classes, mean, std, model_dir)
    finish(clock, [out, store], [
        command("robust-csc", "evaluate", *model_parts, "--lambda-policy", out, "--tta", "bn-adapt,tent,tent+policy",
                "--batch-size", 128, "--store", store),
        command("robust-csc", "report", "--store", store, "--out", "report"),
    ])
