"""`robust-csc noise-curve`: accuracy against a continuous noise level, one curve per lambda setting, into the store."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from robust_csc.cli import options as O
from robust_csc.cli.app import app
from robust_csc.cli.output import Clock, command, finish, say
from robust_csc.errors import RobustCSCError
from robust_csc.validation import check_writable_file

LEVELS_HINT = "write start:stop:count (e.g. 0:0.3:7) or a comma list (e.g. 0,0.05,0.1)"


@app.command("noise-curve", short_help="Accuracy against a continuous noise level, per lambda setting.")
def noise_curve_command(
    checkpoint: Optional[Path] = O.CHECKPOINT,
    model: Optional[str] = O.MODEL,
    weights: Optional[Path] = O.WEIGHTS,
    num_classes: Optional[int] = O.NUM_CLASSES,
    mean: Optional[str] = O.MEAN,
    std: Optional[str] = O.STD,
    model_dir: Optional[Path] = O.MODEL_DIR,
    allow_download: bool = O.ALLOW_DOWNLOAD,
    kind: str = typer.Option(..., "--kind", metavar="NAME", help="gaussian, shot, impulse or speckle."),
    levels: str = typer.Option(
        ..., "--levels", metavar="LIST",
        help="Noise levels (gaussian/speckle sigma, shot photons, impulse amount): " + LEVELS_HINT + ".",
    ),
    lambdas: Optional[List[str]] = O.LAMBDA,
    lambda_policy: Optional[Path] = O.LAMBDA_POLICY,
    dataset: Optional[str] = O.DATASET,
    data_root: Optional[Path] = O.DATA_ROOT,
    n_examples: Optional[int] = O.N_EXAMPLES,
    seed: int = O.SEED,
    store: Path = O.STORE,
    out: Optional[Path] = typer.Option(
        None, "--out", metavar="FILE", help="Also write the curve to this CSV file and its figure beside it (.png, .pdf)."
    ),
    force: bool = O.FORCE,
    batch_size: int = O.batch_size_option(256),
    workers: int = O.WORKERS,
    device: Optional[str] = O.DEVICE,
    eager: bool = typer.Option(False, "--eager", help="Add the noise with eager torch ops instead of torch.compile."),
    download: bool = O.DOWNLOAD,
    verify_checksums: bool = O.VERIFY_CHECKSUMS,
    progress: Optional[bool] = O.PROGRESS,
    recompute: bool = O.RECOMPUTE,
) -> None:
    """Accuracy at each noise level (any continuous value) under each lambda setting, on the clean test set; every
    (level, setting) is a cell of the results store (with per-example outcomes), and the report draws the curve."""
    from robust_csc.evaluation.noise_curve import (
        best_per_level, check_levels, curve_dataset, curve_files, curve_table, curve_text, noise_curve, noise_kind,
        save_curve, store_curve,
    )
    from robust_csc.tuning.grid import parse_number_list

    clock = Clock()
    # Every mistake is refused before any model runs and before a file is written.
    device = O.resolve_device(device)
    kind = noise_kind(kind)
    values = check_levels(kind, parse_number_list(levels, "noise levels", LEVELS_HINT))
    loaded = O.load_model_option(checkpoint, model, weights, num_classes, mean, std, model_dir, allow_download)
    settings = O.lambda_settings(lambdas, lambda_policy, loaded)
    O.at_least_two(n_examples)
    O.positive(batch_size, "--batch-size")
    O.not_negative(seed, "--seed")
    O.workers(workers)
    if out is not None:
        if out.suffix.lower() != ".csv":
            raise RobustCSCError(f"--out {out} is not a .csv file; name the table FILE.csv (its figure goes beside it)")
        existing = [path for path in curve_files(out).values() if path.exists()]
        if existing and not force:
            raise RobustCSCError(f"{existing[0]} already exists; pass --force to replace it or choose another --out")
        check_writable_file(out, "--out")
    meta = loaded.meta
    O.refuse_lambdas_without_csc(loaded, meta, settings)
    policies = [s for s in settings if hasattr(s, "reporting_images")]
    base = dataset or (policies[0].base_dataset() if policies else None) or meta.get("dataset")
    if not base:
        raise RobustCSCError(f"{loaded} records no data set; pass --dataset (digits, cifar10, cifar100, imagenet)")
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
    loaded.expect_classes(dataset_info(base).num_classes, f"the {base} test set")
    from robust_csc.evaluation.store import ResultsStore

    ResultsStore(store).close()  # a store that cannot be opened is refused before the curve runs
    frame = noise_curve(
        loaded.model, clean, kind, values, settings, seed=seed, batch_size=batch_size, num_workers=workers,
        device=device, compiled=not eager, model_name=meta["arch"],
        progress=O.progress_on(progress),
    )
    which = f"the reporting split of {policies[0].name}" if policies else "test"
    say(f"{meta['arch']} ({loaded}) on {base} {which}, n = {len(clean)} images, {kind} noise, seed {seed}: "
         "accuracy in % ± half the 95% Wilson interval")
    say(curve_text(frame).to_string())
    table = curve_table(frame)
    if len(table.columns) > 1:
        best = best_per_level(frame)["best_lambda_setting"]
        say("best lambda setting per level: " + ", ".join(f"{level:g} {best[level]}" for level in table.index))
    if policies:
        split = policies[0].report_split if n_examples is None else f"{policies[0].report_split}[:{n_examples}]"
    else:
        split = "test" if n_examples is None else f"test[:{n_examples}]"
    written, kept = store_curve(frame, store, model_name=loaded.name, checkpoint_sha256=loaded.sha256,
                                dataset=curve_dataset(base, seed), split=split, seed=seed, batch_size=batch_size,
                                recompute=recompute)
    say(f"store: {store}, cells written {written}, kept {kept}" + (" (already stored; --recompute replaces them)" if kept else ""))
    files = [store]
    if out is not None:
        paths = save_curve(frame, out, f"{meta['arch']} on {base}: accuracy against {kind} noise level")
        say(f"wrote {out} and {out.with_suffix('.png')}")
        files += list(paths.values())
    finish(clock, files, [command("robust-csc", "report", "--store", store, "--out", "report")])

