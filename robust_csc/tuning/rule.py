"""The label-free rule: lambda from the stem's reconstruction error, fitted by a straight line.

Calibration (on the tuning split, where labels are allowed): for every cell,
x = the stem's mean reconstruction error ||x - A z||^2 at the reference lambda
(the trained stem lambda) and y = the cell's best grid value; fit y = a x + b
by least squares (numpy.polyfit), as the SDNet paper does.

Test time (no labels, no cell name): ``ReconLambdaModel`` wraps the model.  A
forward pre-hook on the stem codes the stem's input once at the reference
lambda, maps its reconstruction error to lambda = clip(a e + b, lo, hi) per
sample (or once per batch, from the batch mean), sets that per-sample lambda
on the chosen layers and lets the model run.  Labels never enter.

Gradients flow through the choice: the reference coding, the error and the
line are ordinary differentiable ops, and the per-sample lambda is set on the
layers directly (set_lambda would detach it), so an attack on the wrapper
sees how its input moves lambda.  Only where the line is clipped to the grid
range is the derivative zero, which is the true derivative of the rule there.

The rule adapts to its input, so an attack through it alone is not enough
(Athalye et al. 2018; Tramer et al. 2020).  Two more modes give adaptive
attacks their surrogates: "repick" runs exactly the deployed forward pass but
treats the chosen lambda as a constant in the backward pass (BPDA: lambda is
re-chosen at every step, its dependence on the input is not differentiated),
and "fixed" runs the model at the lambda the rule chose for each example's
clean image (found as the nearest of the given anchors).  The wrapper is
always built in eval mode.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from robust_csc.csc import CSCConv2d, csc_layers, select_csc_layers, synthesis
from robust_csc.errors import RobustCSCError

PER = ("sample", "batch")
MODES = ("full", "repick", "fixed")
# Anchors are matched on images average-pooled to at most this size: cheap, and a perturbation
# of Linf size eps moves a pooled image by at most eps, far less than two test images differ.
_ANCHOR_SIZE = 8


def fit_line(recon_errors: Sequence[float], best_lambdas: Sequence[float]) -> tuple[float, float]:
    """(slope, intercept) of best lambda against reconstruction error, least squares.

    With fewer than two distinct errors a line is undetermined: the rule is
    then the constant mean of the best lambdas (slope 0).
    """
    x = np.asarray(recon_errors, dtype=np.float64)
    y = np.asarray(best_lambdas, dtype=np.float64)
    if x.shape != y.shape or x.size == 0:
        raise RobustCSCError("the recon rule needs one reconstruction error per best lambda, and at least one cell; tune more cells")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise RobustCSCError("a cell's reconstruction error or best lambda is not finite; check the model and the suite")
    if np.unique(x).size < 2:
        return 0.0, float(y.mean())
    slope, intercept = np.polyfit(x, y, 1)
    return float(slope), float(intercept)


class ReconLambdaModel(nn.Module):
    """The model, run at a lambda chosen from each input's stem reconstruction error (no labels).

    layers: "stem" / "all" (the chosen value itself) or "scale" (every layer's
    lambda at wrapping time times the chosen value). mean_lambda() is the mean
    chosen value over every sample since the wrapper was built.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        slope: float,
        intercept: float,
        clip: tuple[float, float],
        reference: float,
        layers: str = "stem",
        per: str = "sample",
        mode: str = "full",
        anchors: Tensor | None = None,
    ) -> None:
        super().__init__()
        if per not in PER:
            raise RobustCSCError(f"unknown --per {per!r}; use 'sample' or 'batch'")
        if mode not in MODES:
            raise RobustCSCError(f"unknown recon-rule mode {mode!r}; use one of {', '.join(MODES)}")
        if (mode == "fixed") != (anchors is not None):
            raise RobustCSCError("the recon rule's fixed mode needs the clean anchor images, and only it takes them")
        lo, hi = float(clip[0]), float(clip[1])
        if not (math.isfinite(lo) and math.isfinite(hi)) or lo < 0 or lo > hi:
            raise RobustCSCError(f"recon rule clip range {clip!r} is invalid; pass 0 <= low <= high")
        self.model = model
        self.stem_name, self.stem = next(iter(select_csc_layers(model, "stem").items()))
        self.targets: dict[str, CSCConv2d] = dict(select_csc_layers(model, "stem" if layers == "stem" else None))
        trained = {name: layer.lam for name, layer in self.targets.items()}
        if any(isinstance(v, Tensor) for v in trained.values()):
            raise RobustCSCError("the model carries a per-sample lambda tensor; set float lambdas before wrapping it")
        self.base = {name: (float(v) if layers == "scale" else 1.0) for name, v in trained.items()}
        self.slope, self.intercept, self.lo, self.hi = float(slope), float(intercept), lo, hi
        self.reference = float(reference)
        self.layers, self.per = layers, per
        self._busy = False
        self._lambda_sum = 0.0
        self._lambda_count = 0
        self.last_lambda: Tensor | None = None
        self.mode = "full"
        self._anchor_keys: Tensor | None = None
        self._anchor_lambdas: Tensor | None = None
        self.eval()  # a deployed rule: libraries that restore a module's mode must find it evaluating
        if mode == "fixed":
            self._remember_anchors(anchors)
        self.mode = mode

    def _remember_anchors(self, anchors: Tensor, chunk: int = 256) -> None:
        """Run the rule on the clean anchor images; keep each one's stem input key and chosen lambda."""
        inputs: list[Tensor] = []

        def grab(module: nn.Module, args: tuple) -> None:
            # Not the rule's own inner stem call at the reference lambda: one key per anchor image, in the
            # order of the chosen lambdas (keys counted twice sent anchors past the first chunk out of range).
            if not self._busy:
                inputs.append(args[0].detach())

        chosen = []
        handle = self.stem.register_forward_pre_hook(grab)  # before the rule's own hook: sees the stem input
        try:
            with torch.no_grad():
                for start in range(0, anchors.shape[0], chunk):
                    self(anchors[start : start + chunk])
                    assert self.last_lambda is not None
                    chosen.append(self.last_lambda)
        finally:
            handle.remove()
        self._anchor_keys = _anchor_key(torch.cat(inputs))
        self._anchor_lambdas = torch.cat(chosen)
        self._lambda_sum, self._lambda_count = 0.0, 0  # the anchors' choices are not part of any cell

    def anchor_lambdas(self, x: Tensor) -> Tensor:
        """The lambda chosen for the clean anchor nearest to each row of x, the stem's input (fixed mode)."""
        assert self._anchor_keys is not None and self._anchor_lambdas is not None
        keys = _anchor_key(x.detach())
        nearest = torch.cdist(keys, self._anchor_keys.to(keys.device)).argmin(dim=1)
        return self._anchor_lambdas.to(x.device)[nearest]

    def choose(self, recon_error: Tensor) -> Tensor:
        """Lambda for per-sample reconstruction errors (B,): the clipped line; per batch: one value for all."""
        if self.per == "batch":
            recon_error = recon_error.mean().expand(recon_error.shape[0])
        return (recon_error * self.slope + self.intercept).clamp(self.lo, self.hi)

    def reference_error(self, x: Tensor) -> Tensor:
        """Per-sample ||x - A z||^2 of the stem's input x coded at the reference lambda (differentiable)."""
        stem = self.stem
        saved = stem.lam
        self._busy = True  # the stem's own pre-hook must not recurse
        try:
            stem.lam = self.reference
            z = stem(x)
        finally:
            stem.lam = saved
            self._busy = False
        recon = synthesis(z, stem.dictionary(), stem.stride, stem.padding, (x.shape[-2], x.shape[-1]))
        return (x - recon).pow(2).flatten(1).sum(1)

    def _set_lambdas(self, module: nn.Module, inputs: tuple) -> None:
        if self._busy:
            return
        if self.mode == "fixed":
            lam = self.anchor_lambdas(inputs[0])
        else:
            lam = self.choose(self.reference_error(inputs[0]))
            if self.mode == "repick":
                lam = lam.detach()  # BPDA: the forward pass is the deployed one, the choice is a constant backward
        for name, layer in self.targets.items():
            # Directly, not through set_lambda: that would detach lambda from the input.
            layer.lam = lam * self.base[name] if self.layers == "scale" else lam
        chosen = lam.detach()
        self.last_lambda = chosen
        # Summed on the device: no host sync in the forward pass (attacks run it every step).
        self._lambda_sum = self._lambda_sum + chosen.double().sum()
        self._lambda_count += int(chosen.numel())

    def forward(self, x: Tensor) -> Tensor:
        saved = {name: layer.lam for name, layer in csc_layers(self.model).items()}
        handle = self.stem.register_forward_pre_hook(self._set_lambdas)
        try:
            return self.model(x)
        finally:
            handle.remove()
            for name, layer in csc_layers(self.model).items():
                layer.lam = saved[name]

    def mean_lambda(self) -> float | None:
        return float(self._lambda_sum) / self._lambda_count if self._lambda_count else None


def _anchor_key(images: Tensor) -> Tensor:
    """Images average-pooled to at most _ANCHOR_SIZE x _ANCHOR_SIZE and flattened: the nearest-anchor key."""
    size = (min(_ANCHOR_SIZE, images.shape[-2]), min(_ANCHOR_SIZE, images.shape[-1]))
    return torch.nn.functional.adaptive_avg_pool2d(images.float(), size).flatten(1)


__all__ = ["MODES", "PER", "ReconLambdaModel", "fit_line"]
