"""The robust-csc command line: train, demo, evaluate, corrupt, convert-official, models, info.

Every user-fixable problem (a RobustCSCError) ends the program with one line
``error: <message>`` on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import json
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Optional

import typer

from robust_csc.commands import model_options as M
from robust_csc.errors import RobustCSCError
from robust_csc.validation import check_device, check_writable_folder, os_reason

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
    dataset: str = typer.Option(..., "--dataset", help="digits, cifar10, cifar100, fashion-mnist or mnist."),
    out: Optional[Path] = typer.Option(None, "--out", help="Output folder [default: runs/<model>-<dataset>]."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Override the recipe's epochs."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Global batch size (split across GPUs)."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Override the recipe's learning rate."),
    width: Optional[int] = typer.Option(None, "--width", help="Channels of the first stage [model default 64]."),
    lam: Optional[float] = typer.Option(None, "--lam", help="Lambda of the CSC layers (SDNet models)."),
    seed: int = typer.Option(0, "--seed"),
    data_root: Optional[Path] = typer.Option(None, "--data-root", help="Data folder [default: ./data]."),
    download: bool = typer.Option(False, "--download", help="Download the data set if missing."),
    verify_checksums: bool = typer.Option(
        True, "--verify-checksums/--no-verify-checksums", help="Check the data files against their published MD5s."
    ),
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
        verify_checksums=verify_checksums,
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
    out: Optional[Path] = typer.Option(None, "--out", help="Output folder [default: runs/demo, runs/<dataset> with --full]."),
    quick: bool = typer.Option(False, "--quick", help="4 epochs and a 2-corruption suite (a smoke test)."),
    dataset: str = typer.Option("digits", "--dataset", help="digits (embedded), or fashion-mnist / mnist with --full."),
    full: bool = typer.Option(False, "--full", help="The full-size run: all 95 cells x 10,000 test images (about an hour)."),
    suite_dir: Optional[Path] = typer.Option(None, "--suite-dir", help="A stored suite to reuse [default: OUT/<dataset>-c]."),
    data_root: Optional[Path] = typer.Option(None, "--data-root", help="Data folder [default: ./data, Debian's folder]."),
) -> None:
    """Train SDNet-18 and ResNet-18, evaluate, attack, tune lambda and report: on the embedded digits set, or in full size."""
    if full or dataset != "digits":
        if not full:
            raise RobustCSCError(f"the {dataset} demo is the full-size run; pass --full (about an hour on 2 cores)")
        if quick:
            raise RobustCSCError("--quick and --full ask for opposite runs; pass one of them")
        from robust_csc.fullrun import run_full

        run_full(out or Path("runs") / dataset, dataset=dataset, suite_dir=suite_dir, data_root=data_root, echo=_say)
        return
    if suite_dir is not None or data_root is not None:
        raise RobustCSCError("--suite-dir and --data-root belong to the full run; add --full --dataset fashion-mnist")
    from robust_csc.demo import run_demo

    run_demo(out or Path("runs/demo"), quick=quick, progress=sys.stderr.isatty())


# ---------------------------------------------------------------- evaluate / corrupt

# fashion-mnist-c / mnist-c: suites that `robust-csc corrupt` wrote (robust_csc.data.stored).
SUITES = ("cifar10-c", "cifar100-c", "imagenet-c", "generated", "fashion-mnist-c", "mnist-c")
# Class counts of the stored suites, known before any file is read, so a
# mismatched checkpoint is refused even when the suite folder is missing.
_SUITE_CLASSES = {"cifar10-c": 10, "cifar100-c": 100, "fashion-mnist-c": 10, "mnist-c": 10}
DEFAULT_DATA_ROOT = Path("data")


def _items(values: Optional[List[str]]) -> Optional[List[str]]:
    """Repeated options and comma lists as one flat list; None when the option was not given."""
    if not values:
        return None
    return [item.strip() for value in values for item in value.split(",") if item.strip()]


def parse_corruptions(values: Optional[List[str]]) -> Optional[tuple[str, ...]]:
    """Corruption names, checked strictly; None = the suite's default selection."""
    from robust_csc.corruptions import check_corruption

    items = _items(values)
    if items is None:
        return None
    if not items:
        raise RobustCSCError("--corruptions is empty; name at least one corruption, such as gaussian_noise")
    return tuple(dict.fromkeys(check_corruption(item) for item in items))


