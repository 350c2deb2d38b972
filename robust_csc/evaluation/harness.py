"""Evaluate a model on a corruption suite, one committed store row per (lambda setting, cell).

    suite = generated_suite("digits", corruptions=["gaussian_noise"], severities=[1, 5])
    result = evaluate(model, suite, store="results.sqlite", model_name="sdnet18",
                      checkpoint_sha256=sha, dataset="digits", clean=generated_clean("digits"))
    result.tables["trained"]   # corruption x severity accuracies

Lambda settings (robust_csc.lambdas): None ("trained"), a number (every CSC
layer), "stem=0.5", "scale=1.5", a LambdaSetting or a tuned policy
(robust_csc.tuning); every cell runs inside ``setting.applied(model,
corruption, severity)`` and is stored under ``setting.name``.

A cell already in the store is skipped, so an interrupted run is resumed by
running the same call again: it loses at most the cell that was in flight;
recompute=True runs and replaces it instead.  Every cell stores its
per-example outcomes (robust_csc.evaluation.outcomes) and the robust-csc
version that computed it.

A tuned policy was fitted on images of its suite: it is scored only on its
reporting split.  Given the whole split it was tuned on, the harness keeps
the reporting half (every setting of the run is scored on it, so they stay
paired); given another suite or split it refuses; and every scored batch is
checked against the policy's tuning indices.

The model runs in eval mode under robust_csc.deployed.frozen_state: its
weights, buffers and lambdas are checked unchanged when the run ends.
Under torchrun the pending cells are dealt out round-robin over the ranks;
each rank writes its own cells (SQLite in WAL mode with a busy timeout lets
several processes of one machine write the same file).
"""

from __future__ import annotations

import itertools
import math
import numbers
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import pandas as pd
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Dataset

from robust_csc import __version__
from robust_csc.adaptation import prepare_settings
from robust_csc.csc import csc_layers, record_stats
from robust_csc.data.corrupted import CorruptionSuite
from robust_csc.deployed import eval_only, frozen_state
from robust_csc.errors import RobustCSCError
from robust_csc.lambdas import LambdaSetting, as_setting, check_model_takes, check_settings_cover, fitted_part
from robust_csc.evaluation.batches import cell_batch_loader
from robust_csc.evaluation.metrics import CLEAN, accuracy_table, summary
from robust_csc.evaluation.outcomes import Outcomes
from robust_csc.evaluation.store import CellKey, ResultsStore, open_store
from robust_csc.models.sources import as_loaded, identify
from robust_csc.runtime import model_device
from robust_csc.user_errors import worker_errors
from robust_csc.validation import refuse_nonfinite_outputs

TRAINED = "trained"  # the lambda setting of a model run with the lambdas it was trained with


@dataclass
class EvalResult:
    """What evaluate() did and the stored cells of this model, checkpoint, data set and split.

    cells_run: cells evaluated by this call (over all ranks under torchrun);
    cells_skipped: cells found already stored; frame: ResultsStore.to_frame of
    this model/checkpoint/dataset/split (earlier runs' lambda settings
    included); tables / summaries: accuracy_table / summary per requested
    lambda setting.
    """

    cells_run: int
    cells_skipped: int
    frame: pd.DataFrame
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    summaries: dict[str, dict] = field(default_factory=dict)
    split: str = "test"  # the split scored (a policy's reporting split when one was evaluated)
    other_versions: dict[str, int] = field(default_factory=dict)  # skipped cells computed by other robust-csc versions

    def notes(self) -> list[str]:
        """What a reader of the numbers must know: cells reused from other robust-csc versions."""
        if not self.other_versions:
            return []
        which = ", ".join(f"{count} by {version}" for version, count in sorted(self.other_versions.items()))
        return [f"reused cells computed by other robust-csc versions ({which}); pass --recompute (recompute=True) to redo them"]


def lambda_setting_name(value: float | None) -> str:
    """The store's name of a lambda setting: "trained" for None, else the value as f"{value:g}"."""
    return as_setting(value).name


@dataclass(frozen=True)
class _Cell:
    setting: Any  # a LambdaSetting or a policy (robust_csc.lambdas.LambdaPolicyLike)
    corruption: str
    severity: int


# ---------------------------------------------------------------- checks


