"""Accuracy against a continuous noise level, per lambda setting: the paper's lambda-versus-noise curves.

The corruption suites have five fixed severities; these curves sweep the level
itself (gaussian sigma = 0, 0.05, 0.13, ...).  Each clean batch is read once
and moved to the model's device; every level's noise is added there by
add_noise (seeded per image index, so a curve does not depend on the batch
size or the order), and every lambda setting runs on that same noisy batch.
Noise therefore costs one kernel per (batch, level), not one per lambda.
Each row carries n, its correct count, the 95 % Wilson interval and the
per-example outcomes.  A tuned policy is only ever run on images it was not
tuned on (its reporting half of the clean images: LambdaPolicy.reporting_images),
checked batch by batch.

store_curve writes a curve into the results store, one cell per (level,
setting), keyed like the suites' cells: data set f"{base}-noise" (with
"[seed=N]" for a seed other than 0), the split of the images, corruption
f"{kind}_noise@{level!r}" (the level's shortest exact repr, so it reads back to
the same float: curve_level), severity 0 (a level is not a severity), and the
lambda setting's name.  A rerun keeps the cells already stored (recompute
replaces them); the report draws every stored curve with its intervals.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Iterable, Sequence

import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from robust_csc.corruptions.noise import NOISE_KINDS, add_noise, check_noise_level
from robust_csc.deployed import eval_only, frozen_state
from robust_csc.adaptation import adaptation_of
from robust_csc.errors import RobustCSCError
from robust_csc.evaluation.harness import _check_int
from robust_csc.evaluation.outcomes import Outcomes
from robust_csc.evaluation.stats import wilson_columns
from robust_csc.lambdas import as_setting, check_model_takes, fitted_part
from robust_csc.runtime import model_device
from robust_csc.user_errors import worker_errors

COLUMNS = ("kind", "level", "lambda_setting", "n", "correct", "accuracy", "low", "high")
LEVEL_MARK = "@"  # corruption f"{kind}_noise@{level!r}": a cell of a continuous noise level


def curve_corruption(kind: str, level: float) -> str:
    """The store's corruption name of a noise-curve cell: "gaussian_noise@0.1" (repr: the exact float)."""
    return f"{noise_kind(kind)}_noise{LEVEL_MARK}{float(level)!r}"


def curve_level(corruption: str) -> tuple[str, float] | None:
    """(kind, level) of a noise-curve cell's corruption name; None for any other cell."""
    kind, mark, level = str(corruption).partition(LEVEL_MARK)
    if not mark or not kind.endswith("_noise"):
        return None
    try:
        return kind[: -len("_noise")], float(level)
    except ValueError:
        return None


def curve_dataset(base: str, seed: int = 0) -> str:
    """The store's data set name of a noise curve on base's test images: "digits-noise", "digits-noise[seed=2]"."""
    return f"{base}-noise" + (f"[seed={seed}]" if seed else "")


def noise_kind(kind: object) -> str:
    """'gaussian' or 'gaussian_noise' -> 'gaussian' (the four add_noise kinds)."""
    name = str(kind).strip().lower()
    name = name[: -len("_noise")] if name.endswith("_noise") else name
    if name not in NOISE_KINDS:
        raise RobustCSCError(f"unknown noise kind {kind!r}; use one of {', '.join(NOISE_KINDS)}")
    return name


def check_levels(kind: str, levels: Iterable[object]) -> list[float]:
    """The levels as floats, each valid for kind, none twice, at least one."""
    if isinstance(levels, (str, bytes)) or not isinstance(levels, Iterable):
        raise RobustCSCError(f"levels must be a list of numbers, got {levels!r}; pass e.g. [0, 0.05, 0.1]")
    values = [check_noise_level(kind, level) for level in levels]
    if not values:
        raise RobustCSCError("no noise levels given; pass at least one, e.g. [0, 0.05, 0.1]")
    repeated = sorted({v for v in values if values.count(v) > 1})
    if repeated:
        raise RobustCSCError(f"noise level {repeated[0]:g} is listed twice; list each level once")
    return values


def _settings(model: nn.Module, lambdas: Iterable[Any], model_name: str) -> list:
    settings = [as_setting(value) for value in lambdas]
    if not settings:
        raise RobustCSCError("no lambda settings given; pass at least one, e.g. [None] for the trained lambdas")
    names = [setting.name for setting in settings]
    for setting in settings:
        if adaptation_of(setting) is not None:
            raise RobustCSCError(f"{setting.name} adapts the model during a cell; noise curves take lambda settings only")
        if getattr(setting, "rule", None) == "grid":
            # A per-cell policy holds one lambda per severity, and these levels are not severities.
            raise RobustCSCError(
                f"lambda policy {setting.name} chooses per (corruption, severity) cell, not per noise level; "
                "use a recon-rule policy (tune-lambda --rule recon) or fixed lambdas"
            )
        check_model_takes(model, setting, model_name)
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise RobustCSCError(f"lambda setting {repeated[0]} is listed twice; list each setting once")
    return settings


