"""The one-pass lambda sweep: every image of a cell is loaded (and corrupted) once for the whole grid.

Each data batch of b images is repeated K times (one copy per grid value)
and run as one model batch of b*K rows, with a per-sample lambda tensor of
shape (b*K,) on the swept layers; b = batch_size // K bounds the rows per pass
by batch_size. So K lambdas cost about K model passes and the data work once.
The stem's per-sample reconstruction error and code density come from
record_stats and are summed per grid value.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from robust_csc.csc import csc_layers, record_stats, select_csc_layers
from robust_csc.errors import RobustCSCError
from robust_csc.runtime import model_device
from robust_csc.tuning.grid import check_layers


@dataclass
class SweepCell:
    """Per grid value on one cell: n images, correct counts, mean stem recon error and code density."""

    values: tuple[float, ...]
    n: int
    correct: np.ndarray  # (K,) int
    recon_error: np.ndarray  # (K,) mean over images
    code_density: np.ndarray  # (K,)
    seconds: float

    @property
    def accuracy(self) -> np.ndarray:
        return self.correct / max(self.n, 1)


def trained_lambdas(model: nn.Module) -> dict[str, float]:
    """Every CSC layer's lambda as a float; refuses a model without CSC layers or with per-sample lambdas."""
    layers = select_csc_layers(model)
    out = {}
    for name, layer in layers.items():
        if isinstance(layer.lam, Tensor):
            raise RobustCSCError(f"CSC layer {name} carries a per-sample lambda tensor; set float lambdas before tuning")
        out[name] = float(layer.lam)
    return out


def reference_value(model: nn.Module, layers: str) -> float:
    """The grid value that reproduces the trained stem lambda (the recon rule's reference)."""
    check_layers(layers)
    return 1.0 if layers == "scale" else next(iter(trained_lambdas(model).values()))


@contextlib.contextmanager
def per_sample_lambdas(model: nn.Module, layers: str, values: Tensor) -> Iterator[None]:
    """Set per-sample lambda values (R,) on the swept layers (scale: times each trained lambda); restored on exit."""
    trained = trained_lambdas(model)
    targets = select_csc_layers(model, "stem" if layers == "stem" else None)
    try:
        for name, layer in targets.items():
            # Directly: the grid was checked once; set_lambda would check (and sync) per batch.
            layer.lam = values * trained[name] if layers == "scale" else values
        yield
    finally:
        for name, layer in csc_layers(model).items():
            layer.lam = trained[name]


def sweep_cell(
    model: nn.Module,
    data: Dataset,
    values: Sequence[float],
    layers: str = "stem",
    *,
    batch_size: int = 256,
    num_workers: int = 0,
    device: torch.device | str | None = None,
) -> SweepCell:
    """Accuracy, stem recon error and code density of one cell at every value, loading each image once."""
    check_layers(layers)
    values = tuple(float(v) for v in values)
    k = len(values)
    if k == 0:
        raise RobustCSCError("the lambda grid is empty; pass at least one value")
    device = torch.device(device) if device is not None else model_device(model)
    per_batch = max(1, batch_size // k)
    loader = DataLoader(data, batch_size=per_batch, shuffle=False, num_workers=num_workers,
                        pin_memory=device.type == "cuda")
    grid = torch.tensor(values, dtype=torch.float32, device=device)
    correct = torch.zeros(k, dtype=torch.int64, device=device)
    recon = torch.zeros(k, dtype=torch.float64, device=device)
    density = torch.zeros(k, dtype=torch.float64, device=device)
    n = 0
    start = time.perf_counter()
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), record_stats(model, layers="stem") as stem:
            stem_layer = next(iter(stem.values()))
            for batch in loader:
                images = batch[0].to(device, non_blocking=True)
                labels = torch.as_tensor(batch[1]).to(device, non_blocking=True)
                b = images.shape[0]
                # Row r*b + i is image i at grid value r.
                lam = grid.repeat_interleave(b)
                with per_sample_lambdas(model, layers, lam):
                    logits = model(images.repeat(k, 1, 1, 1))
                correct += (logits.argmax(dim=1).view(k, b) == labels.view(1, b)).sum(1)
                stats = stem_layer.last_stats
                recon += stats.recon_error.view(k, b).sum(1, dtype=torch.float64)
                density += stats.code_density.view(k, b).sum(1, dtype=torch.float64)
                n += b
    finally:
        model.train(was_training)
    if n == 0:
        raise RobustCSCError("a cell of the tuning split holds no images; use more images per cell")
    return SweepCell(
        values=values,
        n=n,
        correct=correct.cpu().numpy(),
        recon_error=(recon / n).cpu().numpy(),
        code_density=(density / n).cpu().numpy(),
        seconds=time.perf_counter() - start,
    )


__all__ = ["SweepCell", "per_sample_lambdas", "reference_value", "sweep_cell", "trained_lambdas"]
