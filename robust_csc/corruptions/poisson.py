"""Exact Poisson sampling on torch tensors from counter-based uniforms (shot noise).

Exact sampling from the same uniforms, with a fixed amount of work per element
so the bulk runs as one elementwise kernel, and an exact fallback loop for the
few elements it leaves open:
  lambda < 10: inversion, F(j) summed up to j = INVERSION_STEPS - 1 (draw 0);
               u beyond that (probability < 2e-4) is finished by the fallback.
  lambda >= 10: PTRS transformed rejection (Hoermann 1993, as numpy uses), with
               PTRS_CANDIDATES (U, V) pairs (draws 2j, 2j+1); an element whose
               candidates were all rejected (probability ~1e-3) goes on with
               pairs j = PTRS_CANDIDATES, ... in the fallback.
Both are exact samplers up to float32 rounding; inversion alone would need
O(lambda) steps, PTRS alone is not valid below lambda = 10.  The log density
in the PTRS test uses Stirling's form k*(t - log1p t) with t = (lambda-k)/k,
which keeps float32 accurate to ~1e-5 where k*log(lambda) - lgamma(k+1) would
cancel to ~1e-3 for lambda in the hundreds.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

from robust_csc.corruptions.counter_rng import MAX_DRAWS, draw, to_uniform

PTRS_MIN_LAMBDA = 10.0
INVERSION_STEPS = 24
PTRS_CANDIDATES = 3
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
    # log(v) + log(1/alpha) - log(a / us^2 + b), with one log and one division.
    us2 = us * us
    lhs = torch.log(v * us2 / (a + b * us2)) + log_inv_alpha
    k_safe = torch.clamp(k, min=0.0)
    return k_safe, quick | (valid & (lhs <= _poisson_log_pmf(k_safe, lam)))


def _inversion(u: torch.Tensor, lam: torch.Tensor, steps: int):
    """Count of j < steps with F(j) < u (the inverse CDF when below steps)."""
    p = torch.exp(-lam)
    cdf = p
    k = (u > cdf).to(torch.float32)
    for j in range(1, steps):
        p = p * lam * (1.0 / j)
        cdf = cdf + p
        k = k + (u > cdf).to(torch.float32)
    return k


def poisson_bulk(lam: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
    """Poisson counts (float32) from each element's base hash, or -1 where the fixed work did not decide."""
    small = lam < PTRS_MIN_LAMBDA
    u0 = to_uniform(base)
    k_inv = _inversion(u0, lam, INVERSION_STEPS)
    k_inv = torch.where(k_inv >= INVERSION_STEPS, -1.0, k_inv)

    lam_big = torch.clamp(lam, min=PTRS_MIN_LAMBDA)
    constants = _ptrs_constants(lam_big)
    k_ptrs = torch.full_like(lam, -1.0)
    for j in reversed(range(PTRS_CANDIDATES)):  # the first accepted candidate wins
        u = to_uniform(draw(base, 2 * j)) if j else u0
        v = to_uniform(draw(base, 2 * j + 1))
        k, accepted = _ptrs_candidate(u, v, lam_big, *constants)
        k_ptrs = torch.where(accepted, k, k_ptrs)
    return torch.where(small, k_inv, k_ptrs)


def poisson_sample(lam: torch.Tensor, base: torch.Tensor, first_pair: int = 0) -> torch.Tensor:
    """Exact Poisson counts for 1-D tensors of rates and base hashes, working only where still needed.

    The eager path (first_pair=0) and the finishing step of the fused kernel
    (first_pair=PTRS_CANDIDATES: the pairs it already rejected are skipped) use
    the same draws as the fused kernel, so all paths give the same counts.
    """
    out = torch.empty_like(lam)
    small = lam < PTRS_MIN_LAMBDA
    for idx, is_small in ((torch.nonzero(small).view(-1), True), (torch.nonzero(~small).view(-1), False)):
        if idx.numel() == 0:
            continue
        lam_part, base_part = lam.index_select(0, idx), base.index_select(0, idx)
        if is_small:
            out[idx] = _inversion_to_end(lam_part, to_uniform(base_part))
        else:
            out[idx] = _ptrs_to_end(lam_part, base_part, first_pair)
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