def parse_severities(values: Optional[List[str]]) -> Optional[tuple[int, ...]]:
    """Severities 1..5, checked strictly; None = all five."""
    from robust_csc.corruptions import check_severity

    items = _items(values)
    if items is None:
        return None
    if not items:
        raise RobustCSCError("--severities is empty; name severities from 1 to 5, such as 1,3,5")
    out = []
    for item in items:
        try:
            number = int(item)
        except ValueError:
            raise RobustCSCError(f"severity {item!r} is not an integer; use severities from 1 to 5") from None
        out.append(check_severity(number))
    return tuple(sorted(set(out)))


def parse_lambda_settings(values: Optional[List[str]]) -> tuple:
    """Lambda settings: 'trained', a number (every CSC layer), 'stem=0.5' or 'scale=1.5' (robust_csc.lambdas)."""
    from robust_csc.lambdas import LambdaSetting

    items = _items(values)
    if not items:
        return (LambdaSetting(),)
    settings = []
    for item in items:
        if item.lower() in ("trained", "none"):
            settings.append(LambdaSetting())
            continue
        try:
            settings.append(LambdaSetting.parse(item))
        except RobustCSCError as err:
            raise RobustCSCError(f"lambda {item!r} is not valid ({err}); pass a number from 0 to 1000, 'trained', stem=0.5 or scale=1.5") from None
    return tuple(dict.fromkeys(settings))


def lambda_settings(lambdas: Optional[List[str]], lambda_policy: Optional[Path], checkpoint) -> tuple:
    """--lambda's settings and, with --lambda-policy, the policy (refused here if tuned for another checkpoint).

    checkpoint: a checkpoint file or a LoadedModel (robust_csc.models.sources).
    """
    settings = parse_lambda_settings(lambdas)
    if lambda_policy is None:
        return settings
    from robust_csc.models.checkpoints import checkpoint_hash
    from robust_csc.tuning import load_policy

    sha = getattr(checkpoint, "sha256", None) or checkpoint_hash(checkpoint)
    return tuple(dict.fromkeys(settings + (load_policy(lambda_policy, sha),)))


def refuse_lambdas_without_csc(checkpoint: Path, meta: dict, settings: tuple) -> None:
    """One line when a setting would change lambdas of a checkpoint that has none."""
    from robust_csc.lambdas import needs_csc

    # The metadata lists every CSC layer's lambda; none means there is nothing to set.
    if not meta.get("lambda") and any(needs_csc(setting) for setting in settings):
        raise RobustCSCError(
            f"{checkpoint} holds a {meta.get('arch')} model without CSC layers, so --lambda cannot be set; "
            "leave --lambda out or evaluate an SDNet checkpoint"
        )


def tta_settings(values: Optional[List[str]], settings: tuple) -> tuple:
    """--tta's test-time adaptation settings; "+policy" in one means the --lambda-policy policy among settings."""
    if not values:
        return ()
    from robust_csc.adaptation import parse_settings
    from robust_csc.lambdas import LambdaSetting

    return parse_settings(values, [s for s in settings if not isinstance(s, LambdaSetting)])


def refuse_tta_misfits(checkpoint: Path, settings: tuple, batch_size: int) -> None:
    """One line, before the store is opened, for a model without BatchNorm, batch size 1 or another bs= than --batch-size."""
    if settings:
        from robust_csc.adaptation import prepare_settings
        from robust_csc.models.checkpoints import load_checkpoint

        model = checkpoint.model if hasattr(checkpoint, "model") else load_checkpoint(checkpoint)[0]
        prepare_settings(settings, model, batch_size, str(checkpoint))


def _positive(value: Optional[int], option: str) -> Optional[int]:
    if value is not None and value < 1:
        raise RobustCSCError(f"{option} {value} is not positive; pass an integer of at least 1")
    return value


