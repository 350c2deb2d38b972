"""Lambda settings: how a model's CSC lambdas are set for one result cell, and the store's name for it.

Every path that runs a model for a result (the corruption harness, the
attacks, the tuning sweep) goes through a setting's ``applied`` context, so a
model is attacked at exactly the lambdas it is evaluated at.

    setting = LambdaSetting.parse("stem=0.5")      # or as_setting(0.5), as_setting(None)
    with setting.applied(model) as run:            # run: the module to call
        logits = run(images)
    setting.name                                   # "stem=0.5", the store's lambda_setting

Names: "trained" (as trained), "0.5" (every CSC layer), "stem=0.5" (the
first CSC layer only), "scale=1.5" (every layer's trained lambda times 1.5).
A tuned policy (robust_csc.tuning) is a setting too: anything with a ``name``
and an ``applied(model, corruption, severity)`` context manager.
"""

from __future__ import annotations

import contextlib
import math
import numbers
from dataclasses import dataclass
from typing import ContextManager, Iterable, Iterator, Protocol, runtime_checkable

from torch import nn

from robust_csc.constants import MAX_LAMBDA
from robust_csc.csc import csc_layers, get_lambda, lambda_override, select_csc_layers
from robust_csc.errors import RobustCSCError

KINDS = ("trained", "all", "stem", "scale")


@runtime_checkable
class LambdaPolicyLike(Protocol):
    """What the harness and the attacks need of a setting."""

    name: str

    def applied(self, model: nn.Module, corruption: str = "none", severity: int = 0) -> ContextManager[nn.Module]: ...


def _check_value(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value < 0:
        raise RobustCSCError(f"{what} {value!r} is invalid; pass a finite number >= 0")
    if value > MAX_LAMBDA:
        raise RobustCSCError(f"{what} {value!r} is absurdly large (it zeroes every code); pass a number from 0 to {MAX_LAMBDA:g}")
    return float(value)


@dataclass(frozen=True)
class LambdaSetting:
    """One fixed way of setting lambda: kind in KINDS, value None only for "trained"."""

    kind: str = "trained"
    value: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise RobustCSCError(f"unknown lambda setting kind {self.kind!r}; use one of {', '.join(KINDS)}")
        if self.kind == "trained":
            if self.value is not None:
                raise RobustCSCError("the 'trained' lambda setting takes no value; drop the value or use kind 'all'")
            return
        value = _check_value(self.value, f"lambda {self.kind} value")
        if self.kind == "scale" and value == 0:
            raise RobustCSCError("lambda scale 0 switches sparsity off silently; pass a scale > 0 (or lambda 0 with kind 'all')")
        object.__setattr__(self, "value", value)

    @property
    def name(self) -> str:
        if self.kind == "trained":
            return "trained"
        if self.kind == "all":
            return f"{self.value:g}"
        return f"{self.kind}={self.value:g}"

    @classmethod
    def parse(cls, text: str) -> "LambdaSetting":
        """The setting a store name (or a CLI value) stands for: "trained", "0.5", "stem=0.5", "scale=1.5"."""
        raw = str(text).strip()
        if raw.lower() == "trained":
            return cls()
        kind, sep, number = raw.partition("=")
        if not sep:
            kind, number = "all", raw
        kind = kind.strip().lower()
        if kind not in ("stem", "scale", "all"):
            raise RobustCSCError(f"lambda setting {text!r} is not understood; write trained, 0.5, stem=0.5 or scale=1.5")
        try:
            value = float(number)
        except ValueError:
            raise RobustCSCError(f"lambda setting {text!r} has no number; write trained, 0.5, stem=0.5 or scale=1.5") from None
        return cls(kind, value)

    @contextlib.contextmanager
    def applied(self, model: nn.Module, corruption: str = "none", severity: int = 0) -> Iterator[nn.Module]:
        """Set the lambdas for one cell (the cell does not matter to a fixed setting); restored on exit."""
        if self.kind == "trained":
            yield model
            return
        if self.kind == "scale":
            trained = get_lambda(model)
            if not trained:
                select_csc_layers(model)  # raises: no CSC layers
            scaled = {name: value * self.value for name, value in trained.items()}
            with lambda_override(model, scaled):
                yield model
            return
        with lambda_override(model, self.value, layers="stem" if self.kind == "stem" else None):
            yield model


def as_setting(value: object) -> LambdaSetting | LambdaPolicyLike:
    """None -> trained, a number -> every layer, a string -> LambdaSetting.parse, a setting or policy as is."""
    if value is None:
        return LambdaSetting()
    if isinstance(value, LambdaSetting):
        return value
    if isinstance(value, str):
        return LambdaSetting.parse(value)
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return LambdaSetting("all", value)
    if isinstance(value, LambdaPolicyLike):
        return value
    raise RobustCSCError(
        f"lambda setting {value!r} is not understood; pass None (trained), a number, 'stem=0.5', 'scale=1.5' or a lambda policy"
    )


def fitted_part(setting: object) -> object | None:
    """The tuned policy inside a setting (the setting itself, or the lambda part of a composed setting), or None.

    A tuned policy was fitted on images of its suite, and whatever runs it must score only its reporting split.
    """
    if hasattr(setting, "scoring_plan"):
        return setting
    inner = getattr(setting, "lambdas", None)
    return fitted_part(inner) if inner is not None and inner is not setting else None


def needs_csc(setting: object) -> bool:
    """Whether the setting changes lambdas (and so needs a model with CSC layers)."""
    if isinstance(setting, LambdaSetting):
        return setting.kind != "trained"
    return bool(getattr(setting, "needs_csc", True))  # a test-time adaptation alone says False


def check_model_takes(model: nn.Module, setting: object, model_name: str) -> None:
    """Refuse a lambda setting for a model without CSC layers, in one line."""
    if needs_csc(setting) and not csc_layers(model):
        raise RobustCSCError(
            f"{model_name} has no CSC layers, so lambda setting {getattr(setting, 'name', setting)!r} cannot apply; "
            "use the trained setting or an SDNet model"
        )


def check_settings_cover(settings: Iterable[object], cells: Iterable[tuple[str, int]]) -> None:
    """Refuse, before any cell runs, a setting that has no lambda for one of the cells (a tuned grid policy,
    alone or inside a composed setting).

    A grid policy answers value_for(corruption, severity) only for the cells it
    was tuned on; found missing mid-run, the cells before it would already be stored.
    """
    cells = list(cells)
    for setting in settings:
        value_for = getattr(fitted_part(setting), "value_for", None)
        if value_for is None:
            continue
        for corruption, severity in cells:
            value_for(corruption, severity)  # raises a RobustCSCError naming the cell and the fix


__all__ = [
    "KINDS", "LambdaPolicyLike", "LambdaSetting", "as_setting", "check_model_takes", "check_settings_cover",
    "fitted_part", "needs_csc",
]
