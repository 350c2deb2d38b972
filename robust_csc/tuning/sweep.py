"""The one-pass lambda sweep: every image of a cell is loaded (and corrupted) once for the whole grid.

Each data batch of b images is repeated K times (one copy per grid value)
and run as one model batch of b*K rows, with a per-sample lambda tensor of
shape (b*K,) on the swept layers; b = batch_size // K bounds the rows per pass
by batch_size. So K lambdas cost about K model passes and the data work once.

The stem's per-sample reconstruction error and code density come from
record_stats and are summed per grid value. They cost one more synthesis
convolution of the stem per pass (3-10 % of a width-16 digits SDNet-18's
time on the CPU), so ``stats`` says where they are needed: "all" (every value: the
store's mean_recon_error / mean_code_density per grid cell, which the report's
sparsity and recon-error curves read; what the tuner records), "reference"
(only the value that reproduces the trained lambda: all the recon rule's fit
needs), or "none" (accuracy only).
"""

from __future__ import annotations

import contextlib
import math
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
from robust_csc.user_errors import worker_errors


STATS = ("all", "reference", "none")


@dataclass
class SweepCell:
    """Per grid value on one cell: n images, correct counts, mean stem recon error and code density
    (NaN at values whose statistics were not recorded); index (n,) the images' test-set indices and
    flags (K, n) which of them each grid value got right (None when read back from a legacy store)."""

    values: tuple[float, ...]
    n: int
    correct: np.ndarray  # (K,) int
    recon_error: np.ndarray  # (K,) mean over images
    code_density: np.ndarray  # (K,)
    seconds: float
    index: np.ndarray | None = None  # (n,) int64
    flags: np.ndarray | None = None  # (K, n) bool

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
    stats: str = "all",
) -> SweepCell:
    """Accuracy (and the stem's recon error and code density, see ``stats``) of one cell at every value,
    loading each image once."""
    check_layers(layers)
    if stats not in STATS:
        raise RobustCSCError(f"unknown stats choice {stats!r}; use one of {', '.join(STATS)}")
    values = tuple(float(v) for v in values)
    k = len(values)
    if k == 0:
        raise RobustCSCError("the lambda grid is empty; pass at least one value")
    # The grid values whose statistics are recorded: all, the reference's only, or none.
    if stats == "all":
        recorded = range(k)
    elif stats == "reference":
        reference = reference_value(model, layers)
        found = [r for r, v in enumerate(values) if math.isclose(v, reference)]
        if not found:
            raise RobustCSCError(
                f"stats='reference' needs the reference value {reference:g} in the grid {list(values)}; "
                "add it or use stats='all'"
            )
        recorded = range(found[0], found[0] + 1)
    else:
        recorded = range(0)
    device = torch.device(device) if device is not None else model_device(model)
    per_batch = max(1, batch_size // k)
    loader = DataLoader(data, batch_size=per_batch, shuffle=False, num_workers=num_workers,
                        pin_memory=device.type == "cuda")
    grid = torch.tensor(values, dtype=torch.float32, device=device)
    correct = torch.zeros(k, dtype=torch.int64, device=device)
    flag_parts: list[Tensor] = []  # (K, b) per batch, kept on the device: one copy at the end
    index_parts: list[Tensor] = []
    recon = torch.zeros(len(recorded), dtype=torch.float64, device=device)
    density = torch.zeros(len(recorded), dtype=torch.float64, device=device)
    n = 0
    start = time.perf_counter()
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), (record_stats(model, layers="stem") if recorded else contextlib.nullcontext()) as stem:
            stem_layer = next(iter(stem.values())) if recorded else None
            for batch in worker_errors(loader):  # a failing worker: its sentence, and the workers stopped now
                images = batch[0].to(device, non_blocking=True)
                labels = torch.as_tensor(batch[1]).to(device, non_blocking=True)
                b = images.shape[0]
                if stem_layer is not None:
                    # Rows r*b .. (r+1)*b - 1 carry grid value r: record only the chosen values' rows.
                    stem_layer.stats_rows = slice(recorded.start * b, recorded.stop * b)
                # Row r*b + i is image i at grid value r.
                lam = grid.repeat_interleave(b)
                with per_sample_lambdas(model, layers, lam):
                    logits = model(images.repeat(k, 1, 1, 1))
                right = logits.argmax(dim=1).view(k, b) == labels.view(1, b)
                correct += right.sum(1)
                flag_parts.append(right)
                # Items carry their test-set index (image, label, index); plain pairs count by position.
                index_parts.append(torch.as_tensor(batch[2]) if len(batch) > 2 else torch.arange(n, n + b))
                if stem_layer is not None:
                    last = stem_layer.last_stats
                    recon += last.recon_error.view(len(recorded), b).sum(1, dtype=torch.float64)
                    density += last.code_density.view(len(recorded), b).sum(1, dtype=torch.float64)
                n += b
    finally:
        model.train(was_training)
    if n == 0:
        raise RobustCSCError("a cell of the tuning split holds no images; use more images per cell")
    recon_error = np.full(k, np.nan)
    code_density = np.full(k, np.nan)
    recon_error[recorded.start:recorded.stop] = (recon / n).cpu().numpy()
    code_density[recorded.start:recorded.stop] = (density / n).cpu().numpy()
    return SweepCell(
        values=values,
        n=n,
        correct=correct.cpu().numpy(),
        recon_error=recon_error,
        code_density=code_density,
        seconds=time.perf_counter() - start,
        index=torch.cat(index_parts).to(torch.int64).numpy(),
        flags=torch.cat(flag_parts, dim=1).cpu().numpy(),
    )


__all__ = ["STATS", "SweepCell", "per_sample_lambdas", "reference_value", "sweep_cell", "trained_lambdas"]
