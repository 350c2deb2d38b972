"""Corruption names, argument checks and per-image seeds."""

from __future__ import annotations

import numbers
import zlib

import numpy as np

from robust_csc.errors import RobustCSCError

#: The 15 common corruptions, in Hendrycks & Dietterich's order.
COMMON: tuple[str, ...] = (
    "gaussian_noise",
    "shot_noise",
    "impulse_noise",
    "defocus_blur",
    "glass_blur",
    "motion_blur",
    "zoom_blur",
    "snow",
    "frost",
    "fog",
    "brightness",
    "contrast",
    "elastic_transform",
    "pixelate",
    "jpeg_compression",
)
#: The four extra ("validation") corruptions shipped with CIFAR-10-C.
EXTRA: tuple[str, ...] = ("speckle_noise", "gaussian_blur", "spatter", "saturate")
ALL: tuple[str, ...] = COMMON + EXTRA
#: The additive/multiplicative pixel-noise family.
NOISE: tuple[str, ...] = ("gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise")

PROFILES: tuple[str, ...] = ("cifar", "imagenet")


def check_corruption(name: object) -> str:
    """Return ``name`` if it is a known corruption, else raise RobustCSCError."""
    if not isinstance(name, str) or name not in ALL:
        raise RobustCSCError(
            f"Unknown corruption {name!r}; use one of: {', '.join(ALL)}."
        )
    return name


def check_severity(severity: object) -> int:
    """Return ``severity`` as an int if it is an integer in 1..5, else raise RobustCSCError."""
    if (
        isinstance(severity, bool)
        or not isinstance(severity, numbers.Integral)
        or not 1 <= int(severity) <= 5
    ):
        raise RobustCSCError(
            f"Severity {severity!r} is out of range; use an integer from 1 to 5."
        )
    return int(severity)


def check_profile(profile: object) -> str:
    """Return ``profile`` if it is 'cifar' or 'imagenet', else raise RobustCSCError."""
    if profile not in PROFILES:
        raise RobustCSCError(
            f"Unknown corruption profile {profile!r}; use 'cifar' or 'imagenet'."
        )
    return profile  # type: ignore[return-value]


def _non_negative_int(value: object, what: str) -> int:
    if (
        isinstance(value, bool)
        or not isinstance(value, (numbers.Integral, np.integer))
        or int(value) < 0
    ):
        raise RobustCSCError(f"The {what} {value!r} is invalid; use a non-negative integer.")
    return int(value)


def image_seed(seed: int, corruption: str, severity: int, index: int) -> int:
    """A 63-bit seed for one image's corruption, stable across processes and versions.

    Built from numpy's SeedSequence over (seed, crc32(corruption name), severity,
    index); Python's ``hash()`` is salted per process and is not used.  The result
    fits both ``numpy.random.default_rng`` and ``torch.Generator.manual_seed``.
    """
    seed = _non_negative_int(seed, "seed")
    index = _non_negative_int(index, "image index")
    severity = _non_negative_int(severity, "severity")
    if not isinstance(corruption, str):
        raise RobustCSCError(f"Corruption name {corruption!r} is not a string; pass the name as str.")
    name_code = zlib.crc32(corruption.encode("utf-8"))
    words = np.random.SeedSequence((seed, name_code, severity, index)).generate_state(2, np.uint32)
    return ((int(words[0]) << 32) | int(words[1])) & ((1 << 63) - 1)