def at_least_two(n_examples: Optional[int]) -> Optional[int]:
    """--n-examples of a run that reports accuracies: every accuracy has an interval, which needs 2 examples."""
    _positive(n_examples, "--n-examples")
    if n_examples is not None and n_examples < 2:
        raise RobustCSCError(f"--n-examples {n_examples} leaves no interval (it needs 2 examples); pass --n-examples 2 or more")
    return n_examples


def _not_negative(value: int, option: str, fix: str = "pass an integer >= 0") -> int:
    if value < 0:
        raise RobustCSCError(f"{option} {value} is negative; {fix}")
    return value


def _workers(value: int) -> int:
    return _not_negative(value, "--workers", "pass 0 (no worker processes) or more")


def policy_suite_options(policy: Any, policy_path: Path, given: dict) -> dict:
    """The suite options of a run that scores a tuned policy: taken from the policy, or refused where they differ.

    given: the command line's suite, dataset, profile, seed and n_examples (None = not given).
    """
    recorded = policy.suite_options
    if not recorded:
        raise RobustCSCError(
            f"lambda policy {policy_path} records no suite options (it was written from Python without suite_options); "
            "re-run robust-csc tune-lambda to write a policy the CLI can evaluate"
        )
    out = {}
    for name, value in given.items():
        wanted = recorded.get(name)
        if value is None or (name == "suite" and value.lower() == str(wanted).lower()):
            out[name] = wanted
            continue
        if value != wanted:
            option = "--" + name.replace("_", "-")
            raise RobustCSCError(
                f"{option} {value} disagrees with lambda policy {policy_path}, tuned with {option} {wanted}; leave {option} "
                "out (a policy is scored on its own suite, reporting split only)"
            )
        out[name] = value
    return out


@dataclass
class SuiteChoice:
    """What the suite options of evaluate / tune-lambda resolve to (nothing opened for writing)."""

    meta: dict
    suite: Any
    clean: Any
    clean_note: str
    split: str  # the store's split: "test", "test[:N]" or an ImageNet-C subset


