"""`robust-csc corrupt`: a corrupted copy of a 32x32 test set in the CIFAR-10-C layout, resumable."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from robust_csc.cli import options as O
from robust_csc.cli.app import app
from robust_csc.cli.output import Clock, command, finish, say
from robust_csc.errors import RobustCSCError
from robust_csc.validation import check_writable_folder, os_reason


@app.command(short_help="Write a corrupted test set in the CIFAR-10-C layout (resumable).")
def corrupt(
    dataset: str = O.DATASET_REQUIRED,
    out: Path = typer.Option(..., "--out", metavar="DIR", help="Output folder, written in the CIFAR-10-C layout."),
    profile: Optional[str] = O.PROFILE,
    corruptions: Optional[List[str]] = O.CORRUPTIONS,
    severities: Optional[List[str]] = O.SEVERITIES,
    n_examples: Optional[int] = O.N_EXAMPLES,
    seed: int = O.SEED,
    data_root: Optional[Path] = O.DATA_ROOT,
    download: bool = O.DOWNLOAD,
    verify_checksums: bool = O.VERIFY_CHECKSUMS,
    workers: int = O.WORKERS,
    force: bool = O.FORCE,
    progress: Optional[bool] = O.PROGRESS,
) -> None:
    """Write a corrupted copy of a 32x32 test set (digits, cifar10, cifar100, fashion-mnist, mnist) in the
    CIFAR-10-C layout: <corruption>.npy, labels.npy, suite.json.

    All 19 corruptions by default, all 5 severities always (the layout holds 5 severity blocks per file).
    Resumable: a run that stops keeps its finished (corruption, severity) blocks in .<out>.partial, and the same
    command continues from there; --force restarts it.
    """
    from robust_csc.corruptions import ALL
    from robust_csc.data.corrupted import SEVERITIES
    from robust_csc.data.stored import write_stored_suite

    clock = Clock()
    chosen = O.parse_corruptions(corruptions) or ALL
    chosen_severities = O.parse_severities(severities)
    if chosen_severities is not None and chosen_severities != SEVERITIES:
        raise RobustCSCError(
            "the CIFAR-10-C layout holds all 5 severity blocks in every file; "
            "pass --severities 1,2,3,4,5 or leave it out"
        )
    O.positive(n_examples, "--n-examples")
    O.not_negative(seed, "--seed")
    check_writable_folder(out.parent, "--out", shown=out)  # the scratch files and the result go there
    O.workers(workers)
    try:
        folder, manifest, written = write_stored_suite(
            out, dataset, profile=profile or "cifar", corruptions=chosen, seed=seed, n_examples=n_examples,
            root=data_root, download=download, verify_checksums=verify_checksums, force=force, workers=workers,
            progress=O.progress_on(progress), log=say,
        )
    except OSError as err:  # a full disk or a folder that became read-only mid-run: the finished blocks are kept
        raise RobustCSCError(
            f"could not write {out} ({os_reason(err)}); free space on that disk or choose a writable --out, then rerun "
            "to continue"
        ) from None
    n = manifest.images_per_severity
    name = "cifar100-c" if manifest.num_classes == 100 else "cifar10-c"
    load_hint = "" if n == 10000 else f" --images-per-severity {n}"
    say(
        f"wrote {folder}: {len(manifest.corruptions)} corruptions x 5 severities x {n} images "
        f"({name} layout{load_hint}; {written} blocks written now)"
    )
    suite = {"fashion-mnist": "fashion-mnist-c", "mnist": "mnist-c"}.get(dataset.lower())
    next_steps = []
    if suite is not None:
        next_steps.append(command("robust-csc", "evaluate", "--checkpoint", "FILE", "--suite", suite, "--data-root", folder))
    finish(clock, [folder], next_steps)
