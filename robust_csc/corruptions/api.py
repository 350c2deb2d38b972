"""Corrupt single images or seeded batches with the CIFAR-10-C or ImageNet-C parameters."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from robust_csc.corruptions import cifar
from robust_csc.corruptions.names import (
    NOISE,
    check_corruption,
    check_profile,
    check_severity,
    image_seed,
)
from robust_csc.errors import RobustCSCError


def _check_image(image: object, what: str = "image") -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        shape = getattr(image, "shape", None)
        dtype = getattr(image, "dtype", type(image).__name__)
        raise RobustCSCError(
            f"The {what} must be a uint8 array of shape (H, W, 3), got {dtype} {shape}; convert it first."
        )
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise RobustCSCError(f"The {what} is empty (shape {image.shape}); pass a non-empty image.")
    return image


def _imagenet(image: np.ndarray, corruption: str, severity: int, rng: np.random.Generator) -> np.ndarray:
    import imagecorruptions

    if image.shape[0] < 32 or image.shape[1] < 32:
        raise RobustCSCError(
            f"The imagenet profile needs images of at least 32x32 pixels, got {image.shape[:2]}; resize the image."
        )
    kwargs = {}
    if corruption in ("glass_blur", "impulse_noise"):
        # These two draw from a fresh default_rng(seed) rather than the global RNG;
        # with seed=None they would be unseeded, so pass a seed drawn from rng.
        kwargs["seed"] = int(rng.integers(0, 2**32))
    # imagecorruptions draws from numpy's global RNG (np.random.normal, randint,
    # ...) and takes no generator: seed the global RNG from this image's own rng
    # around the call (then restore it), so the result depends on rng only.
    with cifar.global_numpy_seed(rng):
        out = imagecorruptions.corrupt(image, corruption_name=corruption, severity=severity, **kwargs)
    return np.ascontiguousarray(out, dtype=np.uint8)


def corrupt_image(
    image: np.ndarray,
    corruption: str,
    severity: int,
    profile: str = "cifar",
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Corrupt one uint8 (H, W, 3) RGB image; returns uint8 (H, W, 3).

    ``profile="cifar"`` uses the CIFAR-10-C parameters (make_cifar_c.py),
    ``profile="imagenet"`` calls ``imagecorruptions.corrupt`` (ImageNet-C
    parameters).  All randomness comes from ``rng`` (a fresh unseeded generator
    when None).  Like make_cifar_c.py, float results are truncated to uint8.
    """
    image = _check_image(image)
    corruption = check_corruption(corruption)
    severity = check_severity(severity)
    profile = check_profile(profile)
    if rng is None:
        rng = np.random.default_rng()
    elif not isinstance(rng, np.random.Generator):
        raise RobustCSCError(
            f"rng must be a numpy.random.Generator, got {type(rng).__name__}; pass np.random.default_rng(seed)."
        )
    if profile == "imagenet":
        return _imagenet(image, corruption, severity, rng)
    function = cifar.CIFAR_FUNCTIONS.get(corruption)
    if function is None:
        raise RobustCSCError(
            f"Corruption {corruption!r} is not implemented for the cifar profile yet; use profile imagenet."
        )
    out = function(image, cifar.CIFAR_PARAMS[corruption][severity - 1], rng)
    # np.uint8 of floats truncates, as make_cifar_c.py's np.uint8(corruption(...)).
    return np.clip(np.asarray(out, dtype=np.float64) * 255.0, 0, 255).astype(np.uint8)


def corrupt_images(
    images: np.ndarray,
    corruption: str,
    severity: int,
    profile: str = "cifar",
    seed: int = 0,
    indices: Sequence[int] | None = None,
) -> np.ndarray:
    """Corrupt a uint8 (N, H, W, 3) batch; image i uses its own rng seeded with
    ``image_seed(seed, corruption, severity, indices[i])``.

    ``indices`` are the images' global positions in the data set (default
    0..N-1), so the output does not depend on batch size, order or workers.
    """
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3:
        raise RobustCSCError(
            f"images must be a uint8 array of shape (N, H, W, 3), got "
            f"{getattr(images, 'dtype', type(images).__name__)} {getattr(images, 'shape', None)}; convert them first."
        )
    corruption = check_corruption(corruption)
    severity = check_severity(severity)
    profile = check_profile(profile)
    index_array = np.arange(len(images)) if indices is None else np.asarray(indices).reshape(-1)
    if index_array.size and not np.issubdtype(index_array.dtype, np.integer):
        raise RobustCSCError(
            f"indices must be integers (global image positions), got dtype {index_array.dtype}; pass ints."
        )
    indices = [int(i) for i in index_array]
    if len(indices) != len(images):
        raise RobustCSCError(
            f"Got {len(indices)} indices for {len(images)} images; pass one global index per image."
        )
    out = np.empty_like(images)
    for k, (image, index) in enumerate(zip(images, indices)):
        rng = np.random.default_rng(image_seed(seed, corruption, severity, index))
        out[k] = corrupt_image(image, corruption, severity, profile=profile, rng=rng)
    return out


def noise_level(corruption: str, severity: int, profile: str = "cifar") -> float:
    """The published parameter of a noise corruption at a severity.

    gaussian_noise: sigma; shot_noise: c in poisson(x*c)/c; impulse_noise: the
    salt-and-pepper amount; speckle_noise: c in x + x*N(0, c).
    """
    corruption = check_corruption(corruption)
    severity = check_severity(severity)
    profile = check_profile(profile)
    if corruption not in NOISE:
        raise RobustCSCError(
            f"Corruption {corruption!r} has no noise level; use one of: {', '.join(NOISE)}."
        )
    table = cifar.CIFAR_PARAMS if profile == "cifar" else cifar.IMAGENET_NOISE_PARAMS
    return float(table[corruption][severity - 1])