def build_suite(
    checkpoint,
    suite: str,
    *,
    dataset: Optional[str] = None,
    profile: Optional[str] = None,
    data_root: Optional[Path] = None,
    corruptions: Optional[List[str]] = None,
    severities: Optional[List[str]] = None,
    n_examples: Optional[int] = None,
    seed: int = 0,
    download: bool = False,
    images_per_severity: Optional[int] = None,
    verify_checksums: bool = True,
) -> SuiteChoice:
    """Check the suite options against the checkpoint's metadata and build the suite and its clean cell.

    checkpoint: a checkpoint file or a LoadedModel (robust_csc.models.sources), whose meta is used.
    """
    from robust_csc.models.checkpoints import read_metadata

    suite_name = suite.lower()
    if suite_name not in SUITES:
        raise RobustCSCError(f"unknown suite {suite!r}; use one of {', '.join(SUITES)}")
    if suite_name != "generated" and (dataset is not None or profile is not None):
        raise RobustCSCError(
            f"--dataset and --profile describe a generated suite, not {suite_name}; drop them or use --suite generated"
        )
    chosen_corruptions = parse_corruptions(corruptions)
    chosen_severities = parse_severities(severities)
    at_least_two(n_examples)
    _positive(images_per_severity, "--images-per-severity")
    _not_negative(seed, "--seed")
    meta = getattr(checkpoint, "meta", None) or read_metadata(checkpoint)
    num_classes = meta.get("num_classes")
    expected = _SUITE_CLASSES.get(suite_name)
    if expected is not None and num_classes != expected:
        raise RobustCSCError(
            f"{checkpoint} has {num_classes} classes but {suite_name} has {expected}; "
            "pass a checkpoint trained on the suite's data set"
        )

    clean, clean_note = None, ""
    if suite_name == "generated":
        from robust_csc.data.generated import generated_clean, generated_suite

        base = dataset or meta.get("dataset")
        if not base:
            raise RobustCSCError(f"{checkpoint} records no data set; pass --dataset (digits, cifar10, cifar100, imagenet)")
        if download:
            from robust_csc.data import load_dataset

            load_dataset(base, "test", root=data_root, download=True)  # fetched once; the suite then reads it
        built = generated_suite(
            base,
            split="test",
            root=data_root,
            profile=profile or "cifar",
            corruptions=chosen_corruptions,
            severities=chosen_severities,
            seed=seed,
            n_examples=n_examples,
            verify_checksums=verify_checksums,
        )
        # A generated suite always has its clean images at hand: the clean cell comes free.
        clean = generated_clean(base, "test", data_root, n_examples, verify_checksums=verify_checksums)
    elif suite_name in ("fashion-mnist-c", "mnist-c"):
        from robust_csc.data.stored import load_stored_suite

        built, clean, clean_note = load_stored_suite(
            suite_name,
            data_root if data_root is not None else DEFAULT_DATA_ROOT,
            corruptions=chosen_corruptions,
            severities=chosen_severities,
            n_examples=n_examples,
            verify_checksums=verify_checksums,
        )
    elif suite_name == "imagenet-c":
        from robust_csc.data.corrupted import load_imagenet_c

        built = load_imagenet_c(
            data_root if data_root is not None else DEFAULT_DATA_ROOT,
            corruptions=chosen_corruptions,
            severities=chosen_severities,
            subset=n_examples,
            seed=seed,
        )
    else:
        from robust_csc.data.corrupted import CIFAR_C_IMAGES_PER_SEVERITY, load_cifar_c

        built = load_cifar_c(
            data_root if data_root is not None else DEFAULT_DATA_ROOT,
            name=suite_name,
            corruptions=chosen_corruptions,
            severities=chosen_severities,
            n_examples=n_examples,
            download=download,
            images_per_severity=images_per_severity or CIFAR_C_IMAGES_PER_SEVERITY,
        )
        clean, clean_note = _cifar_clean(
            suite_name, data_root if data_root is not None else DEFAULT_DATA_ROOT, n_examples, verify_checksums
        )
    if num_classes != built.num_classes:
        raise RobustCSCError(
            f"{checkpoint} has {num_classes} classes but the {built.name} suite has {built.num_classes}; "
            "pass a checkpoint trained on the suite's data set"
        )

    # The store's data set is the suite's name: cells of a generated suite must never
    # stand in for the published files' cells of the same corruption, nor one profile
    # or seed for another. A subset is part of the split for the same reason.
    split = "test"
    if n_examples is not None:
        split = f"test[subset={n_examples},seed={seed}]" if suite_name == "imagenet-c" else f"test[:{n_examples}]"
    return SuiteChoice(meta, built, clean, clean_note, split)