def noise_curve(
    model: nn.Module,
    clean: Dataset,
    kind: str,
    levels: Sequence[float],
    lambdas: Iterable[Any] = (None,),
    *,
    seed: int = 0,
    batch_size: int = 256,
    num_workers: int = 0,
    device: str | torch.device | None = None,
    compiled: bool = True,
    model_name: str = "model",
    progress: bool = False,
) -> pd.DataFrame:
    """Accuracy of model on clean's images with kind noise at each level, under each lambda setting.

    clean: items (image float CHW in [0, 1], label[, index]); without an index,
    an image's position in clean seeds its noise.  kind: gaussian, shot,
    impulse or speckle (add_noise's levels: sigma, photons, amount, sigma);
    lambdas: what evaluate() takes (None = trained, a number, "stem=0.5",
    "scale=1.5", a recon-rule policy); device: None = where the model is;
    compiled: add_noise's fused kernels (they fall back to eager torch if
    compiling fails).  Returns one row per (level, setting), levels in the
    order given: kind, level, lambda_setting, n, correct, accuracy.
    """
    kind = noise_kind(kind)
    values = check_levels(kind, levels)
    settings = _settings(model, lambdas, model_name)
    batch_size = _check_int(batch_size, "batch_size", 1)
    num_workers = _check_int(num_workers, "num_workers", 0)
    if len(clean) == 0:
        raise RobustCSCError("the clean data set is empty; pass a data set with at least one image")
    device = model_device(model) if device is None else torch.device(device)
    corruption = f"{kind}_noise"

    loader = DataLoader(clean, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        pin_memory=device.type == "cuda")
    correct = torch.zeros(len(values), len(settings), dtype=torch.int64, device=device)
    flags: list[list[list[torch.Tensor]]] = [[[] for _ in settings] for _ in values]
    index_parts: list[torch.Tensor] = []
    fitted = [p for p in (fitted_part(s) for s in settings) if p is not None]
    never = [torch.as_tensor(p.tune_index, dtype=torch.int64) for p in fitted]
    never_score = torch.cat(never) if never else None
    n = 0
    started = time.perf_counter()
    model.to(device)
    batches = worker_errors(loader)  # a failing worker: its sentence, and the workers stopped now
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc=f"{model_name} {kind} noise", unit="batch", total=len(loader))
    with frozen_state(model, f"the noise curve of {model_name}"), torch.inference_mode():
        for batch in batches:
            images, labels = batch[0].to(device, non_blocking=True), torch.as_tensor(batch[1]).to(device)
            # Position in clean when its items carry no index (the loader keeps clean's order).
            indices = batch[2] if len(batch) > 2 else torch.arange(n, n + len(labels))
            if never_score is not None and bool(torch.isin(torch.as_tensor(indices), never_score).any()):
                raise RobustCSCError(
                    "an image a lambda policy was tuned on was about to be scored; run the policy on its reporting "
                    "images (LambdaPolicy.reporting_images; the CLI's noise-curve picks them)"
                )
            for i, level in enumerate(values):
                noisy = add_noise(images, kind, level, seed, indices, compiled=compiled)
                for j, setting in enumerate(settings):
                    with setting.applied(model, corruption, 0) as applied:
                        right = eval_only(applied)(noisy).argmax(dim=1) == labels
                    correct[i, j] += right.sum()
                    flags[i][j].append(right)
            index_parts.append(torch.as_tensor(indices).reshape(-1).cpu())
            n += int(labels.shape[0])

    counts = correct.cpu().tolist()
    rows = [
        (kind, level, setting.name, n, counts[i][j], counts[i][j] / n)
        for i, level in enumerate(values)
        for j, setting in enumerate(settings)
    ]
    frame = pd.DataFrame(rows, columns=list(COLUMNS[:-2]))
    frame["low"], frame["high"] = wilson_columns(frame["correct"].tolist(), frame["n"].tolist())
    index = torch.cat(index_parts).numpy()
    frame.attrs["seconds"] = time.perf_counter() - started
    frame["outcomes"] = [Outcomes(index, torch.cat(flags[i][j]).cpu().numpy())
                         for i in range(len(values)) for j in range(len(settings))]
    return frame


