"""Pixel noise on batched torch tensors at any continuous level, seeded per image.

Randomness is counter-based: every uniform is a hash of (per-image key, element,
draw), so an image's noise never depends on the batch it travels in, its
position there, or the chunking of the work, and the whole batch is drawn in a
few elementwise passes (one fused kernel with ``compiled=True``).  Only torch
ops are used, so the same code runs on CUDA tensors.
"""

from __future__ import annotations

import math
import numbers
import warnings
import zlib
from typing import Callable, Sequence

import numpy as np
import torch

from robust_csc.errors import RobustCSCError

NOISE_KINDS: tuple[str, ...] = ("gaussian", "shot", "impulse", "speckle")

#: Largest shot-noise photon scale: beyond it float32 photon counts lose integers,
#: and the noise (std <= 1/sqrt(c)) is below a thousandth of the range anyway.
MAX_SHOT_LEVEL = 1e6

_M32 = 0xFFFFFFFF
#: The counter of a draw is ``draw * n_elements + element`` and must stay below 2^32.
_MAX_DRAWS = 64
#: Eager work is cut into chunks of whole images, about this many values each, so
#: that intermediates stay in cache (a pass over a fresh multi-MB tensor costs page faults).
_EAGER_CHUNK = 1 << 16


def check_noise_level(kind: str, level: object) -> float:
    """Validate a noise level for ``kind``; returns it as float.

    gaussian sigma and speckle c: finite and >= 0 (0 leaves the image unchanged);
    shot c: finite, > 0 and at most MAX_SHOT_LEVEL; impulse amount: in (0, 1].
    """
    if kind not in NOISE_KINDS:
        raise RobustCSCError(f"Unknown noise kind {kind!r}; use one of: {', '.join(NOISE_KINDS)}.")
    if isinstance(level, bool) or not isinstance(level, numbers.Real) or not math.isfinite(float(level)):
        raise RobustCSCError(f"The {kind} noise level {level!r} is not a finite number; pass a finite float.")
    level = float(level)
    if kind in ("gaussian", "speckle") and level < 0:
        raise RobustCSCError(f"The {kind} noise level {level} is negative; pass a standard deviation >= 0.")
    if kind == "shot" and not 0 < level <= MAX_SHOT_LEVEL:
        raise RobustCSCError(
            f"The shot noise level {level} is outside (0, {MAX_SHOT_LEVEL:g}]; pass a photon scale c in that range."
        )
    if kind == "impulse" and not 0 < level <= 1:
        raise RobustCSCError(f"The impulse noise amount {level} is outside (0, 1]; pass a fraction of pixels in (0, 1].")
    return level


# --------------------------------------------------------------------------- counter-based uniforms
#
# Hand-written because torch's generators are stateful streams (one generator per
# image was the old, slow design) and torch has no keyed counter-based RNG.
# Integers are 32-bit values held in int64 tensors: every multiplier is below
# 2^31, so a product stays below 2^63 (no signed overflow, on any device), and
# values stay non-negative, so ``>>`` is a logical shift.


