"""Lambda grids and which layers a grid value sets.

layers:
  "stem"  - the first CSC layer gets the value (SDNet-18: the only one);
  "all"   - every CSC layer gets the same value;
  "scale" - every CSC layer gets its trained lambda times the value.

Default grids: linspace(0.1, 1.4, 14) for "stem" and "all" (the SDNet paper's
sweep); linspace(0.5, 5, 10) for "scale" (0.5x to 5x the trained lambdas,
which for SDNet's trained 0.1 spans 0.05 to 0.5, and includes 1 = untuned).
"""

from __future__ import annotations

import math
import numbers
from typing import Iterable

import numpy as np

from robust_csc.errors import RobustCSCError
from robust_csc.lambdas import LambdaSetting

LAYERS = ("stem", "all", "scale")
DEFAULT_GRIDS = {
    "stem": tuple(np.linspace(0.1, 1.4, 14).round(10).tolist()),
    "all": tuple(np.linspace(0.1, 1.4, 14).round(10).tolist()),
    "scale": tuple(np.linspace(0.5, 5.0, 10).round(10).tolist()),
}
MAX_VALUES = 10_000  # a grid or level list longer than this is a typo, not a sweep
_GRID_HINT = "write start:stop:count (e.g. 0.1:1.4:14) or a comma list (e.g. 0.1,0.3,0.5)"


def check_layers(layers: object) -> str:
    if layers not in LAYERS:
        raise RobustCSCError(f"unknown layer selection {layers!r} for tuning; use one of {', '.join(LAYERS)}")
    return str(layers)


def setting_for(layers: str, value: float) -> LambdaSetting:
    """The fixed lambda setting that one grid value stands for (its .name is the store's lambda_setting)."""
    kind = {"stem": "stem", "all": "all", "scale": "scale"}[check_layers(layers)]
    return LambdaSetting(kind, value)


def check_grid(values: Iterable[object], layers: str = "stem") -> tuple[float, ...]:
    """Sorted, distinct, finite grid values >= 0 (> 0 for scale) with distinct store names."""
    check_layers(layers)
    if isinstance(values, (str, bytes)):
        return parse_grid(values, layers)
    out: list[float] = []
    for value in values:
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value < 0:
            raise RobustCSCError(f"grid value {value!r} is invalid; every lambda in the grid must be a finite number >= 0")
        if layers == "scale" and value == 0:
            raise RobustCSCError("a scale grid cannot hold 0 (it switches sparsity off); start the scale grid above 0")
        out.append(float(value))
    if not out:
        raise RobustCSCError(f"the lambda grid is empty; {_GRID_HINT}")
    grid = tuple(sorted(set(out)))
    names = [setting_for(layers, v).name for v in grid]
    if len(set(names)) != len(names):
        raise RobustCSCError("two grid values print alike in the store (6 significant digits); use values that differ more")
    return grid


def parse_grid(text: str, layers: str = "stem") -> tuple[float, ...]:
    """A grid from the command line: "start:stop:count" (inclusive, as numpy.linspace) or "a,b,c"."""
    return check_grid(parse_number_list(text, "lambda grid", _GRID_HINT), layers)


def parse_number_list(text: str, what: str, hint: str) -> list[float]:
    """Numbers from the command line: "start:stop:count" (inclusive, as numpy.linspace) or "a,b,c".

    what names the list in errors ("lambda grid"); hint says how to write one.
    Only the syntax is checked here: the caller checks the values.
    """
    raw = str(text).strip()
    if not raw:
        raise RobustCSCError(f"the {what} is empty; {hint}")
    if ":" in raw:
        parts = raw.split(":")
        if len(parts) != 3:
            raise RobustCSCError(f"{what} {text!r} is malformed; {hint}")
        try:
            start, stop, count = float(parts[0]), float(parts[1]), int(parts[2])
        except ValueError:
            raise RobustCSCError(f"{what} {text!r} is malformed; {hint}") from None
        if count < 1:
            raise RobustCSCError(f"{what} {text!r} has {count} values; the count after the second ':' must be at least 1")
        if count > MAX_VALUES:
            raise RobustCSCError(f"{what} {text!r} has {count} values; pass a count from 1 to {MAX_VALUES}")
        if not (math.isfinite(start) and math.isfinite(stop)) or start > stop:
            raise RobustCSCError(f"{what} {text!r} runs backwards or is not finite; write start <= stop, e.g. 0.1:1.4:14")
        return np.linspace(start, stop, count).round(10).tolist()
    if raw.count(",") >= MAX_VALUES:
        raise RobustCSCError(f"the {what} has more than {MAX_VALUES} values; {hint}")
    values = []
    for item in raw.split(","):
        item = item.strip()
        if not item:
            continue
        try:
            values.append(float(item))
        except ValueError:
            raise RobustCSCError(f"{what} value {item!r} is not a number; {hint}") from None
    return values


def default_grid(layers: str = "stem") -> tuple[float, ...]:
    return DEFAULT_GRIDS[check_layers(layers)]


__all__ = ["DEFAULT_GRIDS", "LAYERS", "check_grid", "check_layers", "default_grid", "parse_grid", "setting_for"]