def store_curve(
    frame: pd.DataFrame,
    store: Any,
    *,
    model_name: str,
    checkpoint_sha256: str,
    dataset: str,
    split: str,
    seed: int = 0,
    batch_size: int | None = None,
    recompute: bool = False,
) -> tuple[int, int]:
    """Write noise_curve's frame into the results store, one cell per (level, lambda setting); (written, kept).

    dataset: the curve's data set name (curve_dataset(base, seed)); split: the images' split ("test[:200]",
    or a policy's reporting split).  Cells already stored are kept unless recompute.
    """
    from robust_csc.evaluation.store import CellKey, open_store

    missing = [c for c in ("kind", "level", "lambda_setting", "n", "correct", "outcomes") if c not in frame.columns]
    if missing:
        raise RobustCSCError(f"the frame lacks column {missing[0]!r}; pass what noise_curve returned")
    seconds = float(frame.attrs.get("seconds", 0.0)) / max(len(frame), 1)  # the curve's time, shared by its cells
    handle, owned = open_store(store)
    written = kept = 0
    try:
        for row in frame.itertuples(index=False):
            key = CellKey(model_name, checkpoint_sha256, dataset, split, curve_corruption(row.kind, row.level), 0,
                          row.lambda_setting)
            extra = {"kind": row.kind, "level": float(row.level), "seed": seed}
            if batch_size is not None:
                extra["batch_size"] = batch_size
            values = {"n": int(row.n), "correct": int(row.correct), "seconds": seconds, "extra": extra,
                      "outcomes": row.outcomes}
            if handle.add(key, values, replace=recompute):
                written += 1
            else:
                kept += 1
    finally:
        if owned:
            handle.close()
    return written, kept


def curve_files(out: str | Path) -> dict[str, Path]:
    """What save_curve writes for out (a .csv): the table, and its figure beside it as .png and .pdf."""
    out = Path(out)
    return {"csv": out, "png": out.with_suffix(".png"), "pdf": out.with_suffix(".pdf")}


def save_curve(frame: pd.DataFrame, out: str | Path, title: str) -> dict[str, Path]:
    """curve_files(out), each file written whole or not at all."""
    from robust_csc.atomic import atomic_write
    from robust_csc.reports.plots import accuracy_vs_noise_level, save_figure

    paths = curve_files(out)
    save_figure(accuracy_vs_noise_level(frame, title), paths["csv"].parent, paths["csv"].stem)
    table = frame.drop(columns=["outcomes"], errors="ignore")  # per-example outcomes live in the store, not the CSV
    atomic_write(paths["csv"], lambda f: f.write(table.to_csv(index=False).encode("utf-8")))
    return paths


def curve_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Accuracy with one row per level and one column per lambda setting (in the frame's order)."""
    missing = [c for c in ("level", "lambda_setting", "accuracy") if c not in frame.columns]
    if missing:
        raise RobustCSCError(f"the frame lacks column {missing[0]!r}; pass what noise_curve returned")
    table = frame.pivot(index="level", columns="lambda_setting", values="accuracy")
    settings = list(dict.fromkeys(frame["lambda_setting"]))
    levels = list(dict.fromkeys(frame["level"]))
    return table.loc[levels, settings].rename_axis(columns=None)


def curve_text(frame: pd.DataFrame) -> pd.DataFrame:
    """curve_table as text: accuracy in % ± half its 95% Wilson interval."""
    text = frame.assign(text=[f"{a * 100:.1f}±{(h - lo) * 50:.1f}" for a, lo, h in zip(frame["accuracy"], frame["low"], frame["high"])])
    table = text.pivot(index="level", columns="lambda_setting", values="text")
    settings = list(dict.fromkeys(frame["lambda_setting"]))
    levels = list(dict.fromkeys(frame["level"]))
    return table.loc[levels, settings].rename_axis(columns=None)


def best_per_level(frame: pd.DataFrame) -> pd.DataFrame:
    """Per level: the lambda setting with the highest accuracy (the first listed on a tie) and that accuracy."""
    table = curve_table(frame)
    best = table.idxmax(axis=1)
    return pd.DataFrame({"best_lambda_setting": best, "accuracy": table.max(axis=1)})


__all__ = [
    "COLUMNS", "best_per_level", "check_levels", "curve_corruption", "curve_dataset", "curve_files", "curve_level",
    "curve_table", "curve_text", "noise_curve", "noise_kind", "save_curve", "store_curve",
]
