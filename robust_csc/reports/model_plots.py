"""Plots that need the model itself: the stem dictionary's atoms and example reconstructions.

The stem CSC layer sees normalised images (each model normalises its input
first), so its synthesis A z is mapped back through the Normalize module's
mean and std before it is shown next to the images.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor, nn

from robust_csc.csc import CSCConv2d, csc_layers, normalize_atoms, synthesis
from robust_csc.models import Normalize
from robust_csc.reports.plots import new_figure


def stem_layer(model: nn.Module) -> CSCConv2d | None:
    """The first CSC layer (the stem of an SDNet), or None for a model without one."""
    layers = csc_layers(model)
    return next(iter(layers.values())) if layers else None


def atom_mosaic(weight: Tensor, pad: int = 1) -> np.ndarray:
    """Unit-norm atoms (C_out, C_in, k, k) tiled into one RGB image; each atom stretched to [0, 1] on its own."""
    atoms = normalize_atoms(weight.detach().float().cpu())
    count, channels, k, _ = atoms.shape
    if channels != 3:  # a grey atom per input channel mean: only the stem (3 channels) is meant here
        atoms = atoms.mean(dim=1, keepdim=True).expand(count, 3, k, k)
    low = atoms.flatten(1).min(dim=1).values.view(-1, 1, 1, 1)
    high = atoms.flatten(1).max(dim=1).values.view(-1, 1, 1, 1)
    atoms = (atoms - low) / (high - low).clamp_min(1e-12)
    cols = math.ceil(math.sqrt(count))
    rows = math.ceil(count / cols)
    mosaic = np.ones((rows * (k + pad) + pad, cols * (k + pad) + pad, 3), dtype=np.float32)
    for i in range(count):
        r, c = divmod(i, cols)
        top, left = pad + r * (k + pad), pad + c * (k + pad)
        mosaic[top : top + k, left : left + k] = atoms[i].permute(1, 2, 0).numpy()
    return mosaic


def atoms_figure(weight: Tensor, title: str):
    """The stem dictionary as one image grid (one tile per atom)."""
    mosaic = atom_mosaic(weight)
    figure = new_figure(4.2, 4.4)
    ax = figure.subplots()
    ax.imshow(mosaic, interpolation="nearest")
    ax.set_axis_off()
    ax.set_title(title, fontsize=8)
    return figure


def _normalize_module(model: nn.Module) -> Normalize | None:
    return next((m for m in model.modules() if isinstance(m, Normalize)), None)


@torch.no_grad()
def stem_reconstruction(model: nn.Module, images: Tensor, setting, corruption: str = "none", severity: int = 0) -> Tensor:
    """The stem's synthesis A z of its own code for images in [0, 1], in pixel space, clipped to [0, 1].

    The model runs at the lambda setting (setting.applied), so the code is
    exactly the one the classifier saw; a forward hook on the stem catches
    its input (the normalised image) and its code.
    """
    layer = stem_layer(model)
    if layer is None:
        raise ValueError("the model has no CSC layer")
    seen: dict[str, Tensor] = {}

    def catch(module, inputs, output):
        seen.setdefault("x", inputs[0])
        seen.setdefault("z", output)

    handle = layer.register_forward_hook(catch)
    was_training = model.training
    try:
        model.eval()
        with setting.applied(model, corruption, severity) as run:
            run(images)
    finally:
        handle.remove()
        model.train(was_training)
    x, z = seen["x"], seen["z"]
    recon = synthesis(z, normalize_atoms(layer.weight), layer.stride, layer.padding, (x.shape[-2], x.shape[-1]))
    norm = _normalize_module(model)
    if norm is not None:
        recon = recon * norm.std + norm.mean
    return recon.clamp(0.0, 1.0)


def examples_figure(columns: list[tuple[str, Tensor]], title: str):
    """A row per image, a column per (heading, images (N, 3, H, W) in [0, 1])."""
    n = len(columns[0][1])
    figure = new_figure(1.7 * len(columns), 1.7 * n + 0.5)
    figure.suptitle(title, fontsize=9)
    axes = figure.subplots(n, len(columns), squeeze=False)
    for j, (heading, images) in enumerate(columns):
        for i in range(n):
            ax = axes[i][j]
            ax.imshow(images[i].detach().cpu().permute(1, 2, 0).numpy(), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(heading, fontsize=7)
    return figure
