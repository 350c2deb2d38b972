"""Checkpoint metadata checked before anything is built from it.

A checkpoint's metadata decides what create_model allocates and how long a
forward pass runs, so a hostile or damaged header could ask for 180 GB
(width 4096) or a forward pass that never ends (n_steps 1e8). Every field is
checked for its type and a sane range first, and the model's tensor names and
shapes are compared with the file's tensor headers on the meta device (no
memory) before the real model is built.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Mapping

import torch
from torch import nn

from robust_csc.constants import MAX_LAMBDA
from robust_csc.csc import ITERATIONS
from robust_csc.errors import RobustCSCError
from robust_csc.models.registry import create_model, list_models, model_arguments

# Far beyond any published model, far below what would exhaust memory or time.
MAX_NUM_CLASSES = 100_000  # ImageNet-21k has 21,841
MAX_WIDTH = 1024  # the standard is 64; wide ResNets go to 4x
MAX_STEPS = 100  # SDNet unrolls 2 steps
STEMS = ("cifar", "imagenet")


def _integer(value: Any, low: int, high: int) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and low <= value <= high


def _real(value: Any, low: float, high: float) -> bool:
    return (
        isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value) and low <= value <= high
    )


def _stats(value: Any, positive: bool) -> bool:
    if value is None:
        return True
    if not isinstance(value, (list, tuple)) or len(value) != 3:
        return False
    return all(_real(v, 1e-6 if positive else -1e3, 1e3) for v in value)


# argument -> (test, what a valid value is)
_ARGUMENTS = {
    "num_classes": (lambda v: _integer(v, 1, MAX_NUM_CLASSES), f"an integer from 1 to {MAX_NUM_CLASSES}"),
    "width": (lambda v: _integer(v, 1, MAX_WIDTH), f"an integer from 1 to {MAX_WIDTH}"),
    "n_steps": (lambda v: _integer(v, 1, MAX_STEPS), f"an integer from 1 to {MAX_STEPS}"),
    "stem": (lambda v: v in STEMS, f"one of {', '.join(STEMS)}"),
    "iteration": (lambda v: v in ITERATIONS, f"one of {', '.join(ITERATIONS)}"),
    "lam": (lambda v: _real(v, 0.0, MAX_LAMBDA), f"a number from 0 to {MAX_LAMBDA:g}"),
    "mu": (lambda v: _real(v, 0.0, MAX_LAMBDA), f"a number from 0 to {MAX_LAMBDA:g}"),
    "shortcut": (lambda v: isinstance(v, bool), "true or false"),
    "non_negative": (lambda v: isinstance(v, bool), "true or false"),
    "mean": (lambda v: _stats(v, positive=False), "null or 3 finite numbers"),
    "std": (lambda v: _stats(v, positive=True), "null or 3 positive numbers"),
}


def check_metadata(path: Any, meta: Mapping[str, Any]) -> None:
    """Refuse metadata whose architecture, arguments or lambdas are of the wrong type or out of range."""
    fix = "re-download the checkpoint or re-save it with save_checkpoint"
    arch = meta["arch"]
    if arch not in list_models():
        raise RobustCSCError(f"{path} names an unknown architecture {arch[:40]!r}; {fix}")
    arguments = meta["arguments"]
    allowed = model_arguments(arch)
    unknown = sorted(str(k)[:40] for k in arguments if k not in allowed)
    if unknown:
        raise RobustCSCError(f"{path} gives {arch} unknown arguments ({', '.join(unknown[:3])}); {fix}")
    for name, value in arguments.items():
        test, valid = _ARGUMENTS.get(name, (lambda v: True, ""))
        if not test(value):
            raise RobustCSCError(f"{path} has {name} {str(value)[:40]} in its metadata, which must be {valid}; {fix}")
    if "num_classes" in meta and "num_classes" in arguments and meta["num_classes"] != arguments["num_classes"]:
        raise RobustCSCError(f"{path} records two different class counts in its metadata; {fix}")
    lambdas = meta.get("lambda", {})
    if not isinstance(lambdas, Mapping):
        raise RobustCSCError(f"{path} has a lambda entry that is not a mapping of layer names to numbers; {fix}")
    for layer, value in lambdas.items():
        if not _real(value, 0.0, MAX_LAMBDA):
            raise RobustCSCError(
                f"{path} has lambda {str(value)[:40]} for layer {str(layer)[:40]}, which must be a number from 0 "
                f"to {MAX_LAMBDA:g}; {fix}"
            )


def _some(names: list[str], limit: int = 3) -> str:
    shown = ", ".join(names[:limit])
    return f"{shown} and {len(names) - limit} more" if len(names) > limit else shown


def shape_mismatches(expected: Mapping[str, tuple], found: Mapping[str, tuple]) -> list[str]:
    """What differs between a model's state_dict shapes and a file's, as short clauses (empty: they fit)."""
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    shapes = [
        f"{k} has shape {tuple(found[k])} in the file but {tuple(v)} in the model"
        for k, v in expected.items()
        if k in found and tuple(found[k]) != tuple(v)
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} key(s) missing from the file ({_some(missing)})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s) in the file ({_some(unexpected)})")
    if shapes:
        problems.append(f"{len(shapes)} shape mismatch(es): {_some(shapes, 2)}")
    return problems


def build_fitting(arch: str, arguments: Mapping[str, Any], found: Mapping[str, tuple], source: Any) -> nn.Module:
    """create_model(arch, **arguments), once a memory-free skeleton shows its tensors are exactly found's shapes.

    The file's tensors exist, so a model whose every tensor matches one of
    them is no larger than the file: metadata can no longer ask for more.
    """
    with torch.device("meta"):
        skeleton = create_model(arch, **arguments)
    expected = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    problems = shape_mismatches(expected, found)
    if problems:
        raise RobustCSCError(
            f"{source} does not fit the model its metadata describes: {'; '.join(problems)}; "
            "re-download the checkpoint or re-save it with save_checkpoint"
        )
    return create_model(arch, **arguments)


def check_finite(tensors: Mapping[str, torch.Tensor], source: Any) -> None:
    """Refuse weights holding NaN or infinity: every result computed from them would be meaningless."""
    bad = [
        name for name, t in tensors.items() if t.is_floating_point() and t.numel() and not bool(torch.isfinite(t).all())
    ]
    if bad:
        raise RobustCSCError(
            f"{source} holds NaN or infinite values in {len(bad)} tensor(s) ({_some(bad)}); "
            "the training diverged or the file is damaged: use an earlier checkpoint or retrain"
        )


__all__ = ["MAX_NUM_CLASSES", "MAX_STEPS", "MAX_WIDTH", "build_fitting", "check_finite", "check_metadata", "shape_mismatches"]
