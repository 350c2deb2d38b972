"""The suite options of evaluate and tune-lambda: checked against the model and built (nothing opened for writing).

    chosen = build_suite(loaded, "generated", dataset="digits", corruptions=["gaussian_noise"], n_examples=200)
    chosen.suite, chosen.clean, chosen.split
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Optional

from robust_csc.cli.options import at_least_two, not_negative, parse_corruptions, parse_severities, positive
from robust_csc.errors import RobustCSCError

# fashion-mnist-c / mnist-c: suites that `robust-csc corrupt` wrote (robust_csc.data.stored).
SUITES = ("cifar10-c", "cifar100-c", "imagenet-c", "generated", "fashion-mnist-c", "mnist-c")
# Class counts of the stored suites, known before any file is read, so a
# mismatched checkpoint is refused even when the suite folder is missing.
_SUITE_CLASSES = {"cifar10-c": 10, "cifar100-c": 100, "fashion-mnist-c": 10, "mnist-c": 10}
DEFAULT_DATA_ROOT = Path("data")



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
    positive(images_per_severity, "--images-per-severity")
    not_negative(seed, "--seed")
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
            reason = one_line(str(err))
    hint = " (--no-verify-checksums accepts a copy whose files differ from the published ones)" if verify_checksums else ""
    return None, f"no clean cell: {reason}{hint}"




def one_line(message: str) -> str:
    return " ".join(str(message).split())