@app.command()
def evaluate(
    checkpoint: Optional[Path] = M.CHECKPOINT,
    model: Optional[str] = M.MODEL,
    weights: Optional[Path] = M.WEIGHTS,
    num_classes: Optional[int] = M.NUM_CLASSES,
    mean: Optional[str] = M.MEAN,
    std: Optional[str] = M.STD,
    model_dir: Optional[Path] = M.MODEL_DIR,
    allow_download: bool = M.ALLOW_DOWNLOAD,
    suite: Optional[str] = typer.Option(
        None, "--suite", help="cifar10-c, cifar100-c, imagenet-c, generated, or a suite `corrupt` wrote: fashion-mnist-c, "
        "mnist-c (required unless --lambda-policy gives it)."
    ),
    dataset: Optional[str] = typer.Option(
        None, "--dataset", help="Base data set of a generated suite [default: the checkpoint's data set]."
    ),
    profile: Optional[str] = typer.Option(
        None, "--profile", help="Corruption parameters of a generated suite: cifar or imagenet [default: cifar]."
    ),
    data_root: Optional[Path] = typer.Option(None, "--data-root", help="Data folder [default: ./data]."),
    corruptions: Optional[List[str]] = typer.Option(
        None, "--corruptions", help="Comma list of corruptions [default: all in the suite]."
    ),
    severities: Optional[List[str]] = typer.Option(None, "--severities", help="Comma list from 1..5 [default: all]."),
    n_examples: Optional[int] = typer.Option(None, "--n-examples", help="Images per cell [default: all]."),
    lambdas: Optional[List[str]] = typer.Option(
        None, "--lambda",
        help="Test-time lambda: 'trained', a number (every CSC layer), stem=0.5 or scale=1.5; repeat or comma-separate [default: trained].",
    ),
    lambda_policy: Optional[Path] = typer.Option(
        None, "--lambda-policy", help="A lambda policy file from tune-lambda (evaluated beside --lambda)."
    ),
    tta: Optional[List[str]] = typer.Option(
        None, "--tta",
        help="Test-time adaptation beside --lambda: bn-adapt, bn-adapt[N=16], tent, tent[sgd,lr=0.00025,online], "
        "alone or on a lambda setting (tent+stem=0.5, bn-adapt+policy: --lambda-policy's); repeat or comma-separate; "
        "named with --batch-size.",
    ),
    store: Path = typer.Option(Path("results.sqlite"), "--store", help="SQLite results store (created if missing)."),
    batch_size: int = typer.Option(256, "--batch-size"),
    workers: int = typer.Option(0, "--workers", help="DataLoader worker processes."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed of a generated suite's corruptions [default: 0, or the policy's]."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, cuda:1, ... [default: cuda if available]."),
    download: bool = typer.Option(False, "--download", help="Download CIFAR-10-C / CIFAR-100-C or the base data set if missing."),
    images_per_severity: Optional[int] = typer.Option(
        None, "--images-per-severity", hidden=True, help="Rows per severity block of a hand-made CIFAR-C folder (tests)."
    ),
    verify_checksums: bool = typer.Option(
        True, "--verify-checksums/--no-verify-checksums",
        help="Check the clean CIFAR files against torchvision's MD5s; --no-verify-checksums accepts a copy you trust.",
    ),
    progress: Optional[bool] = typer.Option(
        None, "--progress/--no-progress", help="Progress bar on stderr [default: when stderr is a terminal]."
    ),
    recompute: bool = typer.Option(
        False, "--recompute", help="Run every cell again and replace the stored ones (after an upgrade or a fix)."
    ),
) -> None:
    """Evaluate a checkpoint or any classifier (--model) on a corruption suite; results go to the store, reruns skip
    finished cells.

    With --lambda-policy the suite, profile, seed and images come from the policy, and every setting is scored
    on its reporting split only (never on an image the policy was tuned on).
    """
    from robust_csc.evaluation.store import ResultsStore

    # Everything a user can get wrong is checked before the store is opened,
    # so a refused call leaves an existing store (or a stray file) untouched.
    device = check_device(device)
    checkpoint = M.load_model_option(checkpoint, model, weights, num_classes, mean, std, model_dir, allow_download)
    chosen_lambdas = lambda_settings(lambdas, lambda_policy, checkpoint)
    policies = tuple(s for s in chosen_lambdas if hasattr(s, "scoring_plan"))
    chosen_tta = tta_settings(tta, chosen_lambdas)
    _positive(batch_size, "--batch-size")
    _workers(workers)
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
        checkpoint, suite, dataset=dataset, profile=profile, data_root=data_root, corruptions=corruptions,
        severities=severities, n_examples=n_examples, seed=seed, download=download,
        images_per_severity=images_per_severity, verify_checksums=verify_checksums,
    )
    meta = chosen.meta
    refuse_lambdas_without_csc(checkpoint, meta, chosen_lambdas + chosen_tta)
    refuse_tta_misfits(checkpoint, chosen_tta, batch_size)
    built, clean, clean_note, split = chosen.suite, chosen.clean, chosen.clean_note, chosen.split
    refuse_uncovered_cells(chosen_lambdas + chosen_tta, built, clean)
    if policies:
        policies[0].scoring_plan(built.name, built.images_per_cell, split)  # refused here, before the store opens

    from robust_csc.evaluation.console import result_lines
    from robust_csc.evaluation.harness import evaluate_checkpoint

    with ResultsStore(store) as results:
        result = evaluate_checkpoint(
            checkpoint,
            built,
            store=results,
            dataset=built.name,
            split=split,
            lambdas=chosen_lambdas + chosen_tta,
            clean=clean,
            batch_size=batch_size,
            num_workers=workers,
            device=device,
            progress=sys.stderr.isatty() if progress is None else progress,
            recompute=recompute,
        )
    _say(f"{meta.get('arch')} ({checkpoint}) on {built.name}: {len(built.corruptions)} corruptions x "
         f"{len(built.severities)} severities, split {result.split}")
    if policies:
        halving = policies[0].reporting_split()
        _say(f"scored on the reporting split of lambda policy {policies[0].name}: {len(halving.report)} of "
             f"{len(halving.report) + len(halving.tune)} images per cell (the other {len(halving.tune)} chose it)")
    if clean_note:
        _say(clean_note)
    for line in result_lines(result):
        _say(line)
    _say(f"store: {store}, cells run {result.cells_run}, skipped {result.cells_skipped}")


