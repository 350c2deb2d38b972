"""The tuning / reporting split: a fixed, seeded, disjoint halving of a suite's images.

Lambda is chosen on the tuning half and reported on the other half, so a
selection never sees a reported image. Every cell of a suite lists the same
test images in the same order (robust_csc.data.corrupted: item i of every cell
is the same underlying image), so one halving of the positions 0..n-1 splits
every cell, the clean one included, by the same image indices.

    tune, report = split_positions(200, seed=0)          # sorted, disjoint, 100 + 100
    split_names("test[:200]", 0) == ("test[:200]:tune:s0", "test[:200]:report:s0")
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import numpy as np
from torch.utils.data import Dataset, Subset

from robust_csc.data.corrupted import CorruptionSuite
from robust_csc.errors import RobustCSCError


def _check_seed(seed: object) -> int:
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise RobustCSCError(f"split seed {seed!r} is invalid; pass an integer >= 0 such as 0")
    return int(seed)


def split_positions(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(tuning positions, reporting positions) of n images: sorted, disjoint, n // 2 and n - n // 2 of them."""
    seed = _check_seed(seed)
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 2:
        raise RobustCSCError(f"a tuning split needs at least 2 images per cell, got {n!r}; use more images")
    order = np.random.default_rng(seed).permutation(int(n))
    half = int(n) // 2
    return np.sort(order[:half]), np.sort(order[half:])


def split_names(base: str, seed: int) -> tuple[str, str]:
    """The store's split names: (f"{base}:tune:s{seed}", f"{base}:report:s{seed}")."""
    seed = _check_seed(seed)
    return f"{base}:tune:s{seed}", f"{base}:report:s{seed}"


@dataclass(frozen=True)
class TuningSplit:
    """One halving: the positions of each half and their store names."""

    base: str
    seed: int
    tune: np.ndarray
    report: np.ndarray

    @classmethod
    def of(cls, n: int, base: str = "test", seed: int = 0) -> "TuningSplit":
        tune, report = split_positions(n, seed)
        return cls(base, _check_seed(seed), tune, report)

    @property
    def tune_name(self) -> str:
        return split_names(self.base, self.seed)[0]

    @property
    def report_name(self) -> str:
        return split_names(self.base, self.seed)[1]

    def positions(self, half: str) -> np.ndarray:
        if half not in ("tune", "report"):
            raise RobustCSCError(f"unknown split half {half!r}; use 'tune' or 'report'")
        return self.tune if half == "tune" else self.report

    def subset(self, data: Dataset, half: str) -> Dataset:
        """The half of one cell's Dataset (items keep their test-set index)."""
        if len(data) != len(self.tune) + len(self.report):
            raise RobustCSCError(
                f"a cell has {len(data)} images but the split was made for {len(self.tune) + len(self.report)}; "
                "build the split from the suite's images_per_cell"
            )
        return Subset(data, self.positions(half).tolist())

    def suite(self, suite: CorruptionSuite, half: str) -> CorruptionSuite:
        """The same suite restricted to one half of its images (every cell the same images)."""
        positions = self.positions(half)
        return CorruptionSuite(
            suite.name,
            suite.num_classes,
            suite.corruptions,
            suite.severities,
            len(positions),
            lambda corruption, severity: self.subset(suite.dataset(corruption, severity), half),
        )


__all__ = ["TuningSplit", "split_names", "split_positions"]
