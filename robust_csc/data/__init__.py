"""Data sets: images leave as float CHW tensors in [0, 1], not normalised; labels are ints."""

from robust_csc.data.cifar import load_cifar
from robust_csc.data.digits import digits_split_indices, digits_stats, load_digits_split
from robust_csc.data.imagenet import load_imagenet_val
from robust_csc.data.mnist import load_mnist
from robust_csc.data.registry import (
    DATASET_NAMES,
    DatasetInfo,
    dataset_info,
    load_dataset,
    make_loader,
)

__all__ = [
    "DATASET_NAMES",
    "DatasetInfo",
    "dataset_info",
    "digits_split_indices",
    "digits_stats",
    "load_cifar",
    "load_dataset",
    "load_digits_split",
    "load_imagenet_val",
    "load_mnist",
    "make_loader",
]
