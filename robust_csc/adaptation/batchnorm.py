"""BatchNorm layers that normalise with the test batch's statistics, for test-time adaptation.

Inside ``batch_statistics(model, prior=N)`` every BatchNorm layer of model
normalises its input (n images) with

    mean = N/(N+n) * running_mean + n/(N+n) * the batch's mean
    var  = N/(N+n) * running_var  + n/(N+n) * the batch's variance

per channel (Schneider et al., NeurIPS 2020, "Improving robustness against
common corruptions by covariate shift adaptation": the source statistics as a
prior of strength N). N = 0 is the batch's own statistics: exactly what
BatchNorm computes for a training batch.

The batch variance is the biased one (divided by the number of values per
channel), the variance BatchNorm normalises a training batch with, so N = 0
equals train-mode BatchNorm. The authors' code mixes in the unbiased variance
(a momentum-1 running_var); the two differ by a factor m/(m-1), m = n*H*W
values per channel (1 + 1e-5 for 128 CIFAR images at 32x32).

Nothing of the model changes: its running buffers are never written, no
module's train/eval flag is flipped (the reference implementations put layers
or the whole model in train mode, which here would also switch CSC layers to
their training-time step size estimate) and the module tree stays the same.
Each layer's forward is replaced on the instance for the duration of the
context and removed on exit.
"""

from __future__ import annotations

import contextlib
import math
import numbers
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from robust_csc.errors import RobustCSCError


def batchnorm_layers(model: nn.Module) -> dict[str, _BatchNorm]:
    """The BatchNorm layers (1d, 2d, 3d, sync) of a model by qualified name, in definition order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, _BatchNorm)}


def check_prior(prior: object) -> float:
    """The prior strength N: a finite number >= 0."""
    if isinstance(prior, bool) or not isinstance(prior, numbers.Real) or not math.isfinite(prior) or prior < 0:
        raise RobustCSCError(
            f"bn-adapt prior N {prior!r} is invalid; pass a finite number >= 0 (0: test statistics only)"
        )
    return float(prior)


def require_batchnorm(
    model: nn.Module, what: str, model_name: str = "the model", prior: float = 0.0
) -> dict[str, _BatchNorm]:
    """The model's BatchNorm layers; one line naming the fix when there are none (or no source statistics for N > 0)."""
    layers = batchnorm_layers(model)
    if not layers:
        raise RobustCSCError(
            f"{model_name} has no BatchNorm layers, so {what} has nothing to adapt; "
            "evaluate it without test-time adaptation or use a model with BatchNorm"
        )
    if prior > 0:
        missing = [name for name, layer in layers.items() if layer.running_mean is None or layer.running_var is None]
        if missing:
            raise RobustCSCError(
                f"{model_name}'s BatchNorm layer {missing[0]} keeps no running statistics, so {what} has no source "
                "statistics to mix with the batch's; use the prior N=0"
            )
    return layers


def _adapted_forward(layer: _BatchNorm, prior: float) -> Callable[[Tensor], Tensor]:
    def forward(x: Tensor) -> Tensor:
        if x.numel() == x.shape[1] and prior == 0:
            # One value per channel (a batch of one image in a BatchNorm1d): no variance to estimate.
            raise RobustCSCError(
                "a batch holds one value per channel of a BatchNorm layer, so its variance is undefined; "
                "use a batch size that leaves no single-image batch or a prior N > 0"
            )
        if prior == 0:
            # BatchNorm's own training-mode normalisation; no running buffers are passed, so none is written.
            return F.batch_norm(x, None, None, layer.weight, layer.bias, True, 0.0, layer.eps)
        dims = [0, *range(2, x.dim())]
        var, mean = torch.var_mean(x.float(), dim=dims, correction=0)
        source = prior / (prior + x.shape[0])  # N/(N+n); n = the images in this batch (the last one may be short)
        mixed_mean = source * layer.running_mean.float() + (1.0 - source) * mean
        mixed_var = source * layer.running_var.float() + (1.0 - source) * var
        # Written out, not F.batch_norm: that refuses statistics that carry a gradient (they depend on x).
        shape = [1, -1] + [1] * (x.dim() - 2)
        out = (x.float() - mixed_mean.view(shape)) * torch.rsqrt(mixed_var.view(shape) + layer.eps)
        if layer.weight is not None:
            out = out * layer.weight.view(shape) + layer.bias.view(shape)
        return out.to(x.dtype)

    return forward


@contextlib.contextmanager
def batch_statistics(
    model: nn.Module, prior: float = 0.0, model_name: str = "the model"
) -> Iterator[dict[str, _BatchNorm]]:
    """Every BatchNorm layer of model normalises with prior-mixed test-batch statistics until exit.

    Yields the layers by name. Not reentrant: a layer already adapted is refused.
    """
    prior = check_prior(prior)
    layers = require_batchnorm(model, f"bn-adapt[N={prior:g}]", model_name, prior)
    patched: list[_BatchNorm] = []
    try:
        for name, layer in layers.items():
            if "forward" in vars(layer):
                raise RobustCSCError(
                    f"BatchNorm layer {name} is already being adapted; apply one test-time adaptation at a time"
                )
            layer.forward = _adapted_forward(layer, prior)  # an instance attribute: shadows the class's forward
            patched.append(layer)
        yield layers
    finally:
        for layer in patched:
            del layer.forward


__all__ = ["batch_statistics", "batchnorm_layers", "check_prior", "require_batchnorm"]
