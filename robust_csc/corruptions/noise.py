"""Pixel noise on batched torch tensors at any continuous level, seeded per image.

Randomness is counter-based: every uniform is a hash of (per-image key, element,
draw), so an image's noise never depends on the batch it travels in, its
position there, or the chunking of the work, and the whole batch is drawn in a
few elementwise passes (one fused kernel with ``compiled=True``).  The kernels
are torch ops, so the same code runs on CUDA tensors.  The hashing lives in
counter_rng.py, the exact Poisson samplers of shot noise (and their tables,
built once per level with scipy) in poisson.py.
"""

from __future__ import annotations

import logging
import math
import numbers
import warnings
from typing import Callable, Sequence

import numpy as np
import torch

from robust_csc.corruptions.counter_rng import base_hash, draw, element_counters, image_keys, seed_tensor, to_uniform
from robust_csc.corruptions.poisson import (
    PTRS_CANDIDATES,
    TABLE_MAX_LEVEL,
    grid_index,
    poisson_bulk,
    poisson_sample,
    poisson_table,
    table_counts,
)
from robust_csc.errors import RobustCSCError

NOISE_KINDS: tuple[str, ...] = ("gaussian", "shot", "impulse", "speckle")

#: Largest shot-noise photon scale: beyond it float32 photon counts lose integers,
#: and the noise (std <= 1/sqrt(c)) is below a thousandth of the range anyway.
MAX_SHOT_LEVEL = 1e6

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


def _box_muller(x, k1, k2, level, multiplicative: bool) -> torch.Tensor:
    """x + level * z (or x + x * level * z), clipped, with z ~ N(0, 1) per value.

    Box-Muller on pairs: element p and element p + N//2 share the draws 0 and 1
    of counter p, getting r cos(theta) and r sin(theta); with N odd the last
    element uses the draws of counter N-1 alone.  Every value is a function of
    its image's keys and its position only.
    """
    n = x.shape[1]
    half = n // 2
    parts = []
    for lo, count in ((0, half), (2 * half, n - 2 * half)):
        if count == 0:
            continue
        p = torch.arange(lo, lo + count, device=x.device, dtype=torch.int32).view(1, count)
        base = base_hash(k1, k2, p)
        r = torch.sqrt(-2.0 * torch.log(to_uniform(base)))
        theta = (2.0 * math.pi) * to_uniform(draw(base, 1))
        waves = (torch.cos(theta), torch.sin(theta)) if lo == 0 else (torch.cos(theta),)
        for i, wave in enumerate(waves):
            xs = x[:, lo + i * half : lo + i * half + count]
            z = (r * wave).to(x.dtype)
            noisy = xs + xs * (level * z) if multiplicative else xs + level * z
            parts.append(torch.clamp(noisy, 0.0, 1.0))
    return torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]


# --------------------------------------------------------------------------- kernels
#
# Each kernel maps a (B, N) float block of whole images and per-row keys (B, 1)
# to the noisy block.  The same function runs eagerly (keys derived once, then
# chunked by rows) or through torch.compile, where _keyed derives the keys from
# the global indices inside the one fused kernel.


def _gaussian_kernel(x, k1, k2, level):
    return _box_muller(x, k1, k2, level, multiplicative=False)


def _speckle_kernel(x, k1, k2, level):
    return _box_muller(x, k1, k2, level, multiplicative=True)


def _element_bases(x, k1, k2):
    """Draw 0 of every element of a (B, N) block of whole images with row keys (B, 1)."""
    return base_hash(k1, k2, element_counters(x.shape[1], x.device))


def _impulse_kernel(x, k1, k2, level):
    # skimage's 's&p' (what imagecorruptions calls): each value independently is
    # flipped with probability `amount`, to salt (1) or pepper (0) with equal odds.
    # One uniform decides both: u < amount/2 salt, amount/2 <= u < amount pepper.
    u = to_uniform(_element_bases(x, k1, k2))
    out = torch.where(u < level, 0.0, torch.clamp(x, 0.0, 1.0))
    return torch.where(u < 0.5 * level, 1.0, out).to(x.dtype)


def _shot_rates(x, level):
    return torch.clamp(x, min=0.0).to(torch.float32) * level


def _shot_kernel(x, k1, k2, level):
    """Poisson counts of lambda = x * level, or -1 where _finish_shot must finish."""
    return poisson_bulk(_shot_rates(x, level), _element_bases(x, k1, k2))


