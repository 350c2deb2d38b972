"""Tent's mechanics: entropy of the predictions, the BatchNorm affine parameters, one step per batch.

Tent (Wang et al., ICLR 2021, "Tent: Fully Test-Time Adaptation by Entropy
Minimization"): BatchNorm layers normalise with the batch's statistics and
only their affine weight and bias are optimised, by one gradient step per
batch on the mean softmax entropy of the batch's predictions. The
predictions returned are those of the forward pass that computed the loss,
taken before the step, as the authors' code does (forward, loss, backward,
step; return the outputs).

``TentRun`` is what a cell calls; ``ModelSnapshot`` restores what Tent
changes (the affine values, every parameter's requires_grad and grad).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from robust_csc.errors import RobustCSCError


def softmax_entropy(logits: Tensor) -> Tensor:
    """Entropy of softmax(logits) per row: -sum_c p_c log p_c."""
    return -(logits.softmax(1) * logits.log_softmax(1)).sum(1)


def affine_parameters(layers: dict[str, _BatchNorm]) -> list[nn.Parameter]:
    """Weight (scale) and bias (shift) of every affine BatchNorm layer, in layer order."""
    params: list[nn.Parameter] = []
    for layer in layers.values():
        params += [p for p in (layer.weight, layer.bias) if p is not None]
    return params


class ModelSnapshot:
    """What Tent touches, to put back byte for byte: given values, and every parameter's requires_grad and grad."""

    def __init__(self, model: nn.Module, params: list[nn.Parameter]) -> None:
        self.all = list(model.parameters())
        self.flags = [p.requires_grad for p in self.all]
        self.grads = [p.grad for p in self.all]
        self.params = params
        self.values = [p.detach().clone() for p in params]

    def restore(self) -> None:
        with torch.no_grad():
            for p, value in zip(self.params, self.values):
                p.copy_(value)
        for p, flag, grad in zip(self.all, self.flags, self.grads):
            p.requires_grad_(flag)
            p.grad = grad


class TentRun(nn.Module):
    """Calls inner on a batch, takes `steps` entropy steps on it, returns the last step's (pre-step) outputs.

    Counts the batches and sums the entropy of the returned predictions (on
    the device: no host sync per batch) for the cell's record.
    """

    def __init__(
        self, inner: nn.Module, optimizer: torch.optim.Optimizer, steps: int, batch_size: int | None, cells_before: int = 0
    ) -> None:
        super().__init__()
        self.inner = inner
        self.optimizer = optimizer
        self.steps = steps
        self.batch_size = batch_size
        self.cells_before = cells_before  # online: the cells of this run adapted before this one
        self.images = 0
        self.entropy_sum: Tensor | float = 0.0

    def forward(self, x: Tensor) -> Tensor:
        check_batch(x, self.batch_size, "tent")
        if x.is_inference():  # a batch made under inference_mode cannot enter a graph
            x = x.clone()
        with torch.enable_grad():
            for _ in range(self.steps):
                outputs = self.inner(x)
                entropy = softmax_entropy(outputs)
                entropy.mean(0).backward()
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
        self.images += int(x.shape[0])
        self.entropy_sum = self.entropy_sum + entropy.detach().double().sum()
        return outputs.detach()

    def mean_entropy(self) -> float | None:
        return float(self.entropy_sum) / self.images if self.images else None


def check_batch(x: Tensor, batch_size: int | None, what: str) -> None:
    """A setting named for batch size b may see batches of at most b images (the last one of a cell may be short)."""
    if batch_size is not None and x.shape[0] > batch_size:
        raise RobustCSCError(
            f"{what} was set up for batches of {batch_size} images but got {x.shape[0]}; "
            f"evaluate it with batch size {batch_size} or build the setting for this batch size"
        )


__all__ = ["ModelSnapshot", "TentRun", "affine_parameters", "check_batch", "softmax_entropy"]
