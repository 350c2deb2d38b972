"""Corruption suites generated on the fly from a clean data set (digits, CIFAR, ImageNet).

The published CIFAR-10-C / ImageNet-C files are not always at hand (digits has
none at all), so this module corrupts the base test images as they are read.
Every item is

    (image float CHW in [0, 1], int label, int index)

like the published suites (robust_csc.data.corrupted): index is the position
of the image in the base split, and the image is corrupted with its own
generator seeded by image_seed(seed, corruption, severity, index), so a cell
holds the same pixels whatever the batch size, order or number of workers.

The base image is first rounded to uint8 (as if it had been saved as an image
file), corrupted in uint8 like make_cifar_c.py, and converted back; the clean
cell (generated_clean) is rounded the same way, so clean and corrupted images
share one pixel grid.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np
import torch
from torch.utils.data import Dataset

from robust_csc.corruptions import ALL, check_profile, corrupt_image, image_seed
from robust_csc.data.corrupted import CorruptionSuite, _select_corruptions, _select_severities
from robust_csc.data.registry import dataset_info, load_dataset
from robust_csc.errors import RobustCSCError


def to_uint8_hwc(image: torch.Tensor) -> np.ndarray:
    """A float CHW image in [0, 1] as uint8 HWC, rounded to the nearest level as an image file stores it."""
    pixels = image.detach().to("cpu", torch.float32).clamp(0.0, 1.0).mul(255.0).round().to(torch.uint8)
    return np.ascontiguousarray(pixels.permute(1, 2, 0).numpy())


def from_uint8_hwc(pixels: np.ndarray) -> torch.Tensor:
    """uint8 HWC back to float CHW in [0, 1] (what ToTensor gives for the same pixels)."""
    return torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1))).float().div(255.0)


def _check_n_examples(n_examples: object, available: int, dataset: str, split: str) -> int:
    if n_examples is None:
        return available
    if isinstance(n_examples, bool) or not isinstance(n_examples, (int, np.integer)) or not 1 <= n_examples <= available:
        raise RobustCSCError(
            f"n_examples {n_examples!r} is outside 1..{available} (the size of {dataset} {split}); "
            f"choose at most {available} images or pass None for all"
        )
    return int(n_examples)


def _base_item(base: Dataset, i: int) -> tuple[torch.Tensor, int]:
    """(image, int label) of a base data set whose labels may be 0-dim tensors (digits)."""
    image, label = base[i][:2]
    return image, int(label)


class GeneratedClean(Dataset):
    """The first n images of a base split, rounded to uint8 levels; items (image, label, index)."""

    def __init__(self, base: Dataset, n: int) -> None:
        self.base = base
        self.n = n

    def __len__(self) -> int:
        return self.n

    def _pixels(self, i: int) -> tuple[np.ndarray, int]:
        if not 0 <= i < self.n:
            raise IndexError(f"index {i} out of range for a cell of {self.n} images")
        image, label = _base_item(self.base, i)
        return to_uint8_hwc(image), label

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int]:
        pixels, label = self._pixels(i)
        return from_uint8_hwc(pixels), label, int(i)


class GeneratedCell(GeneratedClean):
    """One (corruption, severity) cell corrupted on read, each image with its own seeded generator."""

    def __init__(self, base: Dataset, n: int, corruption: str, severity: int, profile: str, seed: int) -> None:
        super().__init__(base, n)
        self.corruption = corruption
        self.severity = severity
        self.profile = profile
        self.seed = seed

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int]:
        pixels, label = self._pixels(i)
        # Seeded by the image's index only: independent of batch size, order and worker.
        rng = np.random.default_rng(image_seed(self.seed, self.corruption, self.severity, i))
        corrupted = corrupt_image(pixels, self.corruption, self.severity, profile=self.profile, rng=rng)
        return from_uint8_hwc(corrupted), label, int(i)


def _check_seed(seed: object) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise RobustCSCError(f"seed {seed!r} is invalid; pass a non-negative integer such as 0")
    return int(seed)


def generated_clean(
    dataset: str,
    split: str = "test",
    root: str | Path | None = None,
    n_examples: int | None = None,
    *,
    verify_checksums: bool = True,
) -> Dataset:
    """The clean cell of a generated suite: (image rounded to uint8 levels, label, index).

    verify_checksums=False accepts a CIFAR copy whose files differ from the published ones.
    """
    base = load_dataset(dataset, split, root=root, verify_checksums=verify_checksums)
    return GeneratedClean(base, _check_n_examples(n_examples, len(base), dataset, split))


def generated_suite(
    dataset: str,
    *,
    split: str = "test",
    root: str | Path | None = None,
    profile: str = "cifar",
    corruptions: Iterable[str] | str | None = None,
    severities: Iterable[int] | int | None = None,
    seed: int = 0,
    n_examples: int | None = None,
    verify_checksums: bool = True,
) -> CorruptionSuite:
    """A CorruptionSuite that corrupts `dataset`'s split on the fly.

    profile: "cifar" (CIFAR-10-C parameters) or "imagenet" (imagecorruptions);
    corruptions / severities: the selection (None = all 19 / all five);
    seed: the base of every per-image seed; n_examples: the first N images;
    verify_checksums=False accepts a CIFAR copy whose files differ from the published ones.
    The suite is named f"{dataset}-c[{profile}]" (with ",seed=N" inside the
    brackets for a non-zero seed), so different generations never share a name.
    """
    profile = check_profile(profile)
    seed = _check_seed(seed)
    info = dataset_info(dataset)
    chosen = _select_corruptions(corruptions, ALL)  # None selects all 19, in Hendrycks' order
    chosen_severities = _select_severities(severities)
    base = load_dataset(info.name, split, root=root, verify_checksums=verify_checksums)
    n = _check_n_examples(n_examples, len(base), info.name, split)

    def make_dataset(corruption: str, severity: int) -> Dataset:
        return GeneratedCell(base, n, corruption, severity, profile, seed)

    tag = profile if seed == 0 else f"{profile},seed={seed}"
    return CorruptionSuite(f"{info.name}-c[{tag}]", info.num_classes, chosen, chosen_severities, n, make_dataset)


__all__ = ["GeneratedCell", "GeneratedClean", "from_uint8_hwc", "generated_clean", "generated_suite", "to_uint8_hwc"]