def _shot_table_kernel(x, k1, k2, packed, extra, level):
    """Shot-noise values of 8-bit x by table inversion, -1 where x is off the 8-bit grid; and how many are, per row.

    (Counted per row, so the count shares the values' loop over each image instead of a second pass.)
    """
    u = to_uniform(_element_bases(x, k1, k2))
    q = grid_index(x)
    counts = table_counts(q, u, packed, extra)
    return torch.where(q < 0, -1.0, torch.clamp(counts / level, 0.0, 1.0)), (q < 0).sum(dim=1)


def _shot_eager(x, k1, k2, level):
    """Poisson counts of lambda = x * level, all decided (eager: no fixed work to save)."""
    lam = _shot_rates(x, level)
    base = _element_bases(x, k1, k2)
    return poisson_sample(lam.reshape(-1), base.reshape(-1)).view(lam.shape)


_KERNELS: dict[str, Callable] = {
    "gaussian": _gaussian_kernel,
    "speckle": _speckle_kernel,
    "impulse": _impulse_kernel,
    "shot": _shot_kernel,
    "shot-table": _shot_table_kernel,
}
_EAGER_KERNELS: dict[str, Callable] = {**_KERNELS, "shot": _shot_eager}

#: Inductor options per kernel.  The shot table kernel is small, but its shared
#: hash and gather index would be written to memory (inductor's default "realize"
#: thresholds) and every gather bounds-checked; its indices are clamped in range.
_COMPILE_OPTIONS: dict[str, dict] = {
    "shot-table": {
        "realize_opcount_threshold": 10**4,
        "realize_cpu_opcount_threshold": 10**4,
        "realize_reads_threshold": 10**4,
        "realize_opusers_threshold": 10**4,
        "assert_indirect_indexing": False,
    },
}
#: Kernels run on keys from their own small compiled kernel: the shot table kernel's
#: raised realize thresholds would inline the key derivation into each of its
#: gathers (measured: a 330 s build instead of 4 s).
_SEPARATE_KEYS = frozenset({"shot-table"})
_compiled_kernels: dict[str, Callable] = {}
_compile_failed: set[str] = set()


def _keyed(kind: str) -> Callable:
    """The kernel of kind on (x, index (B, 1), seed words, ...): keys derived in the kernel itself."""
    kernel = _KERNELS[kind]

    def keyed_kernel(x, index, words, *rest):
        return kernel(x, *image_keys(index, words), *rest)

    return keyed_kernel


