"""`robust-csc evaluate`: a model on a corruption suite at lambda and TTA settings, into the results store."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from robust_csc.cli import options as O
from robust_csc.cli.app import app
from robust_csc.cli.output import Clock, command, finish, say
from robust_csc.cli.suites import build_suite, policy_suite_options, refuse_uncovered_cells
from robust_csc.errors import RobustCSCError

TTA = typer.Option(
    None, "--tta", metavar="LIST",
    help="Test-time adaptation beside --lambda: bn-adapt, bn-adapt[N=16], tent, tent[sgd,lr=0.00025,online], "
    "alone or on a lambda setting (tent+stem=0.5, bn-adapt+policy: --lambda-policy's); a comma list or repeated; "
    "named with --batch-size.",
)


def tta_settings(values: Optional[List[str]], settings: tuple) -> tuple:
    """--tta's test-time adaptation settings; "+policy" in one means the --lambda-policy policy among settings."""
    if not values:
        return ()
    from robust_csc.adaptation import parse_settings
    from robust_csc.lambdas import LambdaSetting

    return parse_settings(values, [s for s in settings if not isinstance(s, LambdaSetting)])


def refuse_tta_misfits(loaded, settings: tuple, batch_size: int) -> None:
    """One line, before the store is opened, for a model without BatchNorm, batch size 1 or another bs= than --batch-size."""
    if settings:
        from robust_csc.adaptation import prepare_settings

        prepare_settings(settings, loaded.model, batch_size, str(loaded))


@app.command(short_help="Accuracy on a corruption suite, per lambda and TTA setting, into the store.")
def evaluate(
    checkpoint: Optional[Path] = O.CHECKPOINT,
    model: Optional[str] = O.MODEL,
    weights: Optional[Path] = O.WEIGHTS,
    num_classes: Optional[int] = O.NUM_CLASSES,
    mean: Optional[str] = O.MEAN,
    std: Optional[str] = O.STD,
    model_dir: Optional[Path] = O.MODEL_DIR,
    allow_download: bool = O.ALLOW_DOWNLOAD,
    suite: Optional[str] = O.SUITE,
    dataset: Optional[str] = O.DATASET,
    profile: Optional[str] = O.PROFILE,
    data_root: Optional[Path] = O.DATA_ROOT,
    corruptions: Optional[List[str]] = O.CORRUPTIONS,
    severities: Optional[List[str]] = O.SEVERITIES,
    n_examples: Optional[int] = O.N_EXAMPLES,
    lambdas: Optional[List[str]] = O.LAMBDA,
    lambda_policy: Optional[Path] = O.LAMBDA_POLICY,
    tta: Optional[List[str]] = TTA,
    store: Path = O.STORE,
    batch_size: int = O.batch_size_option(256),
    workers: int = O.WORKERS,
    seed: Optional[int] = O.SEED_OR_POLICY,
    device: Optional[str] = O.DEVICE,
    download: bool = O.DOWNLOAD,
    images_per_severity: Optional[int] = typer.Option(
        None, "--images-per-severity", metavar="N", hidden=True,
        help="Rows per severity block of a hand-made CIFAR-C folder (tests).",
    ),
    verify_checksums: bool = O.VERIFY_CHECKSUMS,
    progress: Optional[bool] = O.PROGRESS,
    recompute: bool = O.RECOMPUTE,
) -> None:
    """Evaluate a checkpoint or any classifier on a corruption suite; results go to the store, reruns skip
    finished cells.

    With --lambda-policy the suite, profile, seed and images come from the policy, and every setting is scored
    on its reporting split only (never on an image the policy was tuned on).
    """
    from robust_csc.evaluation.store import ResultsStore

    clock = Clock()
    # Everything a user can get wrong is checked before the store is opened,
    # so a refused call leaves an existing store (or a stray file) untouched.
    device = O.resolve_device(device)
    loaded = O.load_model_option(checkpoint, model, weights, num_classes, mean, std, model_dir, allow_download)
    chosen_lambdas = O.lambda_settings(lambdas, lambda_policy, loaded)
    policies = tuple(s for s in chosen_lambdas if hasattr(s, "scoring_plan"))
    chosen_tta = tta_settings(tta, chosen_lambdas)
    O.positive(batch_size, "--batch-size")
    O.workers(workers)
    if policies:
        options = policy_suite_options(policies[0], lambda_policy, {
            "suite": suite, "dataset": dataset, "profile": profile, "seed": seed, "n_examples": n_examples,
        })
        suite, dataset, profile, n_examples = options["suite"], options["dataset"], options["profile"], options["n_examples"]
        seed = options["seed"]
        corruptions = corruptions or [",".join(policies[0].meta["suite"]["corruptions"])]
        severities = severities or [",".join(str(v) for v in policies[0].meta["suite"]["severities"])]
    seed = 0 if seed is None else seed
    if suite is None:
        raise RobustCSCError("no suite given; pass --suite cifar10-c, cifar100-c, imagenet-c or generated")
    chosen = build_suite(
        loaded, suite, dataset=dataset, profile=profile, data_root=data_root, corruptions=corruptions,
        severities=severities, n_examples=n_examples, seed=seed, download=download,
        images_per_severity=images_per_severity, verify_checksums=verify_checksums,
    )
    meta = chosen.meta
    O.refuse_lambdas_without_csc(loaded, meta, chosen_lambdas + chosen_tta)
    refuse_tta_misfits(loaded, chosen_tta, batch_size)
    built, clean, clean_note, split = chosen.suite, chosen.clean, chosen.clean_note, chosen.split
    refuse_uncovered_cells(chosen_lambdas + chosen_tta, built, clean)
    if policies:
        policies[0].scoring_plan(built.name, built.images_per_cell, split)  # refused here, before the store opens

    from robust_csc.evaluation.console import result_lines
    from robust_csc.evaluation.harness import evaluate_checkpoint

    with ResultsStore(store) as results:
        result = evaluate_checkpoint(
            loaded,
            built,
            store=results,
            dataset=built.name,
            split=split,
            lambdas=chosen_lambdas + chosen_tta,
            clean=clean,
            batch_size=batch_size,
            num_workers=workers,
            device=device,
            progress=O.progress_on(progress),
            recompute=recompute,
        )
    say(f"{meta.get('arch')} ({loaded}) on {built.name}: {len(built.corruptions)} corruptions x "
        f"{len(built.severities)} severities, split {result.split}")
    if policies:
        halving = policies[0].reporting_split()
        say(f"scored on the reporting split of lambda policy {policies[0].name}: {len(halving.report)} of "
            f"{len(halving.report) + len(halving.tune)} images per cell (the other {len(halving.tune)} chose it)")
    if clean_note:
        say(clean_note)
    for line in result_lines(result):
        say(line)
    say(f"store: {store}, cells run {result.cells_run}, skipped {result.cells_skipped}")
    next_steps = [command("robust-csc", "report", "--store", store, "--out", "report")]
    if meta.get("lambda") and not policies:
        next_steps.append(command("robust-csc", "tune-lambda", *O.model_args(checkpoint, model, weights, num_classes, mean,
                                                                          std, model_dir),
                                  "--suite", suite, "--out", "lambda_policy.json", "--store", store))
    finish(clock, [store], next_steps)