def _mix(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (xorshift-multiply, after C. Wellons' lowbias32), x in [0, 2^32)."""
    x = x ^ (x >> 16)
    x = (x * 0x21F0AAAD) & _M32
    x = x ^ (x >> 15)
    x = (x * 0x735A2D97) & _M32
    return x ^ (x >> 15)


def _uniform(k1: torch.Tensor, k2: torch.Tensor, counter: torch.Tensor) -> torch.Tensor:
    """float32 uniforms in (0, 1) on the grid (j + 1/2) / 2^23 from keys and counters.

    23 bits because 2j + 1 must be exact in float32; the grid is symmetric about
    1/2 and never reaches 0 or 1 (log and comparisons are safe).
    """
    h = _mix(_mix(counter ^ k1) ^ k2)
    return ((h >> 9) * 2 + 1).to(torch.float32) * (2.0**-24)


def _elements(n: int, device: torch.device) -> torch.Tensor:
    """Element positions 0..n-1 within an image, as a (1, n) row of counters."""
    return torch.arange(n, device=device, dtype=torch.int64).view(1, n)


def _box_muller(x, k1, k2, level, multiplicative: bool) -> torch.Tensor:
    """x + level * z (or x + x * level * z), clipped, with z ~ N(0, 1) per value.

    Box-Muller on pairs: element p and element p + N//2 share the uniforms of
    counters p and N + p, getting r cos(theta) and r sin(theta); with N odd the
    last element uses counters N-1 and 2N-1 alone.  Every value is a function of
    its image's keys and its position only.
    """
    n = x.shape[1]
    half = n // 2
    parts = []
    for lo, count in ((0, half), (2 * half, n - 2 * half)):
        if count == 0:
            continue
        p = torch.arange(lo, lo + count, device=x.device, dtype=torch.int64).view(1, count)
        r = torch.sqrt(-2.0 * torch.log(_uniform(k1, k2, p)))
        theta = (2.0 * math.pi) * _uniform(k1, k2, p + n)
        waves = (torch.cos(theta), torch.sin(theta)) if lo == 0 else (torch.cos(theta),)
        for i, wave in enumerate(waves):
            xs = x[:, lo + i * half : lo + i * half + count]
            z = (r * wave).to(x.dtype)
            noisy = xs + xs * (level * z) if multiplicative else xs + level * z
            parts.append(torch.clamp(noisy, 0.0, 1.0))
    return torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]


# --------------------------------------------------------------------------- Poisson (shot noise)
#
# Exact sampling from the same uniforms, with a fixed amount of work per element
# so the bulk runs as one elementwise kernel, and an exact fallback loop for the
# few elements it leaves open:
#   lambda < 10: inversion, F(j) summed up to j = _INVERSION_STEPS - 1 (draw 0);
#                u beyond that (probability < 2e-4) is finished by the fallback.
#   lambda >= 10: PTRS transformed rejection (Hoermann 1993, as numpy uses), with
#                _PTRS_CANDIDATES (U, V) pairs (draws 2j, 2j+1); an element whose
#                candidates were all rejected (probability ~1e-3) goes on with
#                pairs j = _PTRS_CANDIDATES, ... in the fallback.
# Both are exact samplers up to float32 rounding; inversion alone would need
# O(lambda) steps, PTRS alone is not valid below lambda = 10.  The log density
# in the PTRS test uses Stirling's form k*(t - log1p t) with t = (lambda-k)/k,
# which keeps float32 accurate to ~1e-5 where k*log(lambda) - lgamma(k+1) would
# cancel to ~1e-3 for lambda in the hundreds.

_PTRS_MIN_LAMBDA = 10.0
_INVERSION_STEPS = 24
_PTRS_CANDIDATES = 3
_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


def _poisson_log_pmf(k: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """log P(X = k) for X ~ Poisson(lam), k >= 0 integer-valued floats, lam >= 10.

    Stirling's series for log k! with three correction terms: its error is below
    6e-4 at k = 1, 5e-6 at k = 2 and 3e-7 from k = 3 on, and k that small has
    probability below 3e-3 once lam >= 10, so the sampled law is off by < 1e-6.
    """
    k_pos = torch.clamp(k, min=1.0)
    t = (lam - k_pos) / k_pos
    inv = 1.0 / k_pos
    inv2 = inv * inv
    correction = inv * (1.0 / 12.0 - inv2 * (1.0 / 360.0 - inv2 * (1.0 / 1260.0)))
    stirling = -k_pos * (t - torch.log1p(t)) - 0.5 * torch.log(k_pos) - _LOG_SQRT_2PI - correction
    return torch.where(k < 1.0, -lam, stirling)


def _ptrs_constants(lam: torch.Tensor):
    b = 0.931 + 2.53 * torch.sqrt(lam)
    a = -0.059 + 0.02483 * b
    log_inv_alpha = torch.log(1.1239 + 1.1328 / (b - 3.4))
    v_r = 0.9277 - 3.6224 / (b - 2.0)
    return a, b, log_inv_alpha, v_r


def _ptrs_candidate(u, v, lam, a, b, log_inv_alpha, v_r):
    """One PTRS candidate k and whether it is accepted."""
    u = u - 0.5
    us = 0.5 - torch.abs(u)
    k = torch.floor((2.0 * a / us + b) * u + lam + 0.43)
    quick = (us >= 0.07) & (v <= v_r)
    valid = (k >= 0) & ~((us < 0.013) & (v > us))
    lhs = torch.log(v) + log_inv_alpha - torch.log(a / (us * us) + b)
    k_safe = torch.clamp(k, min=0.0)
    return k_safe, quick | (valid & (lhs <= _poisson_log_pmf(k_safe, lam)))


def _inversion(u: torch.Tensor, lam: torch.Tensor, steps: int):
    """Count of j < steps with F(j) < u (the inverse CDF when below steps), and the last F, p."""
    p = torch.exp(-lam)
    cdf = p
    k = (u > cdf).to(torch.float32)
    for j in range(1, steps):
        p = p * lam * (1.0 / j)
        cdf = cdf + p
        k = k + (u > cdf).to(torch.float32)
    return k


def _poisson_bulk(lam, k1, k2, counter, n_elements: int) -> torch.Tensor:
    """Poisson counts (float32), or -1 where the fixed work did not decide."""
    small = lam < _PTRS_MIN_LAMBDA
    u0 = _uniform(k1, k2, counter)
    k_inv = _inversion(u0, lam, _INVERSION_STEPS)
    k_inv = torch.where(k_inv >= _INVERSION_STEPS, -1.0, k_inv)

    lam_big = torch.clamp(lam, min=_PTRS_MIN_LAMBDA)
    constants = _ptrs_constants(lam_big)
    k_ptrs = torch.full_like(lam, -1.0)
    for j in reversed(range(_PTRS_CANDIDATES)):  # the first accepted candidate wins
        u = u0 if j == 0 else _uniform(k1, k2, counter + (2 * j) * n_elements)
        v = _uniform(k1, k2, counter + (2 * j + 1) * n_elements)
        k, accepted = _ptrs_candidate(u, v, lam_big, *constants)
        k_ptrs = torch.where(accepted, k, k_ptrs)
    return torch.where(small, k_inv, k_ptrs)


def _poisson_sample(lam, k1, k2, counter, n_elements: int, first_pair: int = 0) -> torch.Tensor:
    """Exact Poisson counts for 1-D tensors, working only where still needed.

    The eager path (first_pair=0) and the finishing step of the fused kernel
    (first_pair=_PTRS_CANDIDATES: the pairs it already rejected are skipped) draw
    the same uniforms as the fused kernel, so all paths give the same counts.
    """
    out = torch.empty_like(lam)
    small = lam < _PTRS_MIN_LAMBDA
    for idx, is_small in ((torch.nonzero(small).view(-1), True), (torch.nonzero(~small).view(-1), False)):
        if idx.numel() == 0:
            continue
        parts = [t.index_select(0, idx) for t in (lam, k1, k2, counter)]
        if is_small:
            out[idx] = _inversion_to_end(parts[0], _uniform(*parts[1:]))
        else:
            out[idx] = _ptrs_to_end(*parts, n_elements, first_pair)
    return out


def _inversion_to_end(lam: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """The same CDF sum as _inversion, run until it passes every u.

    float32 rounding can stall the sum just below 1, so an element also stops
    once its terms vanish (beyond its mode, p < 1e-30: the tail is below rounding).
    """
    p = torch.exp(-lam)
    cdf = p.clone()
    k = torch.zeros_like(lam)
    open_ = u > cdf
    j = 0
    while bool(open_.any()):
        j += 1
        p = p * lam * (1.0 / j)
        cdf = cdf + p
        k = k + open_.to(k.dtype)
        open_ = open_ & (u > cdf) & ((p > 1e-30) | (j < lam))
    return k


def _ptrs_to_end(lam, k1, k2, counter, n_elements: int, first_pair: int) -> torch.Tensor:
    """PTRS from pair ``first_pair`` on; after the first pair, only the rejected elements go on."""
    state = [lam, *_ptrs_constants(lam), k1, k2, counter]
    out = torch.full_like(lam, -1.0)
    open_idx = None  # None: every element still open, no gather needed
    for j in range(first_pair, _MAX_DRAWS // 2):
        lam_o, a, b, log_inv_alpha, v_r, ka, kb, c = state
        u = _uniform(ka, kb, c + (2 * j) * n_elements)
        v = _uniform(ka, kb, c + (2 * j + 1) * n_elements)
        k, accepted = _ptrs_candidate(u, v, lam_o, a, b, log_inv_alpha, v_r)
        if open_idx is None:
            out = torch.where(accepted, k, out)
            keep = torch.nonzero(~accepted).view(-1)
            open_idx = keep
        else:
            out[open_idx[accepted]] = k[accepted]
            keep = torch.nonzero(~accepted).view(-1)
            open_idx = open_idx.index_select(0, keep)
        if open_idx.numel() == 0:
            return out
        state = [t.index_select(0, keep) for t in state]
    # Each pair is accepted with probability ~0.9: 29 straight rejections do not happen.
    raise RuntimeError("PTRS rejected every candidate pair; this is a bug in robust_csc.")


# --------------------------------------------------------------------------- kernels
#
# Each kernel maps a (B, N) float block of whole images and per-row keys (B, 1)
# to the noisy block.  The same function runs eagerly (chunked by rows) or
# through torch.compile (one fused kernel).


def _gaussian_kernel(x, k1, k2, level):
    return _box_muller(x, k1, k2, level, multiplicative=False)


def _speckle_kernel(x, k1, k2, level):
    return _box_muller(x, k1, k2, level, multiplicative=True)


def _impulse_kernel(x, k1, k2, level):
    # skimage's 's&p' (what imagecorruptions calls): each value independently is
    # flipped with probability `amount`, to salt (1) or pepper (0) with equal odds.
    # One uniform decides both: u < amount/2 salt, amount/2 <= u < amount pepper.
    u = _uniform(k1, k2, _elements(x.shape[1], x.device))
    out = torch.where(u < level, 0.0, torch.clamp(x, 0.0, 1.0))
    return torch.where(u < 0.5 * level, 1.0, out).to(x.dtype)


def _shot_kernel(x, k1, k2, level):
    """Poisson counts of lambda = x * level, or -1 where _finish_shot must finish."""
    lam = torch.clamp(x, min=0.0).to(torch.float32) * level
    return _poisson_bulk(lam, k1, k2, _elements(x.shape[1], x.device), x.shape[1])


def _shot_eager(x, k1, k2, level):
    """Poisson counts of lambda = x * level, all decided (eager: no fixed work to save)."""
    lam = torch.clamp(x, min=0.0).to(torch.float32) * level
    rows, cols = lam.shape
    counts = _poisson_sample(
        lam.reshape(-1),
        k1.expand(rows, cols).reshape(-1),
        k2.expand(rows, cols).reshape(-1),
        _elements(cols, x.device).expand(rows, cols).reshape(-1),
        cols,
    )
    return counts.view(rows, cols)


_KERNELS: dict[str, Callable] = {
    "gaussian": _gaussian_kernel,
    "speckle": _speckle_kernel,
    "impulse": _impulse_kernel,
    "shot": _shot_kernel,
}
_EAGER_KERNELS: dict[str, Callable] = {**_KERNELS, "shot": _shot_eager}

_compiled_kernels: dict[str, Callable] = {}
_compile_failed: set[str] = set()


def _run_compiled(kind: str, flat, k1, k2, level_t) -> torch.Tensor:
    """The kernel through torch.compile (or eagerly if compiling failed).

    The batch dimension is marked dynamic up front and the image size stays
    static: one compilation per image size serves every batch size, and the
    inner loop over an image's values keeps static, fully vectorised code.
    """
    for t in (flat, k1, k2):
        torch._dynamo.maybe_mark_dynamic(t, 0)
    return _run_kernel(kind, flat, k1, k2, level_t)


def _run_kernel(kind: str, *args) -> torch.Tensor:
    """Run one kernel through torch.compile, or eagerly if compiling failed."""
    kernel = _KERNELS[kind]
    if kind not in _compile_failed:
        fn = _compiled_kernels.get(kind)
        if fn is None:
            fn = _compiled_kernels[kind] = torch.compile(kernel, dynamic=False, fullgraph=True)
        try:
            return fn(*args)
        except Exception as exc:  # compilation needs a C++ compiler (CPU) or triton (GPU)
            _compile_failed.add(kind)
            warnings.warn(
                f"torch.compile failed for {kind} noise ({type(exc).__name__}: {exc}); using the eager kernel.",
                RuntimeWarning,
                stacklevel=4,
            )
    return _EAGER_KERNELS[kind](*args)


# --------------------------------------------------------------------------- public entry


def _image_keys(seed: int, kind: str, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Two 32-bit keys per image from (seed, kind, global index), computed on index's device."""
    if isinstance(seed, bool) or not isinstance(seed, (numbers.Integral, np.integer)) or int(seed) < 0:
        raise RobustCSCError(f"The seed {seed!r} is invalid; use a non-negative integer.")
    name_code = zlib.crc32((kind + "_noise").encode("utf-8"))
    s = [int(w) for w in np.random.SeedSequence((int(seed), name_code)).generate_state(4, np.uint32)]
    low, high = index & _M32, index >> 32
    k1 = _mix(_mix(low ^ s[0]) ^ high ^ s[1])
    k2 = _mix(_mix(low ^ s[2]) ^ high ^ s[3])
    return k1.view(-1, 1), k2.view(-1, 1)


def _check_indices(indices: object, batch: int, device: torch.device) -> torch.Tensor:
    if isinstance(indices, (torch.Tensor, np.ndarray)):
        kind = indices.dtype.kind if isinstance(indices, np.ndarray) else None
        if (kind is not None and kind not in "iu") or (
            isinstance(indices, torch.Tensor)
            and (indices.is_floating_point() or indices.is_complex() or indices.dtype == torch.bool)
        ):
            raise RobustCSCError(f"indices must be integers, got dtype {indices.dtype}; pass a long tensor.")
        index = torch.as_tensor(indices).reshape(-1).to(device=device, dtype=torch.int64)
    else:
        raw = list(indices)  # type: ignore[call-overload]
        if any(isinstance(i, bool) or not isinstance(i, (numbers.Integral, np.integer)) for i in raw):
            raise RobustCSCError("indices must be integers (global image positions); pass ints.")
        if any(not 0 <= int(i) < 2**63 for i in raw):
            raise RobustCSCError("indices must be non-negative (global image positions); pass ints >= 0.")
        index = torch.tensor([int(i) for i in raw], dtype=torch.int64, device=device)
    if index.numel() != batch:
        raise RobustCSCError(f"Got {index.numel()} indices for a batch of {batch}; pass one global index per image.")
    if index.numel() and bool((index < 0).any()):
        raise RobustCSCError("indices must be non-negative (global image positions); pass ints >= 0.")
    return index


def add_noise(
    x: torch.Tensor,
    kind: str,
    level: float,
    seed: int,
    indices: torch.Tensor | Sequence[int],
    *,
    compiled: bool = False,
) -> torch.Tensor:
    """Add pixel noise to a float batch ``x`` (B, C, H, W) in [0, 1]; returns a new tensor in [0, 1].

    Definitions (as in CIFAR-10-C / ImageNet-C):
      gaussian: x + N(0, level), clipped;  shot: poisson(x * level) / level, clipped;
      impulse: each value replaced with probability ``level`` by 1 or 0 (equal odds);
      speckle: x + x * N(0, level), clipped.
    Image ``b`` draws its uniforms from a hash of (two keys derived from seed,
    kind and ``indices[b]``, element position, draw number), so its noise does
    not depend on the batch size, the order or the chunking; the integer
    decisions (which values flip, Poisson counts) and the uniforms are the same
    on every device, transcendental functions may differ by float rounding.

    ``compiled=True`` runs a fused kernel built by torch.compile, once per noise
    kind, image size, dtype and device in a process (any batch size reuses it;
    torch's on-disk cache shortens the build in later processes); if compiling
    fails it warns once and runs eagerly.  Both paths agree to float rounding
    (impulse and shot exactly), so keep one of them throughout a run when
    bitwise reproducibility matters.
    """
    level = check_noise_level(kind, level)
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() != 4:
        raise RobustCSCError(
            f"x must be a float tensor of shape (B, C, H, W), got "
            f"{getattr(x, 'dtype', type(x).__name__)} {tuple(getattr(x, 'shape', ()))}; convert it first."
        )
    index = _check_indices(indices, x.shape[0], x.device)
    n_elements = math.prod(x.shape[1:])
    if n_elements * _MAX_DRAWS >= 2**32:
        raise RobustCSCError(
            f"Images of {n_elements} values are too large for add_noise (at most {2**32 // _MAX_DRAWS - 1}); "
            "split them into tiles."
        )
    if x.shape[0] == 0 or n_elements == 0:
        return x.clone()
    if kind in ("gaussian", "speckle") and level == 0:
        return torch.clamp(x, 0.0, 1.0)

    k1, k2 = _image_keys(seed, kind, index)
    work_dtype = torch.promote_types(x.dtype, torch.float32)
    flat = x.reshape(x.shape[0], n_elements).to(work_dtype)
    # A 0-d tensor, not a float, so that a compiled kernel is not rebuilt per level.
    level_t = torch.tensor(level, dtype=torch.float32, device=x.device)

    if compiled:
        out = _run_compiled(kind, flat, k1, k2, level_t)
    else:
        rows = max(1, _EAGER_CHUNK // n_elements)
        out = torch.cat(
            [
                _EAGER_KERNELS[kind](flat[r : r + rows], k1[r : r + rows], k2[r : r + rows], level_t)
                for r in range(0, flat.shape[0], rows)
            ]
        )

    if kind == "shot":
        if compiled:
            _finish_shot(out, flat, k1, k2, level, n_elements)
        out = torch.clamp(out / level, 0.0, 1.0)
    return out.reshape(x.shape).to(x.dtype)


def _finish_shot(counts, flat, k1, k2, level: float, n_elements: int) -> None:
    """Decide, in place, the Poisson counts the fused kernel left open (-1)."""
    open_rows, open_cols = torch.nonzero(counts < 0, as_tuple=True)
    if open_rows.numel():
        lam = torch.clamp(flat[open_rows, open_cols], min=0.0).to(torch.float32) * level
        counts[open_rows, open_cols] = _poisson_sample(
            lam, k1[open_rows, 0], k2[open_rows, 0], open_cols.to(torch.int64), n_elements, _PTRS_CANDIDATES
        ).to(counts.dtype)
