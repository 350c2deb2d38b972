"""Pixel noise on batched torch tensors at any continuous level, seeded per image."""

from __future__ import annotations

import math
import numbers
from typing import Sequence

import torch

from robust_csc.corruptions.names import image_seed
from robust_csc.errors import RobustCSCError

NOISE_KINDS: tuple[str, ...] = ("gaussian", "shot", "impulse", "speckle")


def check_noise_level(kind: str, level: object) -> float:
    """Validate a noise level for ``kind``; returns it as float.

    gaussian sigma and speckle c: finite and >= 0 (0 leaves the image unchanged);
    shot c: finite and > 0; impulse amount: in (0, 1].
    """
    if kind not in NOISE_KINDS:
        raise RobustCSCError(f"Unknown noise kind {kind!r}; use one of: {', '.join(NOISE_KINDS)}.")
    if isinstance(level, bool) or not isinstance(level, numbers.Real) or not math.isfinite(float(level)):
        raise RobustCSCError(f"The {kind} noise level {level!r} is not a finite number; pass a finite float.")
    level = float(level)
    if kind in ("gaussian", "speckle") and level < 0:
        raise RobustCSCError(f"The {kind} noise level {level} is negative; pass a standard deviation >= 0.")
    if kind == "shot" and level <= 0:
        raise RobustCSCError(f"The shot noise level {level} is not positive; pass a photon scale c > 0.")
    if kind == "impulse" and not 0 < level <= 1:
        raise RobustCSCError(f"The impulse noise amount {level} is outside (0, 1]; pass a fraction of pixels in (0, 1].")
    return level


def add_noise(
    x: torch.Tensor,
    kind: str,
    level: float,
    seed: int,
    indices: torch.Tensor | Sequence[int],
) -> torch.Tensor:
    """Add pixel noise to a float batch ``x`` (B, 3, H, W) in [0, 1]; returns a new tensor in [0, 1].

    Definitions (as in CIFAR-10-C / ImageNet-C):
      gaussian: x + N(0, level), clipped;  shot: poisson(x * level) / level, clipped;
      impulse: each value replaced with probability ``level`` by 1 or 0 (equal odds);
      speckle: x + x * N(0, level), clipped.
    Image ``b`` draws only from a torch.Generator on x's device seeded with
    ``image_seed(seed, kind + "_noise", 0, indices[b])``, so results do not depend
    on batching or order.
    """
    level = check_noise_level(kind, level)
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() != 4:
        raise RobustCSCError(
            f"x must be a float tensor of shape (B, C, H, W), got "
            f"{getattr(x, 'dtype', type(x).__name__)} {tuple(getattr(x, 'shape', ()))}; convert it first."
        )
    if isinstance(indices, torch.Tensor):
        if indices.is_floating_point() or indices.is_complex():
            raise RobustCSCError(f"indices must be integers, got dtype {indices.dtype}; pass a long tensor.")
        raw = indices.reshape(-1).tolist()
    else:
        raw = list(indices)
    if any(isinstance(i, bool) or not isinstance(i, numbers.Integral) for i in raw):
        raise RobustCSCError("indices must be integers (global image positions); pass ints.")
    index_list = [int(i) for i in raw]
    if len(index_list) != x.shape[0]:
        raise RobustCSCError(
            f"Got {len(index_list)} indices for a batch of {x.shape[0]}; pass one global index per image."
        )
    name = kind + "_noise"
    out = torch.empty_like(x)
    for b, index in enumerate(index_list):
        generator = torch.Generator(device=x.device)
        generator.manual_seed(image_seed(seed, name, 0, index))
        image = x[b]
        if kind == "gaussian":
            noise = torch.randn(image.shape, generator=generator, device=x.device, dtype=x.dtype)
            noisy = image + level * noise
        elif kind == "speckle":
            noise = torch.randn(image.shape, generator=generator, device=x.device, dtype=x.dtype)
            noisy = image + image * level * noise
        elif kind == "shot":
            noisy = torch.poisson(image.clamp(min=0) * level, generator=generator) / level
        else:  # impulse
            flipped = torch.rand(image.shape, generator=generator, device=x.device, dtype=x.dtype) < level
            salted = torch.rand(image.shape, generator=generator, device=x.device, dtype=x.dtype) < 0.5
            noisy = image.clone()
            noisy[flipped & salted] = 1.0
            noisy[flipped & ~salted] = 0.0
        out[b] = noisy.clamp(0.0, 1.0)
    return out
