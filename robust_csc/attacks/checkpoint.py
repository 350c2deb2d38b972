"""attack_checkpoint: load a checkpoint and its clean test set, then run_attacks."""

from __future__ import annotations

import numbers
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch

from robust_csc.attacks.runner import AttackResult, run_attacks
from robust_csc.attacks.specs import as_specs, check_epsilons, check_norm, check_norm_fits
from robust_csc.errors import RobustCSCError
from robust_csc.evaluation.store import ResultsStore


def load_test_images(dataset: str, root: str | Path | None, n_examples: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The first n test images (N, C, H, W) in [0, 1] and their labels."""
    from robust_csc.data import load_dataset

    test = load_dataset(dataset, "test", root=root)
    total = len(test)
    n = total if n_examples is None else n_examples
    if n > total:
        raise RobustCSCError(f"n_examples {n} exceeds the {total} {dataset} test images; pass at most {total}")
    tensors = getattr(test, "tensors", None)
    if tensors is not None:  # a TensorDataset (digits): slice, no per-item copies
        return tensors[0][:n].clone(), tensors[1][:n].clone().long()
    items = [test[i] for i in range(n)]
    return torch.stack([item[0] for item in items]), torch.as_tensor([int(item[1]) for item in items], dtype=torch.long)


def attack_checkpoint(
    path: str | Path,
    *,
    store: ResultsStore | str | Path,
    attacks: Iterable[Any] | str = ("pgd",),
    norm: str = "Linf",
    epsilons: Iterable[float] | float = (8 / 255,),
    dataset: str | None = None,
    data_root: str | Path | None = None,
    n_examples: int | None = None,
    **kwargs: Any,
) -> AttackResult:
    """run_attacks on a saved checkpoint and the first n_examples of its data set's test split.

    model_name = the checkpoint's arch, checkpoint_sha256 = the file's sha256,
    dataset = its recorded data set unless given, split "test" or
    f"test[:{n}]" (as `robust-csc evaluate`).  path may also be a LoadedModel
    (robust_csc.models.sources.load_model): its name and hash.  With a tuned
    lambda policy as lambda_setting the points are the policy's reporting split
    (its first n_examples), never an image it was tuned on, and the split is
    named after it; points_of=policy attacks those same points at another
    lambda setting (the trained lambdas, for a paired comparison).  Other keywords (lambda_setting, steps, restarts, version,
    seed, batch_size, device, checks, adaptive, recompute, allow_large_epsilon,
    progress) go to run_attacks.
    """
    from robust_csc.data import dataset_info
    from robust_csc.models.checkpoints import read_metadata
    from robust_csc.models.sources import LoadedModel, as_loaded

    # The cheap checks first: a refused call reads no data and touches no store.
    norm = check_norm(norm)
    check_epsilons(epsilons, norm, allow_large=bool(kwargs.get("allow_large_epsilon", False)))
    for spec in as_specs(attacks, steps=kwargs.get("steps"), restarts=kwargs.get("restarts"), version=kwargs.get("version")):
        check_norm_fits(spec, norm)
    if n_examples is not None and (isinstance(n_examples, bool) or not isinstance(n_examples, numbers.Integral) or n_examples < 2):
        raise RobustCSCError(f"n_examples {n_examples!r} is invalid; pass an integer >= 2 (an interval needs 2) or None for all")
    meta = path.meta if isinstance(path, LoadedModel) else read_metadata(path)
    policy = kwargs.get("lambda_setting") if hasattr(kwargs.get("lambda_setting"), "scoring_plan") else None
    points_of = kwargs.pop("points_of", None)
    if points_of is not None and policy is not None and points_of is not policy:
        raise RobustCSCError("points_of and a tuned lambda_setting name two policies; pass one of them")
    policy = policy or points_of
    name = dataset or (policy.base_dataset() if policy is not None else None) or meta.get("dataset")
    if not name:
        raise RobustCSCError(f"{path} records no data set; pass dataset= (digits, cifar10, cifar100, imagenet)")
    info = dataset_info(name)
    if meta.get("num_classes") != info.num_classes:
        raise RobustCSCError(
            f"{path} has {meta.get('num_classes')} classes but {info.name} has {info.num_classes}; "
            "pass the data set the checkpoint was trained on"
        )
    if policy is not None:
        images, labels, index, split = policy_points(policy, info.name, data_root, n_examples)
    else:
        images, labels = load_test_images(info.name, data_root, n_examples)
        index, split = None, "test" if n_examples is None else f"test[:{n_examples}]"
    loaded = as_loaded(path, expect_num_classes=info.num_classes)
    return run_attacks(
        loaded.model,
        images,
        labels,
        attacks=attacks,
        norm=norm,
        epsilons=epsilons,
        store=store,
        model_name=loaded.name,
        checkpoint_sha256=loaded.sha256,
        dataset=info.name,
        split=split,
        index=index,
        **kwargs,
    )


def attack_policy_beside_trained(path: str | Path, policy: Any, **kwargs: Any) -> tuple[AttackResult, AttackResult]:
    """(the tuned policy attacked on its reporting split, adaptive attacks included; the trained lambdas attacked
    on the same points): a paired comparison.  Keywords go to attack_checkpoint."""
    under_policy = attack_checkpoint(path, lambda_setting=policy, points_of=policy, **kwargs)
    return under_policy, attack_checkpoint(path, lambda_setting=None, points_of=policy, **kwargs)


def policy_points(policy: Any, dataset: str, root: str | Path | None, n_examples: int | None):
    """(images, labels, test-set indices, split name) of a policy's reporting split, its first n_examples."""
    whole = int(policy.meta["suite"]["images_per_cell"])
    images, labels = load_test_images(dataset, root, whole)
    report = policy.reporting_split().report
    if n_examples is not None:
        if n_examples > report.size:
            raise RobustCSCError(f"n_examples {n_examples} exceeds the {report.size} images of the policy's reporting split "
                                 f"{policy.report_split}; pass at most {report.size}")
        report = report[:n_examples]
    if np.isin(report, policy.tune_index).any():  # positions of the first N test images are their indices
        raise RobustCSCError(f"the reporting split of {policy.name} overlaps its tuning images; re-run tune-lambda")
    position = torch.as_tensor(report, dtype=torch.long)
    split = policy.report_split if n_examples is None else f"{policy.report_split}[:{n_examples}]"
    return images[position], labels[position], report, split


__all__ = ["attack_checkpoint", "attack_policy_beside_trained", "load_test_images", "policy_points"]
