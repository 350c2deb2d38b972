"""The options verbs share, defined once, and the parsing and checks behind them.

An option that two verbs take means the same thing in both: the same name,
metavar, type and help (tests/test_cli_help.py checks it from `--help`). The
few that differ by design are listed in VERB_SPECIFIC with the reason.

    def evaluate(checkpoint: Optional[Path] = O.CHECKPOINT, model: Optional[str] = O.MODEL, ...,
                 lambdas: Optional[List[str]] = O.LAMBDA, store: Path = O.STORE, ...):
        loaded = O.load_model_option(checkpoint, model, weights, num_classes, mean, std, model_dir, allow_download)
        settings = O.lambda_settings(lambdas, lambda_policy, loaded)

Metavars name what a value is (FILE, DIR, N, FLOAT, LIST, NAME, REF, SPEC), never a Python type.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, List, Optional

import typer

from robust_csc.errors import RobustCSCError

# Options whose meaning depends on the verb by design (the help says which); every other shared option is
# checked to read the same in every verb.
VERB_SPECIFIC = {
    "--out": "a file (tune-lambda's policy, noise-curve's CSV) or a folder (train, corrupt, report, demo)",
    "--lambda": "train takes the one lambda it trains with; the other verbs take a list of test-time settings",
    "--checkpoint": "report takes several (repeatable), for their atoms and reconstructions",
}

# ---------------------------------------------------------------- the model: --checkpoint FILE or --model REF

CHECKPOINT = typer.Option(None, "--checkpoint", metavar="FILE", help="A robust-csc .safetensors checkpoint (or --model REF).")
MODEL = typer.Option(
    None, "--model", metavar="REF",
    help="Any classifier instead of --checkpoint: a checkpoint file, torchvision:NAME, timm:NAME, "
    "robustbench:DATASET:corruptions|Linf|L2:NAME, package.module:function or path/file.py:function.",
)
WEIGHTS = typer.Option(
    None, "--weights", metavar="FILE",
    help="Weights for a torchvision, timm or builder --model: .safetensors, or .pt (read weights-only).",
)
NUM_CLASSES = typer.Option(None, "--num-classes", metavar="N", help="Classes of a torchvision, timm or builder --model.")
MEAN = typer.Option(
    None, "--mean", metavar="LIST",
    help="Per-channel input mean of a --model that expects normalised input, e.g. 0.485,0.456,0.406 (with --std).",
)
STD = typer.Option(
    None, "--std", metavar="LIST",
    help="Per-channel input std (with --mean) [default: none for builders; ImageNet's for torchvision/timm].",
)
MODEL_DIR = typer.Option(
    None, "--model-dir", metavar="DIR",
    help="RobustBench's model folder, <dir>/<dataset>/<threat model>/<name>.pt [default: ./models].",
)
ALLOW_DOWNLOAD = typer.Option(
    False, "--allow-download", help="Let robustbench download a missing zoo checkpoint (needs the network)."
)

ARCH = typer.Option(None, "--arch", metavar="NAME", help="A zoo architecture, e.g. sdnet18 or resnet18 (see `robust-csc models`).")
ARCH_REQUIRED = typer.Option(..., "--arch", metavar="NAME", help="A zoo architecture, e.g. sdnet18 or resnet18 (see `robust-csc models`).")

# ---------------------------------------------------------------- data

_DATASETS = "Data set: digits, cifar10, cifar100, fashion-mnist, mnist or imagenet"
DATASET = typer.Option(None, "--dataset", metavar="NAME", help=f"{_DATASETS} [default: the model's].")
DATASET_REQUIRED = typer.Option(..., "--dataset", metavar="NAME", help=f"{_DATASETS}.")
DATA_ROOT = typer.Option(None, "--data-root", metavar="DIR", help="Data folder [default: ./data].")
DOWNLOAD = typer.Option(
    False, "--download", help="Download missing data (the data set, or CIFAR-10-C / CIFAR-100-C files) when online."
)
VERIFY_CHECKSUMS = typer.Option(
    True, "--verify-checksums/--no-verify-checksums",
    help="Check data files against their published MD5s; --no-verify-checksums accepts a copy you trust.",
)
_SUITES = "cifar10-c, cifar100-c, imagenet-c, generated, or a suite `robust-csc corrupt` wrote: fashion-mnist-c, mnist-c"
SUITE = typer.Option(None, "--suite", metavar="NAME", help=f"{_SUITES} [default: the --lambda-policy's].")
SUITE_REQUIRED = typer.Option(..., "--suite", metavar="NAME", help=f"{_SUITES}.")
PROFILE = typer.Option(
    None, "--profile", metavar="NAME", help="Corruption parameters of a generated suite: cifar or imagenet [default: cifar]."
)
CORRUPTIONS = typer.Option(
    None, "--corruptions", metavar="LIST", help="Comma list of corruptions, e.g. gaussian_noise,fog [default: all of the suite's]."
)
SEVERITIES = typer.Option(None, "--severities", metavar="LIST", help="Comma list of severities from 1 to 5 [default: all].")
N_EXAMPLES = typer.Option(None, "--n-examples", metavar="N", help="The first N test images (per cell) [default: all].")

# ---------------------------------------------------------------- lambda settings

LAMBDA = typer.Option(
    None, "--lambda", metavar="LIST",
    help="Test-time lambda settings: trained, a number (every CSC layer), stem=0.5 or scale=1.5; "
    "a comma list or repeated [default: trained].",
)
LAMBDA_POLICY = typer.Option(
    None, "--lambda-policy", metavar="FILE",
    help="A lambda policy file from tune-lambda, run beside --lambda on the policy's reporting split.",
)

# ---------------------------------------------------------------- running

STORE = typer.Option(Path("results.sqlite"), "--store", metavar="FILE", help="The SQLite results store.")
STORE_REQUIRED = typer.Option(..., "--store", metavar="FILE", help="The SQLite results store.")
SEED = typer.Option(
    0, "--seed", metavar="N",
    help="Seed of the command's randomness (corruptions, noise, splits, attack starts or training).",
)
SEED_OR_POLICY = typer.Option(
    None, "--seed", metavar="N",
    help="Seed of the command's randomness (corruptions, noise, splits, attack starts or training) "
    "[default: 0, or the --lambda-policy's].",
)


def batch_size_option(default: int) -> Any:
    return typer.Option(default, "--batch-size", metavar="N", help="Images per batch.")


WORKERS = typer.Option(0, "--workers", metavar="N", help="Worker processes for the data (0: this process only).")
DEVICE = typer.Option(None, "--device", metavar="NAME", help="cpu, cuda, cuda:1, ... [default: cuda if available, else cpu].")
PROGRESS = typer.Option(
    None, "--progress/--no-progress", help="Progress bars on stderr [default: when stderr is a terminal]."
)
RECOMPUTE = typer.Option(
    False, "--recompute", help="Run every cell again and replace the stored ones (after an upgrade or a fix)."
)
FORCE = typer.Option(False, "--force", help="Replace what the output path already holds.")


# ---------------------------------------------------------------- parsing and checks


def progress_on(progress: Optional[bool]) -> bool:
    """--progress/--no-progress, or whether stderr is a terminal."""
    return sys.stderr.isatty() if progress is None else bool(progress)


def resolve_device(device: Optional[str]) -> str:
    """--device checked against this machine; unset: cuda if available, else cpu (the same in every verb)."""
    from robust_csc.validation import check_device

    checked = check_device(device)
    if checked is not None:
        return checked
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def items(values: Optional[List[str]]) -> Optional[List[str]]:
    """Repeated options and comma lists as one flat list; None when the option was not given."""
    if not values:
        return None
    return [item.strip() for value in values for item in value.split(",") if item.strip()]


def positive(value: Optional[int], option: str) -> Optional[int]:
    if value is not None and value < 1:
        raise RobustCSCError(f"{option} {value} is not positive; pass an integer of at least 1")
    return value


def not_negative(value: int, option: str, fix: str = "pass an integer >= 0") -> int:
    if value < 0:
        raise RobustCSCError(f"{option} {value} is negative; {fix}")
    return value


def workers(value: int) -> int:
    return not_negative(value, "--workers", "pass 0 (no worker processes) or more")


def at_least_two(n_examples: Optional[int]) -> Optional[int]:
    """--n-examples of a run that reports accuracies: every accuracy has an interval, which needs 2 examples."""
    positive(n_examples, "--n-examples")
    if n_examples is not None and n_examples < 2:
        raise RobustCSCError(f"--n-examples {n_examples} leaves no interval (it needs 2 examples); pass --n-examples 2 or more")
    return n_examples


def parse_corruptions(values: Optional[List[str]]) -> Optional[tuple[str, ...]]:
    """Corruption names, checked strictly; None = the suite's default selection."""
    from robust_csc.corruptions import check_corruption

    chosen = items(values)
    if chosen is None:
        return None
    if not chosen:
        raise RobustCSCError("--corruptions is empty; name at least one corruption, such as gaussian_noise")
    return tuple(dict.fromkeys(check_corruption(item) for item in chosen))