def refuse_uncovered_cells(settings: tuple, suite, clean) -> None:
    """One line, before the store opens, when a tuned grid policy has no lambda for a cell the suite runs."""
    from robust_csc.lambdas import check_settings_cover

    cells = ([("none", 0)] if clean is not None else []) + [(c.corruption, c.severity) for c in suite.cells()]
    check_settings_cover(settings, cells)


def _cifar_clean(suite_name: str, root: Path, n_examples: Optional[int], verify_checksums: bool = True):
    """(the clean CIFAR test set beside a CIFAR-C folder, "") or (None, why not): optional for stored suites."""
    from robust_csc.data.generated import generated_clean
    from robust_csc.safe_pickle import UnsafePickleError

    base = suite_name[: -len("-c")]  # cifar10-c -> cifar10
    # data/ usually holds both cifar-10-batches-py and CIFAR-10-C; root may also be the CIFAR-C folder itself.
    roots = [root] + ([root.parent] if (root / "labels.npy").is_file() else [])
    reason = ""
    for candidate in roots:
        try:
            return generated_clean(base, "test", candidate, n_examples, verify_checksums=verify_checksums), ""
        except UnsafePickleError:
            raise  # a file that would run code is refused outright, never passed over as a missing clean cell
        except RobustCSCError as err:
            reason = _one_line(str(err))
    hint = " (--no-verify-checksums accepts a copy whose files differ from the published ones)" if verify_checksums else ""
    return None, f"no clean cell: {reason}{hint}"


