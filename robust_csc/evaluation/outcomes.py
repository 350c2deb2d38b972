"""Per-example outcomes of a result cell: which examples (by index) were right, stored compactly.

A cell's outcomes are two aligned arrays: ``index`` (the test-set index of
each example, in the order they were scored) and ``correct`` (bool: right
under the cell's condition; for an attack cell: still robust).  They are what
paired tests need (robust_csc.evaluation.stats): two cells can be compared
example by example only when they hold the same examples.

Stored as JSON text in the store's ``outcomes`` column:
  {"n": N, "bits": base64(numpy.packbits(correct)), "index": ...}
with the index as {"start": a, "stop": b} for a contiguous run a..b-1, as
{"mask": base64(packbits), "stop": b} for an ascending subset of 0..b-1 (a
tuning or reporting half), or as {"int64": base64(zlib(little-endian int64))}
otherwise.  10,000 examples take about 1.7 kB.
"""

from __future__ import annotations

import base64
import binascii
import json
import zlib
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from robust_csc.errors import RobustCSCError


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: object) -> bytes:
    if not isinstance(text, str):
        raise ValueError("not base64 text")
    return base64.b64decode(text, validate=True)


@dataclass(frozen=True, eq=False)
class Outcomes:
    """index (int64, (n,)) and correct (bool, (n,)) of one cell's examples."""

    index: np.ndarray
    correct: np.ndarray

    def __post_init__(self) -> None:
        index = np.asarray(self.index, dtype=np.int64).reshape(-1)
        correct = np.asarray(self.correct, dtype=bool).reshape(-1)
        if index.shape != correct.shape:
            raise RobustCSCError(f"outcomes have {index.size} indices and {correct.size} flags; pass one flag per example")
        if index.size and int(index.min()) < 0:
            raise RobustCSCError("outcome indices must be >= 0 (test-set indices)")
        if np.unique(index).size != index.size:
            raise RobustCSCError("outcome indices repeat; each example may be scored once per cell")
        object.__setattr__(self, "index", index)
        object.__setattr__(self, "correct", correct)

    @classmethod
    def first(cls, correct: Any) -> "Outcomes":
        """Outcomes of the examples 0..n-1 in order."""
        flags = np.asarray(correct, dtype=bool).reshape(-1)
        return cls(np.arange(flags.size, dtype=np.int64), flags)

    @property
    def n(self) -> int:
        return int(self.index.size)

    @property
    def count(self) -> int:
        return int(self.correct.sum())

    def to_json(self) -> str:
        return json.dumps({"n": self.n, "bits": _b64(np.packbits(self.correct).tobytes()), "index": encode_index(self.index)},
                          sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: object, where: str = "a stored cell") -> "Outcomes":
        try:
            data = json.loads(text) if isinstance(text, str) else text
            if not isinstance(data, Mapping):
                raise ValueError("not an object")
            n = int(data["n"])
            raw = _unb64(data["bits"])
            if n < 0 or len(raw) != (n + 7) // 8:
                raise ValueError("bit count")
            correct = np.unpackbits(np.frombuffer(raw, dtype=np.uint8), count=n).astype(bool)
            index = decode_index(data["index"], n)
        except (KeyError, TypeError, ValueError, binascii.Error, zlib.error, json.JSONDecodeError):
            raise RobustCSCError(f"{where} has unreadable per-example outcomes; evaluate it again with --recompute") from None
        return cls(index, correct)

    def aligned(self, other: "Outcomes", what: str = "the two cells") -> tuple[np.ndarray, np.ndarray]:
        """(self.correct, other.correct) in the order of self.index; refuses different example sets."""
        if self.n == other.n and np.array_equal(self.index, other.index):
            return self.correct, other.correct
        if self.n != other.n or not np.array_equal(np.sort(self.index), np.sort(other.index)):
            raise RobustCSCError(
                f"{what} were scored on different examples ({self.n} and {other.n}); "
                "a paired comparison needs the same examples: evaluate both on the same split"
            )
        order = np.argsort(other.index)
        position = order[np.searchsorted(other.index, self.index, sorter=order)]
        return self.correct, other.correct[position]

    def sorted(self) -> "Outcomes":
        order = np.argsort(self.index, kind="stable")
        return Outcomes(self.index[order], self.correct[order])


def encode_index(index: np.ndarray) -> dict:
    """The compact JSON form of an int64 index array (a run, a mask over 0..stop-1, or zlib'd int64)."""
    if index.size == 0:
        return {"start": 0, "stop": 0}
    start, stop = int(index[0]), int(index[-1]) + 1
    ascending = bool(np.all(np.diff(index) > 0))
    if ascending and stop - start == index.size:
        return {"start": start, "stop": stop}
    if ascending and stop <= 64 * index.size:  # a mask is at most 8x the bits of the members: compact
        mask = np.zeros(stop, dtype=bool)
        mask[index] = True
        return {"mask": _b64(np.packbits(mask).tobytes()), "stop": stop}
    return {"int64": _b64(zlib.compress(index.astype("<i8").tobytes(), 6))}


def decode_index(data: object, n: int) -> np.ndarray:
    """The index array encode_index wrote; ValueError (or binascii/zlib errors) when damaged or not n long."""
    if not isinstance(data, Mapping):
        raise ValueError("index is not an object")
    if "int64" in data:
        index = np.frombuffer(zlib.decompress(_unb64(data["int64"])), dtype="<i8").astype(np.int64)
    elif "mask" in data:
        stop = int(data["stop"])
        raw = _unb64(data["mask"])
        if stop < 0 or len(raw) != (stop + 7) // 8:
            raise ValueError("mask length")
        index = np.flatnonzero(np.unpackbits(np.frombuffer(raw, dtype=np.uint8), count=stop)).astype(np.int64)
    else:
        start, stop = int(data["start"]), int(data["stop"])
        index = np.arange(start, stop, dtype=np.int64)
    if index.size != n:
        raise ValueError("index count")
    return index


def combine_worst(outcomes: list[Outcomes], what: str = "the attack cells") -> Outcomes:
    """Pointwise AND over cells on the same examples: robust only where every cell left the example robust."""
    if not outcomes:
        raise RobustCSCError(f"no outcomes to combine for {what}")
    base = outcomes[0]
    correct = base.correct.copy()
    for other in outcomes[1:]:
        _, flags = base.aligned(other, what)
        correct &= flags
    return Outcomes(base.index, correct)


__all__ = ["Outcomes", "combine_worst", "decode_index", "encode_index"]