def parse_severities(values: Optional[List[str]]) -> Optional[tuple[int, ...]]:
    """Severities 1..5, checked strictly; None = all five."""
    from robust_csc.corruptions import check_severity

    chosen = items(values)
    if chosen is None:
        return None
    if not chosen:
        raise RobustCSCError("--severities is empty; name severities from 1 to 5, such as 1,3,5")
    out = []
    for item in chosen:
        try:
            number = int(item)
        except ValueError:
            raise RobustCSCError(f"severity {item!r} is not an integer; use severities from 1 to 5") from None
        out.append(check_severity(number))
    return tuple(sorted(set(out)))


def parse_lambda_settings(values: Optional[List[str]]) -> tuple:
    """Lambda settings: 'trained', a number (every CSC layer), 'stem=0.5' or 'scale=1.5' (robust_csc.lambdas)."""
    from robust_csc.lambdas import LambdaSetting

    chosen = items(values)
    if not chosen:
        return (LambdaSetting(),)
    settings = []
    for item in chosen:
        if item.lower() in ("trained", "none"):
            settings.append(LambdaSetting())
            continue
        try:
            settings.append(LambdaSetting.parse(item))
        except RobustCSCError as err:
            raise RobustCSCError(
                f"lambda {item!r} is not valid ({err}); pass a number from 0 to 1000, 'trained', stem=0.5 or scale=1.5"
            ) from None
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


def refuse_lambdas_without_csc(checkpoint, meta: dict, settings: tuple) -> None:
    """One line when a setting would change lambdas of a model that has none."""
    from robust_csc.lambdas import needs_csc

    # The metadata lists every CSC layer's lambda; none means there is nothing to set.
    if not meta.get("lambda") and any(needs_csc(setting) for setting in settings):
        raise RobustCSCError(
            f"{checkpoint} holds a {meta.get('arch')} model without CSC layers, so --lambda cannot be set; "
            "leave --lambda out or evaluate an SDNet checkpoint"
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


def model_args(checkpoint: Optional[Path], model: Optional[str], weights: Optional[Path] = None,
               num_classes: Optional[int] = None, mean: Optional[str] = None, std: Optional[str] = None,
               model_dir: Optional[Path] = None) -> list:
    """The model options again, for the next command a verb suggests (None parts are dropped by output.command)."""
    if checkpoint is not None:
        return ["--checkpoint", checkpoint]
    out: list = ["--model", model]
    for flag, value in (("--weights", weights), ("--num-classes", num_classes), ("--mean", mean), ("--std", std),
                        ("--model-dir", model_dir)):
        if value is not None:
            out += [flag, value]
    return out
