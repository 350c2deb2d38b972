"""One entry point for every data set: its facts, its splits, and a DataLoader."""

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from robust_csc.constants import CIFAR_MEAN, CIFAR_STD, IMAGENET_MEAN, IMAGENET_STD
from robust_csc.data.cifar import load_cifar
from robust_csc.data.digits import digits_stats, load_digits_split
from robust_csc.data.imagenet import load_imagenet_val
from robust_csc.data.mnist import MNIST_NAMES, load_mnist, mnist_stats
from robust_csc.errors import RobustCSCError

DATASET_NAMES = ("digits", "cifar10", "cifar100", "imagenet", *MNIST_NAMES)
DEFAULT_ROOT = Path("data")


@dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know about a data set."""

    name: str
    num_classes: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    stem: str  # "cifar" (32px stem) or "imagenet" (224px stem)


def _check_name(name: str) -> str:
    key = name.lower()
    if key not in DATASET_NAMES:
        raise RobustCSCError(f"unknown data set {name!r}; use one of {', '.join(DATASET_NAMES)}")
    return key


def dataset_info(name: str) -> DatasetInfo:
    """Facts about a known data set (digits statistics are computed on first use)."""
    key = _check_name(name)
    if key == "digits":
        mean, std = digits_stats()
        return DatasetInfo(key, 10, 32, mean, std, "cifar")
    if key in MNIST_NAMES:  # 28x28 grey, padded to 32x32 and repeated to RGB (robust_csc.data.mnist)
        mean, std = mnist_stats(key)
        return DatasetInfo(key, 10, 32, mean, std, "cifar")
    if key == "imagenet":
        return DatasetInfo(key, 1000, 224, IMAGENET_MEAN, IMAGENET_STD, "imagenet")
    return DatasetInfo(key, 10 if key == "cifar10" else 100, 32, CIFAR_MEAN, CIFAR_STD, "cifar")


def load_dataset(
    name: str,
    split: str,
    root: str | Path | None = None,
    train_transform: bool = False,
    download: bool = False,
    verify_checksums: bool = True,
) -> Dataset:
    """A split of a data set yielding (float image CHW in [0, 1], int label).

    root defaults to ./data (ImageNet: ./data/imagenet; MNIST and Fashion-MNIST
    also look in Debian's package folder); digits needs none.
    train_transform turns on the CIFAR augmentation; digits has none (flips would
    change digit shapes) and ImageNet here is evaluation only.
    """
    key = _check_name(name)
    if key == "imagenet":
        if split not in ("val", "test"):
            raise RobustCSCError(f"imagenet has no split {split!r} here; use val (or test, its alias)")
        return load_imagenet_val(root if root is not None else DEFAULT_ROOT / "imagenet")
    if split not in ("train", "test"):
        raise RobustCSCError(f"{key} has no split {split!r}; use train or test")
    if key == "digits":
        return load_digits_split(split)
    if key in MNIST_NAMES:
        return load_mnist(
            key, split, root, train_transform=train_transform, download=download, verify_checksums=verify_checksums
        )
    return load_cifar(
        key,
        root if root is not None else DEFAULT_ROOT,
        train=split == "train",
        train_transform=train_transform,
        download=download,
        verify_checksums=verify_checksums,
    )


def make_loader(
    dataset: Dataset,
    batch_size: int,
    shuffle: bool,
    num_workers: int = 0,
    seed: int = 0,
    drop_last: bool = False,
    distributed: bool = False,
) -> DataLoader:
    """A reproducible DataLoader; sharded across ranks when distributed training is running.

    With a DistributedSampler, call `loader.sampler.set_epoch(epoch)` each epoch
    so the shuffle changes between epochs.
    """
    if batch_size < 1:
        raise RobustCSCError(f"batch size {batch_size} is not positive; pass a batch size of at least 1")
    # The generator fixes the shuffle order and the workers' base seeds.
    generator = torch.Generator().manual_seed(seed)
    sampler = None
    if distributed and dist.is_available() and dist.is_initialized():
        sampler = DistributedSampler(dataset, shuffle=shuffle, seed=seed, drop_last=drop_last)
        shuffle = False  # the sampler shuffles; DataLoader forbids both
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        sampler=sampler,
        num_workers=num_workers,
        drop_last=drop_last,
        generator=generator,
        pin_memory=torch.cuda.is_available(),
    )
