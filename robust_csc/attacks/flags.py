"""Per-example robust flags in a store cell: numpy.packbits, then base64 (JSON holds text)."""

from __future__ import annotations

import base64
import binascii

import numpy as np
import torch
from torch import Tensor

from robust_csc.errors import RobustCSCError


def pack_flags(flags: Tensor) -> dict:
    """{"n": N, "bits": base64 of packbits} for a bool tensor of shape (N,)."""
    array = flags.detach().to("cpu", torch.bool).numpy()
    return {"n": int(array.size), "bits": base64.b64encode(np.packbits(array).tobytes()).decode("ascii")}


def unpack_flags(packed: object, n: int, where: str = "a stored cell") -> Tensor:
    """The bool tensor pack_flags packed; refuses a record for another number of examples."""
    try:
        count = int(packed["n"])  # type: ignore[index]
        raw = base64.b64decode(packed["bits"], validate=True)  # type: ignore[index]
    except (KeyError, TypeError, ValueError, binascii.Error):
        raise RobustCSCError(f"{where} has no readable robust flags; evaluate into a new store") from None
    if count != n or len(raw) != (n + 7) // 8:
        raise RobustCSCError(f"{where} holds flags for {count} examples, not {n}; evaluate into a new store")
    bits = np.unpackbits(np.frombuffer(raw, dtype=np.uint8), count=n).astype(bool)
    return torch.from_numpy(bits)


__all__ = ["pack_flags", "unpack_flags"]
