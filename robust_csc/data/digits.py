"""The embedded data set: scikit-learn's 8x8 digits, shaped like a small CIFAR.

It ships with scikit-learn, so it works offline and gives every command a real
data set to run on. Images are upsampled to 3x32x32 so the CIFAR models accept them.
"""

from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch.utils.data import TensorDataset

from robust_csc.errors import RobustCSCError

NUM_CLASSES = 10
IMAGE_SIZE = 32
NUM_SAMPLES = 1797
TEST_SIZE = 0.25
SPLIT_SEED = 0
SPLITS = ("train", "test")


@lru_cache(maxsize=1)
def digits_split_indices() -> tuple[np.ndarray, np.ndarray]:
    """Indices into `load_digits()` of the fixed, stratified (train, test) split."""
    targets = load_digits().target
    train_idx, test_idx = train_test_split(
        np.arange(len(targets)),
        test_size=TEST_SIZE,
        random_state=SPLIT_SEED,
        stratify=targets,
    )
    # Read-only, so callers cannot corrupt the cached split.
    train_idx.flags.writeable = False
    test_idx.flags.writeable = False
    return train_idx, test_idx


@lru_cache(maxsize=None)
def _split_tensors(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    digits = load_digits()
    idx = digits_split_indices()[SPLITS.index(split)]
    # Raw values are 0..16; scale to [0, 1] like every other data set here.
    images = torch.from_numpy(digits.images[idx]).float().div_(16.0).unsqueeze(1)
    images = F.interpolate(images, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False)
    # Bilinear interpolation stays in range, but clamp against rounding drift.
    images = images.clamp_(0.0, 1.0).repeat(1, 3, 1, 1)  # grey -> RGB
    labels = torch.from_numpy(digits.target[idx]).long()
    return images, labels


def load_digits_split(split: str) -> TensorDataset:
    """The "train" (1347) or "test" (450) split: images (3, 32, 32) in [0, 1], int64 labels.

    The tensors are cached and shared between calls; do not modify them in place.
    """
    if split not in SPLITS:
        raise RobustCSCError(f"digits has no split {split!r}; use one of {', '.join(SPLITS)}")
    return TensorDataset(*_split_tensors(split))


@lru_cache(maxsize=1)
def digits_stats() -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel (mean, std) of the digits training images, for model normalisation."""
    images = _split_tensors("train")[0]
    mean = images.mean(dim=(0, 2, 3))
    std = images.std(dim=(0, 2, 3))
    return tuple(mean.tolist()), tuple(std.tolist())
