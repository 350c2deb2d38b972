"""One place to look a model up: @register_model on a builder, create_model(name)."""

from __future__ import annotations

import fnmatch
import inspect
from typing import Callable

from torch import nn

from robust_csc.errors import RobustCSCError

_BUILDERS: dict[str, Callable[..., nn.Module]] = {}


def register_model(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register a builder under its function name (lower case)."""
    name = builder.__name__.lower()
    if name in _BUILDERS:
        raise ValueError(f"model {name!r} is registered twice")
    _BUILDERS[name] = builder
    return builder


def list_models(pattern: str | None = None) -> list[str]:
    """Registered model names, sorted; optionally filtered by a glob pattern."""
    names = sorted(_BUILDERS)
    return [n for n in names if fnmatch.fnmatchcase(n, pattern)] if pattern else names


def model_arguments(name: str) -> dict[str, object]:
    """The keyword arguments of a builder and their defaults."""
    return {
        p.name: p.default
        for p in inspect.signature(_builder(name)).parameters.values()
        if p.default is not inspect.Parameter.empty
    }


def _builder(name: str) -> Callable[..., nn.Module]:
    key = name.lower()
    if key not in _BUILDERS:
        raise RobustCSCError(f"unknown model {name!r}; choose one of {', '.join(list_models())}")
    return _BUILDERS[key]


def create_model(name: str, **kwargs) -> nn.Module:
    """Build a registered model; its name and full arguments land in model.config."""
    builder = _builder(name)
    allowed = model_arguments(name)
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise RobustCSCError(
            f"{name} takes no argument {', '.join(unknown)}; its arguments are {', '.join(sorted(allowed))}"
        )
    model = builder(**kwargs)
    arguments = {**allowed, **kwargs}
    model.config = {"arch": name.lower(), "arguments": arguments}
    return model