def _ptrs_to_end(lam: torch.Tensor, base: torch.Tensor, first_pair: int) -> torch.Tensor:
    """PTRS from pair ``first_pair`` on; after the first pair, only the rejected elements go on."""
    state = [lam, *_ptrs_constants(lam), base]
    out = torch.full_like(lam, -1.0)
    open_idx = None  # None: every element still open, no gather needed
    for j in range(first_pair, MAX_DRAWS // 2):
        lam_o, a, b, log_inv_alpha, v_r, base_o = state
        u = to_uniform(draw(base_o, 2 * j))
        v = to_uniform(draw(base_o, 2 * j + 1))
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


# --------------------------------------------------------------------------- 8-bit inputs: table inversion
#
# Images read from 8-bit files hold rates lam = c * q / 255 for q in 0..255, so
# each call's rates take at most 256 values.  For those, inversion against
# tabulated distributions is exact and needs no transcendental function per
# value: with u < 1/2, k = #{j : F(q, j) < u}; with u > 1/2 and w = 1 - u (exact
# in float32), k = #{j : S(q, j) > w}, S = 1 - F the survival function (an
# inversion from the top, which keeps the upper tail as precise as the lower).
# A guide table (after Chen & Asau) gives each value a start index from the
# bucket of min(u, w), read from its float32 bits: buckets are 2^-5 wide in
# relative terms, so the far tails are as finely resolved as the middle.  A
# bucket spans at most a count or two (measured when the tables are built), so
# the guide also stores the table values just after each start, and a value's
# count is its bucket's start plus one or two comparisons: one 32-bit gather
# (start and the first value packed), no transcendental function, in one fused
# elementwise kernel.  Comparisons run on float bits as integers, which order
# like the non-negative floats they encode, relative to the bucket's first bits
# (clamped to one past either end of the bucket, which keeps every outcome), so
# that a start and a key fit one word and the table (1.5 MB) stays in cache.

#: Largest photon scale c that gets tables (256 x 2 x 737 x (1 + steps) words, plus
#: the CDF); above it, and for levels whose buckets span too many counts, PTRS runs.
TABLE_MAX_LEVEL = 2000.0
#: Most comparisons per value (the largest count span of a bucket a table may have).
MAX_GUIDE_STEPS = 3
GRID_LEVELS = 255
_MANTISSA_BITS = 5
_SHIFT = 23 - _MANTISSA_BITS
_BITS_MIN = int(np.float32(2.0**-24).view(np.int32))  # the smallest uniform
_BUCKETS = ((int(np.float32(0.5).view(np.int32)) - _BITS_MIN) >> _SHIFT) + 1
#: Starts are packed below this (c + 8 sqrt(c) + 16 < 4096 for c <= TABLE_MAX_LEVEL).
_START_BITS = 12
_START_LIMIT = 1 << _START_BITS


def _bucket_starts() -> np.ndarray:
    """The smallest float32 of each bucket, and one past the last, as float64."""
    bits = _BITS_MIN + (np.arange(_BUCKETS + 1, dtype=np.int64) << _SHIFT)
    return bits.astype(np.int32).view(np.float32).astype(np.float64)


class PoissonTable:
    """Guided inversion tables of Poisson(c * q / 255), q = 0..255, on one device.

    For each (q, side, bucket): side 0 inverts the CDF F (u < 1/2), side 1 the
    survival function S (u > 1/2, with w = 1 - u).  With r = the bits of w less
    the bucket's first bits, a value's count is start + #{i < steps: key_i < r}
    on side 0 and start + #{i < steps: key_i > r} on side 1, where key_i is the
    bits of F(start + i) (or S(start + i)) less the bucket's first bits,
    clamped to [-1, 2^_SHIFT]: F < u and S > w, as integers.
    packed: (256, 2, _BUCKETS) int32, (key_0 + 1) * 4096 + start; extra:
    (steps - 1, 256, 2, _BUCKETS) int32, key_1 ...; steps is the largest count
    span of a bucket; usable is False when it exceeds MAX_GUIDE_STEPS.
    """

    def __init__(self, level: float, device: torch.device):
        import scipy.stats  # lazily: only shot noise needs it

        columns = int(math.ceil(level + 8.0 * math.sqrt(level) + 16.0))
        assert columns <= _START_LIMIT, "Poisson table too long to pack"
        rates = np.arange(GRID_LEVELS + 1, dtype=np.float64)[:, None] * (level / GRID_LEVELS)
        counts = np.arange(columns)[None, :]
        cdf = scipy.stats.poisson.cdf(counts, rates).astype(np.float32)
        sf = scipy.stats.poisson.sf(counts, rates).astype(np.float32)
        # Every row must end in the tail beyond any uniform: F = 1 and S < 2^-24.
        assert (cdf[:, -1] == 1.0).all() and (sf[:, -1] < 2.0**-24).all(), "Poisson table too short"
        values = np.stack([cdf, -sf], axis=1).astype(np.float64)  # (256, 2, K), rows ascending
        bounds = _bucket_starts()
        # Side 0: u in [b_i, b_i+1), t = u; side 1: w in [b_i, b_i+1), t = -w in (-b_i+1, -b_i].
        lowest = (bounds[:-1], -bounds[1:])
        highest = (np.minimum(bounds[1:], 0.5), -bounds[:-1])
        start = np.empty((GRID_LEVELS + 1, 2, _BUCKETS), dtype=np.int64)
        span = 0
        for q in range(GRID_LEVELS + 1):
            for side in (0, 1):
                row = values[q, side]
                start[q, side] = np.searchsorted(row, lowest[side], side="left")
                end = np.searchsorted(row, highest[side], side="left")
                span = max(span, int((end - start[q, side]).max()))
        self.level, self.steps = level, max(span, 1)
        self.usable = span <= MAX_GUIDE_STEPS
        bits = np.stack([cdf.view(np.int32), sf.view(np.int32)], axis=1).astype(np.int64)  # (256, 2, K)
        following = np.minimum(start[None] + np.arange(self.steps)[:, None, None, None], columns - 1)
        bucket_bits = _BITS_MIN + (np.arange(_BUCKETS, dtype=np.int64) << _SHIFT)
        keys = np.take_along_axis(np.broadcast_to(bits, (self.steps, *bits.shape)), following, axis=-1)
        keys = np.clip(keys - bucket_bits, -1, 1 << _SHIFT)
        self.packed = torch.from_numpy(((keys[0] + 1) * _START_LIMIT + start).astype(np.int32)).to(device)
        self.extra = torch.from_numpy(keys[1:].astype(np.int32)).to(device)


@functools.lru_cache(maxsize=16)
def poisson_table(level: float, device: torch.device) -> PoissonTable:
    """The tables for photon scale ``level`` on ``device`` (cached: every batch of a cell asks again)."""
    return PoissonTable(level, device)


def grid_index(x: torch.Tensor) -> torch.Tensor:
    """q = round(255 x) as int32 where x is exactly q / 255 (in x's dtype), else -1."""
    q = torch.round(torch.clamp(x, 0.0, 1.0) * GRID_LEVELS)
    return torch.where((q / GRID_LEVELS) == x, q, -1.0).to(torch.int32)


def table_counts(q: torch.Tensor, u: torch.Tensor, packed: torch.Tensor, extra: torch.Tensor) -> torch.Tensor:
    """Poisson counts (float32) by guided table inversion from uniforms u; -1 where q < 0 (off the grid).

    packed and extra are a usable PoissonTable's tables (any device); q (int32)
    and u share a shape.
    """
    lower = u < 0.5
    w = torch.where(lower, u, 1.0 - u)
    # Positive floats order like their bits: the bucket is a float32 exponent and mantissa prefix.
    bits = w.view(torch.int32) - _BITS_MIN
    bucket = torch.clamp(bits >> _SHIFT, 0, _BUCKETS - 1)
    offset = bits & ((1 << _SHIFT) - 1)  # w's bits within its bucket
    index = (torch.clamp(q, min=0) * 2 + (~lower).to(torch.int32)) * _BUCKETS + bucket
    entry = packed.view(-1)[index]
    key = (entry >> _START_BITS) - 1
    k = (entry & (_START_LIMIT - 1)).to(torch.float32) + _counted(key, offset, lower)
    for step in range(extra.shape[0]):
        k = k + _counted(extra[step].view(-1)[index], offset, lower)
    return torch.where(q < 0, -1.0, k)


def _counted(key: torch.Tensor, offset: torch.Tensor, lower: torch.Tensor) -> torch.Tensor:
    """1.0 where the table value lies below u: F < u (key < offset), or S > w (key > offset)."""
    return torch.where(lower, key < offset, key > offset).to(torch.float32)
