"""Common image corruptions (CIFAR-10-C / ImageNet-C), seeded per image.

Public API:
  names:    COMMON, EXTRA, ALL, NOISE, check_corruption, check_severity, image_seed
  numpy:    corrupt_image, corrupt_images, noise_level, CIFAR_PARAMS, CIFAR_IMPLEMENTED
  torch:    add_noise, NOISE_KINDS
"""

from robust_csc.corruptions.api import corrupt_image, corrupt_images, noise_level
from robust_csc.corruptions.cifar import CIFAR_FUNCTIONS, CIFAR_PARAMS
from robust_csc.corruptions.names import (
    ALL,
    COMMON,
    EXTRA,
    NOISE,
    PROFILES,
    check_corruption,
    check_profile,
    check_severity,
    image_seed,
)
from robust_csc.corruptions.noise import NOISE_KINDS, add_noise, check_noise_level

#: Corruptions implemented for the cifar profile (the others raise RobustCSCError).
CIFAR_IMPLEMENTED: tuple[str, ...] = tuple(name for name in ALL if name in CIFAR_FUNCTIONS)

__all__ = [
    "ALL",
    "CIFAR_IMPLEMENTED",
    "CIFAR_PARAMS",
    "COMMON",
    "EXTRA",
    "NOISE",
    "NOISE_KINDS",
    "PROFILES",
    "add_noise",
    "check_corruption",
    "check_noise_level",
    "check_profile",
    "check_severity",
    "corrupt_image",
    "corrupt_images",
    "image_seed",
    "noise_level",
]
