"""attack_checkpoint: load a checkpoint and its clean test set, then run_attacks."""

from __future__ import annotations

import numbers
from pathlib import Path
from typing import Any, Iterable

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
    (robust_csc.models.sources.load_model): its name and hash.  Other keywords (lambda_setting,
    steps, restarts, version, seed, batch_size, device, checks, progress) go to
    run_attacks.
    """
    from robust_csc.data import dataset_info
    from robust_csc.models.checkpoints import read_metadata
    from robust_csc.models.sources import LoadedModel, as_loaded

    # The cheap checks first: a refused call reads no data and touches no store.
    norm = check_norm(norm)
    check_epsilons(epsilons)
    for spec in as_specs(attacks, steps=kwargs.get("steps"), restarts=kwargs.get("restarts"), version=kwargs.get("version")):
        check_norm_fits(spec, norm)
    if n_examples is not None and (isinstance(n_examples, bool) or not isinstance(n_examples, numbers.Integral) or n_examples < 1):
        raise RobustCSCError(f"n_examples {n_examples!r} is invalid; pass an integer >= 1 or None for the whole test set")
    meta = path.meta if isinstance(path, LoadedModel) else read_metadata(path)
    name = dataset or meta.get("dataset")
    if not name:
        raise RobustCSCError(f"{path} records no data set; pass dataset= (digits, cifar10, cifar100, imagenet)")
    info = dataset_info(name)
    if meta.get("num_classes") != info.num_classes:
        raise RobustCSCError(
            f"{path} has {meta.get('num_classes')} classes but {info.name} has {info.num_classes}; "
            "pass the data set the checkpoint was trained on"
        )
    images, labels = load_test_images(info.name, data_root, n_examples)
    loaded = as_loaded(path, expect_num_classes=info.num_classes)
    split = "test" if n_examples is None else f"test[:{n_examples}]"
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
        **kwargs,
    )


__all__ = ["attack_checkpoint", "load_test_images"]