class _NoCudaRuntimeNote(logging.Filter):
    """Drops torch's "No CUDA runtime is found, using CUDA_HOME=..." (a CUDA toolkit on a machine without a GPU).

    Inductor looks for CUDA while it builds a CPU kernel and logs this at WARNING on every such machine; the
    kernels here run where the images are, so it never concerns them, and it must not reach a user's console.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("No CUDA runtime is found")


def _quiet_cuda_home() -> None:
    logger = logging.getLogger("torch.utils.cpp_extension")
    if not any(isinstance(f, _NoCudaRuntimeNote) for f in logger.filters):
        logger.addFilter(_NoCudaRuntimeNote())


def _compiled(name: str, fn: Callable) -> Callable:
    """fn through torch.compile, built once per process (and per input size) under name."""
    compiled = _compiled_kernels.get(name)
    if compiled is None:
        _quiet_cuda_home()
        compiled = _compiled_kernels[name] = torch.compile(
            fn, dynamic=False, fullgraph=True, options=_COMPILE_OPTIONS.get(name)
        )
    return compiled


def _mark_batch_dynamic(*tensors: torch.Tensor) -> None:
    # Marked up front so that the first build serves every batch size; the image
    # size stays static, so the inner loop over an image's values keeps static,
    # fully vectorised code.
    for t in tensors:
        torch._dynamo.maybe_mark_dynamic(t, 0)


def _run_compiled(kind: str, flat, index, words, *rest) -> torch.Tensor:
    """The kernel through torch.compile, or eagerly if compiling failed (it then warns once per kind)."""
    if kind not in _compile_failed:
        _mark_batch_dynamic(flat, index)
        try:
            if kind in _SEPARATE_KEYS:
                keys = _compiled("keys", image_keys)(index, words)
                _mark_batch_dynamic(*keys)
                return _compiled(kind, _KERNELS[kind])(flat, *keys, *rest)
            return _compiled(kind, _keyed(kind))(flat, index, words, *rest)
        except Exception as exc:  # compilation needs a C++ compiler (CPU) or triton (GPU)
            _compile_failed.add(kind)
            warnings.warn(
                f"torch.compile failed for {kind} noise ({type(exc).__name__}: {exc}); using the eager kernel.",
                RuntimeWarning,
                stacklevel=3,  # the caller of add_noise (one level deeper for shot)
            )
    return _run_eager(kind, flat, index, words, *rest)


def _run_eager(kind: str, flat, index, words, *rest) -> torch.Tensor:
    """The kernel eagerly, on chunks of whole images (intermediates stay in cache)."""
    k1, k2 = image_keys(index, words)
    rows = max(1, _EAGER_CHUNK // flat.shape[1])
    kernel = _EAGER_KERNELS[kind]
    chunks = [kernel(flat[r : r + rows], k1[r : r + rows], k2[r : r + rows], *rest) for r in range(0, len(flat), rows)]
    if len(chunks) == 1:
        return chunks[0]
    if isinstance(chunks[0], tuple):  # (values, count): the shot table kernel
        return torch.cat([c[0] for c in chunks]), torch.cat([c[1] for c in chunks])
    return torch.cat(chunks)


# --------------------------------------------------------------------------- public entry


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
    index = _check_indices(indices, x.shape[0], x.device).view(-1, 1)
    words = seed_tensor(seed, kind, x.device)
    n_elements = math.prod(x.shape[1:])
    if n_elements >= 2**31:
        raise RobustCSCError(
            f"Images of {n_elements} values are too large for add_noise (at most {2**31 - 1}); "
            "split them into tiles."
        )
    if x.shape[0] == 0 or n_elements == 0:
        return x.clone()
    if kind in ("gaussian", "speckle") and level == 0:
        return torch.clamp(x, 0.0, 1.0)

    work_dtype = torch.promote_types(x.dtype, torch.float32)
    flat = x.reshape(x.shape[0], n_elements).to(work_dtype)
    # A 0-d tensor, not a float, so that a compiled kernel is not rebuilt per level.
    level_t = torch.tensor(level, dtype=torch.float32, device=x.device)

    if kind == "shot":
        out = _shot_noise(flat, index, words, level, level_t, compiled)
    else:
        run = _run_compiled if compiled else _run_eager
        out = run(kind, flat, index, words, level_t)
    return out.reshape(x.shape).to(x.dtype)


def _shot_noise(flat, index, words, level: float, level_t, compiled: bool) -> torch.Tensor:
    """poisson(flat * level) / level, clipped: table inversion for 8-bit values, PTRS for the others.

    Which sampler an element gets depends only on its own value and the level,
    so an image's noise never depends on the batch around it.
    """
    run = _run_compiled if compiled else _run_eager
    table = poisson_table(level, flat.device) if level <= TABLE_MAX_LEVEL else None
    if table is None or not table.usable:
        return torch.clamp(_exact_counts(flat, index, words, level, level_t, compiled) / level, 0.0, 1.0)
    out, n_off_grid = run("shot-table", flat, index, words, table.packed, table.extra, level_t)
    n_off_grid = int(n_off_grid.sum())
    if n_off_grid == 0:
        return out
    off_grid = out < 0
    if compiled and n_off_grid * 8 > off_grid.numel():  # many: PTRS's fused kernel on the whole batch
        exact = torch.clamp(_exact_counts(flat, index, words, level, level_t, compiled) / level, 0.0, 1.0)
        return torch.where(off_grid, exact, out)
    rows, cols = torch.nonzero(off_grid, as_tuple=True)
    counts = _exact_counts_at(rows, cols, flat, index, words, level)
    out[rows, cols] = torch.clamp(counts / level, 0.0, 1.0).to(out.dtype)
    return out


def _exact_counts(flat, index, words, level: float, level_t, compiled: bool) -> torch.Tensor:
    """Poisson counts of flat * level for every element by inversion (lam < 10) and PTRS."""
    if not compiled:
        return _run_eager("shot", flat, index, words, level_t)
    counts = _run_compiled("shot", flat, index, words, level_t)
    _finish_shot(counts, flat, index, words, level)
    return counts


def _finish_shot(counts, flat, index, words, level: float) -> None:
    """Decide, in place, the Poisson counts the fused kernel left open (-1)."""
    rows, cols = torch.nonzero(counts < 0, as_tuple=True)
    if rows.numel():
        counts[rows, cols] = _exact_counts_at(rows, cols, flat, index, words, level, PTRS_CANDIDATES).to(counts.dtype)


def _exact_counts_at(rows, cols, flat, index, words, level: float, first_pair: int = 0) -> torch.Tensor:
    """Exact Poisson counts of the elements at (rows, cols), from their own draws (PTRS from pair first_pair)."""
    k1, k2 = image_keys(index, words)  # per row, then gathered: rows may hold every element
    base = base_hash(k1[rows, 0], k2[rows, 0], cols.to(torch.int32))
    return poisson_sample(_shot_rates(flat[rows, cols], level), base, first_pair)