@app.command()
def corrupt(
    dataset: str = typer.Option(
        ..., "--dataset", help="digits, cifar10, cifar100, fashion-mnist or mnist (32x32 as the models see them)."
    ),
    out: Path = typer.Option(..., "--out", help="Output folder, written in the CIFAR-10-C layout."),
    profile: str = typer.Option("cifar", "--profile", help="Corruption parameters: cifar or imagenet."),
    corruptions: Optional[List[str]] = typer.Option(None, "--corruptions", help="Comma list [default: all 19]."),
    severities: Optional[List[str]] = typer.Option(
        None, "--severities", help="Must be all of 1..5 (the layout holds 5 severity blocks per file)."
    ),
    n_examples: Optional[int] = typer.Option(None, "--n-examples", help="The first N test images [default: all]."),
    seed: int = typer.Option(0, "--seed", help="Base seed; every image gets its own seed from it."),
    data_root: Optional[Path] = typer.Option(None, "--data-root", help="Data folder [default: ./data]."),
    download: bool = typer.Option(False, "--download", help="Download the base data set if missing."),
    verify_checksums: bool = typer.Option(
        True, "--verify-checksums/--no-verify-checksums", help="Check the data files against their published MD5s."
    ),
    workers: int = typer.Option(0, "--workers", help="Processes that corrupt blocks [default: 0, this one]."),
    force: bool = typer.Option(False, "--force", help="Replace a non-empty output folder (or restart a partial run)."),
    progress: Optional[bool] = typer.Option(
        None, "--progress/--no-progress", help="Progress bar on stderr [default: when stderr is a terminal]."
    ),
) -> None:
    """Write a corrupted copy of a 32x32 test set in the CIFAR-10-C layout (<corruption>.npy, labels.npy, suite.json).

    Resumable: a run that stops keeps its finished (corruption, severity)
    blocks in .<out>.partial, and the same command continues from there.
    """
    from robust_csc.corruptions import ALL
    from robust_csc.data.corrupted import SEVERITIES
    from robust_csc.data.stored import write_stored_suite

    chosen = parse_corruptions(corruptions) or ALL
    chosen_severities = parse_severities(severities)
    if chosen_severities is not None and chosen_severities != SEVERITIES:
        raise RobustCSCError(
            "the CIFAR-10-C layout holds all 5 severity blocks in every file; "
            "pass --severities 1,2,3,4,5 or leave it out"
        )
    _positive(n_examples, "--n-examples")
    _not_negative(seed, "--seed")
    check_writable_folder(out.parent, "--out", shown=out)  # the scratch files and the result go there
    _workers(workers)
    try:
        folder, manifest, written = write_stored_suite(
            out, dataset, profile=profile, corruptions=chosen, seed=seed, n_examples=n_examples, root=data_root,
            download=download, verify_checksums=verify_checksums, force=force, workers=workers,
            progress=sys.stderr.isatty() if progress is None else progress, log=_say,
        )
    except OSError as err:  # a full disk or a folder that became read-only mid-run: the finished blocks are kept
        raise RobustCSCError(
            f"could not write {out} ({os_reason(err)}); free space on that disk or choose a writable --out, then rerun "
            "to continue"
        ) from None
    n = manifest.images_per_severity
    name = "cifar100-c" if manifest.num_classes == 100 else "cifar10-c"
    load_hint = "" if n == 10000 else f" --images-per-severity {n}"
    _say(
        f"wrote {folder}: {len(manifest.corruptions)} corruptions x 5 severities x {n} images "
        f"({name} layout{load_hint}; {written} blocks written now)"
    )


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


# The verbs in robust_csc/commands register themselves on `app` when imported.
from robust_csc.commands import (  # noqa: E402
    attack as _attack,
    compare as _compare,
    noise_curve as _noise_curve,
    report as _report,
    tune as _tune,
)

_VERBS = (_attack, _compare, _noise_curve, _report, _tune)


def _one_line(message: str) -> str:
    return " ".join(str(message).split())


def _click_errors():
    """click's exception module: typer vendors click as typer._click; older typers depend on click itself."""
    try:
        from typer._click import exceptions
    except ImportError:
        from click import exceptions
    return exceptions


def _fail(line: str) -> None:
    print(f"error: {_one_line(line)}", file=sys.stderr, flush=True)
    sys.exit(2)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: runs the app; every user-caused failure becomes `error: ...` and exit code 2.

    Besides RobustCSCError that is a bad option value (click's multi-line usage
    block becomes one line), an OSError of the environment (full disk, read-only
    folder), and a failure inside a DataLoader worker (see robust_csc.user_errors).
    """
    from robust_csc.user_errors import as_user_error, usage_error_line

    click = _click_errors()
    try:
        # standalone_mode=False: click raises its usage errors instead of printing a usage block and exiting.
        result = app(args=argv, prog_name="robust-csc", standalone_mode=False)
    except getattr(click, "NoArgsIsHelpError", ()) as err:  # bare `robust-csc`: the help, as before
        err.show()
        sys.exit(err.exit_code)
    except click.UsageError as err:
        _fail(usage_error_line(err))
    except typer.Abort:
        print("Aborted!", file=sys.stderr, flush=True)
        sys.exit(1)
    except click.ClickException as err:
        _fail(err.format_message())
    except Exception as err:
        user = as_user_error(err)
        if user is None:
            raise
        _fail(str(user))
    # A command's return value is None; --help and typer.Exit give their exit code.
    sys.exit(result if isinstance(result, int) else 0)


if __name__ == "__main__":
    main()