def _check_lambdas(lambdas: Iterable[Any]) -> list[Any]:
    """The distinct lambda settings, in order; two different settings may not share a store name."""
    if isinstance(lambdas, (str, bytes)) or not isinstance(lambdas, Iterable):
        lambdas = [lambdas]  # a single value (or policy) is a one-setting list
    checked: list[Any] = []
    names: dict[str, Any] = {}
    for value in lambdas:
        if isinstance(value, numbers.Real) and not isinstance(value, bool):
            if not math.isfinite(value) or value < 0:
                raise RobustCSCError(f"lambda {value!r} is invalid; pass finite numbers >= 0 (or None for the trained lambdas)")
        setting = as_setting(value)
        name = setting.name
        if name in names:
            # Two fixed settings that print alike would share one store row (a policy's name is its content hash).
            if isinstance(setting, LambdaSetting) and names[name] != setting:
                raise RobustCSCError(
                    f"lambda settings {names[name]!r} and {setting!r} share the setting name {name!r}; "
                    "pass values that differ in 6 significant digits"
                )
            continue  # a repeated value is one setting
        names[name] = setting
        checked.append(setting)
    if not checked:
        raise RobustCSCError("no lambda setting given; pass lambdas=(None,) for the trained lambdas or a list of values")
    return checked


