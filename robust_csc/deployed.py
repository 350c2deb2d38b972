"""Judge a model exactly as it is deployed: eval mode whatever a library does, and its state unchanged.

Attack libraries switch modes on the module they are given: torchattacks
remembers the module's training flag and calls ``train()`` again after every
attack when it found the module training.  A module handed out in train mode
(a wrapper built fresh, say) then runs every later forward pass with batch
statistics, and overwrites the BatchNorm running statistics as it goes.  Two
guards close that door for every runner (harness, attacks, tuning):

    with frozen_state(model, "the attack"):      # eval mode, no parameter grads; state checked on exit
        run = EvalOnly(run)                       # hand this to libraries: train() cannot switch it

``frozen_state`` also fingerprints the model (every state_dict tensor, every
CSC layer's lambda) before and after, and raises when the block changed it:
a number reported for a model that is no longer the model is never stored
silently.
"""

from __future__ import annotations

import contextlib
import hashlib
from typing import Iterator

import torch
from torch import Tensor, nn


class EvalOnly(nn.Module):
    """A view of a module that stays in eval mode: train(), eval() and train(True) all leave it evaluating."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module
        self.train()

    def train(self, mode: bool = True) -> "EvalOnly":
        # The deployed model never trains: whatever a library asks, every submodule evaluates.
        self.training = False
        self.module.eval()
        return self

    def forward(self, x: Tensor) -> Tensor:
        return self.module(x)


def eval_only(module: nn.Module) -> EvalOnly:
    """module itself when already guarded, else EvalOnly(module)."""
    return module if isinstance(module, EvalOnly) else EvalOnly(module)


def state_fingerprint(model: nn.Module) -> str:
    """sha256 over every state_dict entry (name, dtype, shape, bytes) and every CSC layer's lambda."""
    from robust_csc.csc import csc_layers

    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        value = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{value.dtype}|{tuple(value.shape)}|".encode())
        digest.update(value.reshape(-1).view(torch.uint8).numpy().tobytes() if value.numel() else b"")
    for name, layer in csc_layers(model).items():
        lam = layer.lam
        text = repr(lam.detach().cpu().tolist()) if isinstance(lam, Tensor) else repr(float(lam))
        digest.update(f"lambda|{name}|{text}".encode())
    return digest.hexdigest()


@contextlib.contextmanager
def frozen_state(model: nn.Module, what: str = "the run") -> Iterator[nn.Module]:
    """Eval mode and no parameter gradients for a block; modes and flags restored after; state checked.

    Raises RuntimeError (a bug, not a user's mistake) when the block changed
    any weight, buffer or lambda of the model.
    """
    before = state_fingerprint(model)
    modes = [(module, module.training) for module in model.modules()]
    grads = [(p, p.requires_grad) for p in model.parameters()]
    model.eval()
    for parameter, _ in grads:
        parameter.requires_grad_(False)  # attacks need input gradients only; no .grad piles up on weights
    try:
        yield model
    finally:
        for parameter, flag in grads:
            parameter.requires_grad_(flag)
        for module, mode in modes:
            module.training = mode
    if state_fingerprint(model) != before:
        raise RuntimeError(f"{what} changed the model's weights, buffers or lambdas; no result of it may be trusted")


__all__ = ["EvalOnly", "eval_only", "frozen_state", "state_fingerprint"]
