"""Counter-based random numbers in torch: every value is a hash of (image keys, element, draw).

Hand-written because torch's generators are stateful streams (one generator per
image was the old, slow design) and torch has no keyed counter-based RNG.  So an
image's draws never depend on the batch it travels in, its position there, or
the chunking of the work, and a whole batch is drawn in elementwise passes that
torch.compile fuses.

Integers are 32-bit words held in int32 tensors, so SIMD lanes stay 32 bits wide
(int64 halved the lanes and doubled the cost).  Products wrap modulo 2^32 (two's
complement, as every torch backend multiplies int32), and ``>>`` is made a
logical shift by masking off the copied sign bits.
"""

from __future__ import annotations

import functools
import numbers
import zlib

import numpy as np
import torch

from robust_csc.errors import RobustCSCError

M32 = 0xFFFFFFFF
#: Draws per element (salts are precomputed for draws 0 .. MAX_DRAWS - 1).
MAX_DRAWS = 64


def int32_word(word: int) -> int:
    """The int32 value with the bits of a 32-bit word (a Python int in [0, 2^32))."""
    word &= M32
    return word - (1 << 32) if word >= 1 << 31 else word


def mix(x: torch.Tensor) -> torch.Tensor:
    """lowbias32 (C. Wellons' xorshift-multiply hash) on int32 words."""
    x = x ^ ((x >> 16) & 0xFFFF)
    x = x * 0x21F0AAAD
    x = x ^ ((x >> 15) & 0x1FFFF)
    x = x * 0x735A2D97
    return x ^ ((x >> 15) & 0x1FFFF)


def mix_word(word: int) -> int:
    """lowbias32 on a Python int (a 32-bit word): the draw salts, and the reference the tests check mix against."""
    word &= M32
    word ^= word >> 16
    word = (word * 0x21F0AAAD) & M32
    word ^= word >> 15
    word = (word * 0x735A2D97) & M32
    return word ^ (word >> 15)


#: Salt of draw d >= 1 of an element: its d-th value is mix(base ^ salt[d]).
DRAW_SALTS = tuple(int32_word(mix_word(0x9E3779B9 * d)) for d in range(MAX_DRAWS))


def base_hash(k1: torch.Tensor, k2: torch.Tensor, counter: torch.Tensor) -> torch.Tensor:
    """Draw 0 of each element: one round on counter * (k1 | 1) + k2.

    The odd per-image multiplier keeps the map from counters bijective and makes
    two images' inputs unrelated progressions, so their streams never line up by
    a shift (as mix(counter ^ key) alone would); it costs one multiply where a
    second keyed round cost five operations.
    """
    return mix(counter * (k1 | 1) + k2)


def draw(base: torch.Tensor, d: int) -> torch.Tensor:
    """Draw d of each element: one more round on its base hash (d = 0 is the base itself)."""
    return base if d == 0 else mix(base ^ DRAW_SALTS[d])


def to_uniform(h: torch.Tensor) -> torch.Tensor:
    """float32 uniforms in (0, 1) on the grid (j + 1/2) / 2^23 from the top 23 bits of h.

    23 bits because 2j + 1 must be exact in float32; the grid is symmetric about
    1/2 and never reaches 0 or 1 (log and comparisons are safe).
    """
    return (((h >> 9) & 0x7FFFFF) * 2 + 1).to(torch.float32) * (2.0**-24)


def element_counters(n: int, device: torch.device) -> torch.Tensor:
    """Element positions 0..n-1 within an image, as a (1, n) row of int32 counters."""
    return torch.arange(n, device=device, dtype=torch.int32).view(1, n)


def seed_tensor(seed: int, kind: str, device: torch.device) -> torch.Tensor:
    """The four int32 seed words of (seed, kind) as a tensor on device: the input image_keys mixes with."""
    if isinstance(seed, bool) or not isinstance(seed, (numbers.Integral, np.integer)) or int(seed) < 0:
        raise RobustCSCError(f"The seed {seed!r} is invalid; use a non-negative integer.")
    return torch.tensor(seed_words(int(seed), kind), dtype=torch.int32, device=device)


def image_keys(index: torch.Tensor, words: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Two int32 keys per global image index (int64, any shape, < 2^63) from seed_tensor's words.

    Plain torch ops, so the compiled kernels derive their keys themselves: a
    dozen separate ops on a small batch cost more than the noise of its images.
    """
    low = index & M32
    low = torch.where(low >= 2**31, low - 2**32, low).to(torch.int32)  # the same 32 bits, as int32
    high = (index >> 32).to(torch.int32)
    k1 = mix(mix(low ^ words[0]) ^ high ^ words[1])
    k2 = mix(mix(low ^ words[2]) ^ high ^ words[3])
    return k1, k2


@functools.lru_cache(maxsize=256)
def seed_words(seed: int, kind: str) -> tuple[int, ...]:
    """Four int32 words from (seed, kind); cached, as every batch of a cell asks again."""
    name_code = zlib.crc32((kind + "_noise").encode("utf-8"))
    state = np.random.SeedSequence((seed, name_code)).generate_state(4, np.uint32)
    return tuple(int32_word(int(w)) for w in state)