def _check_int(value: object, what: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise RobustCSCError(f"{what} {value!r} is invalid; pass an integer >= {minimum}")
    return int(value)


def _distributed() -> tuple[int, int]:
    """(rank, world size); (0, 1) outside torchrun."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


# ---------------------------------------------------------------- one cell


def _cell_batches(
    datas: Sequence[Dataset], batch_size: int, num_workers: int, pin_memory: bool
) -> Iterator[Iterator[Any]]:
    """The batches of each cell in turn, from one DataLoader over all of them.

    One loader, not one per cell: its workers start once and read ahead across
    cell boundaries (a loader per cell restarted them every cell: ~50 ms per
    cell with 2 workers here, more for a CUDA process forking 8). Its items are
    whole batches (robust_csc.evaluation.batches): a stored cell is read as one
    slice per batch, not image by image.
    """
    if not datas:
        return
    loader, counts = cell_batch_loader(datas, batch_size, num_workers, pin_memory)
    batches = worker_errors(loader)  # a failing worker: its sentence, and the workers stopped now
    for count in counts:
        yield itertools.islice(batches, count)


def _counted(batches: Iterable[Any], bar: Any) -> Iterator[Any]:
    """The batches, advancing the progress bar by each batch's images once it is done."""
    pending = 0
    for batch in batches:
        bar.update(pending)
        pending = int(torch.as_tensor(batch[1]).shape[0])
        yield batch
    bar.update(pending)


def _run_cell(
    model: nn.Module,
    batches: Iterable[Any],
    cell: _Cell,
    stem_stats: bool,
    device: torch.device,
    never_score: torch.Tensor | None = None,
) -> dict[str, Any]:
    """n, correct, per-example outcomes, seconds, the stem's mean recon error / code density, and the
    setting's extra, of one cell.  never_score: test-set indices a tuned policy was fitted on."""
    start = time.perf_counter()
    # Sums and flags stay on the device: one host sync per cell, not per batch.
    n = 0
    correct = torch.zeros((), dtype=torch.int64, device=device)
    flag_parts: list[torch.Tensor] = []
    index_parts: list[torch.Tensor] = []
    recon = torch.zeros((), dtype=torch.float64, device=device)
    density = torch.zeros((), dtype=torch.float64, device=device)
    finite = torch.ones((), dtype=torch.bool, device=device)
    extra: dict[str, Any] = {}
    with torch.inference_mode(not getattr(cell.setting, "needs_grad", False)):  # tent takes gradient steps
        stats = record_stats(model, layers="stem") if stem_stats else nullcontext()
        with cell.setting.applied(model, cell.corruption, cell.severity) as applied, stats as layers:
            run = eval_only(applied)
            for batch in batches:
                images, labels = batch[0], batch[1]
                count = int(torch.as_tensor(labels).shape[0])
                # Items carry their test-set index (image, label, index); plain pairs count by position.
                index = torch.as_tensor(batch[2]).reshape(-1) if len(batch) > 2 else torch.arange(n, n + count)
                if never_score is not None and bool(torch.isin(index, never_score).any()):
                    raise RobustCSCError(
                        f"image {int(index[torch.isin(index, never_score)][0])} of a tuned policy's tuning split was about "
                        "to be scored; score the policy on its reporting split (evaluate takes it from the policy)"
                    )
                images = images.to(device, non_blocking=True)
                labels = torch.as_tensor(labels).to(device, non_blocking=True)
                logits = run(images)
                finite &= torch.isfinite(logits).all()
                right = logits.argmax(dim=1) == labels
                correct += right.sum()
                flag_parts.append(right)
                index_parts.append(index)
                n += count
                if stem_stats:
                    last = next(iter(layers.values())).last_stats
                    recon += last.recon_error.sum(dtype=torch.float64)
                    density += last.code_density.sum(dtype=torch.float64)
            describe = getattr(cell.setting, "cell_extra", None)  # tuned policies say what they chose
            if describe is not None:
                extra = dict(describe(cell.corruption, cell.severity, applied))
    refuse_nonfinite_outputs(finite, f"cell {cell.corruption} {cell.severity} at lambda {cell.setting.name}")
    flags = torch.cat(flag_parts).cpu() if flag_parts else torch.zeros(0, dtype=torch.bool)
    index = torch.cat(index_parts) if index_parts else torch.zeros(0, dtype=torch.int64)
    values: dict[str, Any] = {"n": n, "correct": int(correct.item()), "extra": extra,
                              "outcomes": Outcomes(index.numpy(), flags.numpy())}
    if stem_stats and n > 0:
        values["mean_recon_error"] = recon.item() / n
        values["mean_code_density"] = density.item() / n
    values["seconds"] = time.perf_counter() - start
    return values


# ---------------------------------------------------------------- the harness


def evaluate(
    model: nn.Module,
    suite: CorruptionSuite,
    *,
    store: ResultsStore | str | Path,
    model_name: str | None = None,
    checkpoint_sha256: str | None = None,
    dataset: str,
    split: str = "test",
    lambdas: Iterable[Any] = (None,),
    clean: Dataset | None = None,
    batch_size: int = 256,
    num_workers: int = 0,
    device: str | torch.device | None = None,
    progress: bool = False,
    recompute: bool = False,
    stem_stats: bool = True,
) -> EvalResult:
    """Evaluate model on every (lambda setting, cell) not yet in store; see the module docstring.

    lambdas: None = the trained lambdas, a number = every CSC layer's lambda
    set to it, "stem=0.5" / "scale=1.5" / a LambdaSetting / a tuned policy
    (see robust_csc.lambdas.as_setting); clean: the clean test set (items (image, label, index)), run
    first as the cell ("none", 0); device: None = where the model already is,
    else the model is moved there (and left there). The model is run in eval
    mode and given back in the mode it came in.  recompute: run every cell
    and replace the stored ones (after a fix, or to record outcomes for cells
    of an older version).  A tuned policy among the settings restricts the run
    to its reporting split (see the module docstring).  stem_stats: record the
    CSC stem's mean recon error and code density in every cell (one more
    synthesis per batch).
    Each finished cell is committed at once as one store row.
    model may be any nn.Module or a robust_csc.models.sources.LoadedModel;
    model_name / checkpoint_sha256 default to its name and weights hash
    (robust_csc.models.sources.identify), so a rerun finds its cells.
    """
    if not isinstance(suite, CorruptionSuite):
        raise RobustCSCError(f"suite is a {type(suite).__name__}; pass a CorruptionSuite (load_cifar_c, generated_suite, ...)")
    model, model_name, checkpoint_sha256 = identify(model, model_name, checkpoint_sha256)
    settings = _check_lambdas(lambdas)
    batch_size = _check_int(batch_size, "batch_size", 1)
    num_workers = _check_int(num_workers, "num_workers", 0)
    has_csc = bool(csc_layers(model))
    # The stem's recon error and code density cost one more synthesis A z per batch (about 8% of a width-16
    # SDNet-18's forward pass on the CPU); stem_stats=False leaves them out of the cells.
    stats = has_csc and bool(stem_stats)
    settings = prepare_settings(settings, model, batch_size, model_name)  # TTA: named for batch_size, BatchNorm checked
    for setting in settings:
        check_model_takes(model, setting, model_name)
    config = getattr(model, "config", None)  # create_model records its arguments there
    arguments = config.get("arguments") if isinstance(config, Mapping) else None
    config_classes = arguments.get("num_classes") if isinstance(arguments, Mapping) else None
    if config_classes is not None and config_classes != suite.num_classes:
        # A model built for another class count would be scored silently wrong.
        raise RobustCSCError(
            f"{model_name} has {config_classes} classes but the suite {suite.name} has {suite.num_classes}; "
            "evaluate a model trained on the suite's data set"
        )
    corrupted = [(cell.corruption, cell.severity) for cell in suite.cells()]
    if not corrupted and clean is None:
        raise RobustCSCError(f"the suite {suite.name} selects no cells and no clean set was given; select at least one corruption and severity")
    check_settings_cover(settings, ([(CLEAN, 0)] if clean is not None else []) + corrupted)  # before any cell is stored
    suite, clean, split, never_score = scoring_split(settings, suite, clean, split)
    base_key = CellKey(model_name, checkpoint_sha256, dataset, split)  # checks the identity fields up front
    device = model_device(model) if device is None else torch.device(device)

    store, owned = open_store(store)
    try:
        rank, world = _distributed()
        frame = store.to_frame(
            model=model_name, checkpoint_sha256=checkpoint_sha256, dataset=dataset, split=split, attack="none", epsilon=0.0
        )
        versions = {_frame_key(base_key, row): row["code_version"] for row in frame.to_dict("records")}
        done = set() if recompute else set(versions)
        cells = [
            _Cell(setting, corruption, severity)
            for setting in settings
            for corruption, severity in ([(CLEAN, 0)] if clean is not None else []) + corrupted
        ]
        keys = {cell: _key(base_key, cell) for cell in cells}
        pending = [cell for cell in cells if keys[cell] not in done]
        skipped = len(cells) - len(pending)
        if world > 1:
            # Rank 0's view decides: ranks reading the store at different moments
            # would otherwise deal out different lists and could leave cells to nobody.
            shared = [[i for i, cell in enumerate(cells) if keys[cell] not in done]]
            dist.broadcast_object_list(shared, src=0)
            pending = [cells[i] for i in shared[0]]
            skipped = len(cells) - len(pending)
        mine = pending[rank::world]
        other_versions: dict[str, int] = {}
        for cell in cells:
            version = versions.get(keys[cell], __version__)
            if keys[cell] in done and version != __version__:
                name = version or "robust-csc < 0.2"
                other_versions[name] = other_versions.get(name, 0) + 1

        model.to(device)
        bar = None
        datas = [clean if cell.corruption == CLEAN else suite.dataset(cell.corruption, cell.severity) for cell in mine]
        if progress and rank == 0:
            from tqdm.auto import tqdm

            # Images, not cells: a bar over cells sat at 0% for the whole first cell.
            bar = tqdm(total=sum(len(data) for data in datas), desc=f"{model_name} on {suite.name}", unit="image",
                       unit_scale=True)
        try:
            cell_batches = _cell_batches(datas, batch_size, num_workers, pin_memory=device.type == "cuda")
            with frozen_state(model, f"evaluating {model_name}"):
                for index, (cell, batches) in enumerate(zip(mine, cell_batches)):
                    if bar is not None:  # names the cell in flight
                        bar.set_postfix_str(f"cell {index + 1}/{len(mine)}: {cell.corruption} {cell.severity}, "
                                            f"lambda {cell.setting.name}")
                        batches = _counted(batches, bar)
                    values = _run_cell(model, batches, cell, stats, device, never_score)
                    values["extra"] = {"suite": suite.name, "batch_size": batch_size, **values["extra"]}
                    if world > 1:  # which process wrote the row, for checking a sharded run
                        values["extra"]["rank"] = rank
                    store.add(keys[cell], values, replace=recompute)  # committed now: a crash loses at most the next cell
        finally:
            if bar is not None:
                bar.close()

        if world > 1:
            dist.barrier()  # every rank's cells are committed before the frame is read
        frame = store.to_frame(model=model_name, checkpoint_sha256=checkpoint_sha256, dataset=dataset, split=split)
    finally:
        if owned:
            store.close()
    result = _result(frame, model_name, settings, len(pending), skipped)
    result.split = split
    result.other_versions = other_versions
    return result


def scoring_split(
    settings: Sequence[Any], suite: CorruptionSuite, clean: Dataset | None, split: str
) -> tuple[CorruptionSuite, Dataset | None, str, torch.Tensor | None]:
    """(suite, clean, split, indices never to score): a tuned policy's reporting half, or the run as given.

    Every setting of the run is scored on the same images, so a tuned policy
    and the trained lambdas beside it stay paired.
    """
    fitted = list({id(p): p for p in (fitted_part(s) for s in settings) if p is not None}.values())
    if not fitted:
        return suite, clean, split, None
    plans = {s.scoring_plan(suite.name, suite.images_per_cell, split) for s in fitted}
    if len({s.report_split for s in fitted}) > 1 or len(plans) > 1:
        raise RobustCSCError("the tuned policies of this run were tuned on different splits; evaluate them one run each")
    first = fitted[0]
    if plans == {"restrict"}:
        halving = first.reporting_split()
        suite = halving.suite(suite, "report")
        clean = halving.subset(clean, "report") if clean is not None else None
        split = first.report_split
    never = torch.as_tensor(sorted({int(i) for s in fitted for i in s.tune_index}), dtype=torch.int64)
    return suite, clean, split, never


def _frame_key(base: CellKey, row: Mapping[str, Any]) -> CellKey:
    return CellKey(base.model, base.checkpoint_sha256, base.dataset, base.split, row["corruption"], int(row["severity"]),
                   row["lambda_setting"], row["attack"], float(row["epsilon"]))


def _key(base: CellKey, cell: _Cell) -> CellKey:
    return CellKey(
        base.model,
        base.checkpoint_sha256,
        base.dataset,
        base.split,
        corruption=cell.corruption,
        severity=cell.severity,
        lambda_setting=cell.setting.name,
    )


def _result(frame: pd.DataFrame, model_name: str, settings: list, run: int, skipped: int) -> EvalResult:
    tables: dict[str, pd.DataFrame] = {}
    summaries: dict[str, dict] = {}
    unattacked = frame[frame["attack"] == "none"]
    for setting in settings:
        name = setting.name
        rows = unattacked[unattacked["lambda_setting"] == name]
        if rows.empty:  # cannot happen after a complete run; kept for a store edited meanwhile
            continue
        tables[name] = accuracy_table(rows, model_name)
        summaries[name] = summary(rows, model_name)
    return EvalResult(cells_run=run, cells_skipped=skipped, frame=frame, tables=tables, summaries=summaries)


def evaluate_checkpoint(
    path: str | Path,
    suite: CorruptionSuite,
    *,
    store: ResultsStore | str | Path,
    lambdas: Iterable[Any] = (None,),
    clean: Dataset | None = None,
    **kwargs: Any,
) -> EvalResult:
    """evaluate() a saved checkpoint: model_name = its arch, checkpoint_sha256 = the file's sha256,
    dataset = its recorded data set unless dataset= is given (other keywords go to evaluate).
    path may also be a LoadedModel (robust_csc.models.sources.load_model): its name and hash."""
    if not isinstance(suite, CorruptionSuite):
        raise RobustCSCError(f"suite is a {type(suite).__name__}; pass a CorruptionSuite (load_cifar_c, generated_suite, ...)")
    store, owned = open_store(store)  # a bad store fails before the model is loaded
    try:
        loaded = as_loaded(path, expect_num_classes=suite.num_classes)
        kwargs.setdefault("model_name", loaded.name)
        if kwargs.get("dataset") is None:
            kwargs["dataset"] = loaded.dataset
        if not kwargs["dataset"]:
            raise RobustCSCError(f"{path} records no data set; pass dataset= (the name of the evaluated data set)")
        kwargs.setdefault("checkpoint_sha256", loaded.sha256)
        return evaluate(loaded.model, suite, store=store, lambdas=lambdas, clean=clean, **kwargs)
    finally:
        if owned:
            store.close()


__all__ = ["EvalResult", "TRAINED", "evaluate", "evaluate_checkpoint", "lambda_setting_name"]
