"""Tune lambda per (corruption, severity) cell: sweep on the tuning split, choose, report on the other split.

    result = tune_checkpoint("sdnet18.safetensors", suite, store="results.sqlite", clean=clean,
                             layers="stem", rule="grid", seed=0, out="policy.json")
    print("\\n".join(result.lines()))
    result.frame       # corruption, severity, lambda, acc_trained, acc_tuned, gain (reporting split)

Steps: (1) halve every cell's images into a tuning and a reporting split
(robust_csc.tuning.splits); (2) sweep the grid once per cell on the tuning
split (robust_csc.tuning.sweep) and store one cell per grid value there;
(3) choose per cell the value with the best tuning accuracy; ties go to the
value closest to the reference (the trained lambda: the least change to the
model), then to the smaller value; (4) fit the recon rule from the tuning
cells when rule="recon"; (5) evaluate on the reporting split, through the
evaluation harness, the trained lambdas, the per-cell choice (the oracle) and
the recon rule. A rerun reuses every stored cell.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import Dataset

from robust_csc.data.corrupted import CorruptionSuite
from robust_csc.deployed import frozen_state
from robust_csc.errors import RobustCSCError
from robust_csc.evaluation.harness import evaluate
from robust_csc.evaluation.metrics import CLEAN
from robust_csc.evaluation.outcomes import Outcomes, encode_index
from robust_csc.evaluation.stats import compare, format_difference
from robust_csc.evaluation.store import CellKey, ResultsStore, open_store
from robust_csc.models.sources import as_loaded, identify
from robust_csc.runtime import model_device
from robust_csc.tuning.grid import check_grid, check_layers, default_grid, setting_for
from robust_csc.tuning.policy import RULES, CellPolicy, LambdaPolicy, ReconPolicy
from robust_csc.tuning.rule import PER, fit_line
from robust_csc.tuning.splits import TuningSplit
from robust_csc.tuning.sweep import SweepCell, reference_value, sweep_cell, trained_lambdas


@dataclass
class TuneResult:
    """What tune() chose and measured.

    frame: one row per cell of the reporting split: corruption, severity,
    lambda (the per-cell choice), acc_trained, acc_tuned (the policy of the
    chosen rule), gain = acc_tuned - acc_trained with its paired bootstrap
    interval (gain_low, gain_high), the exact McNemar p_value and whether it is
    significant at 5 %, n; with rule="recon" also
    acc_oracle (the per-cell choice) and mean_lambda (the rule's mean choice).
    sweep: the tuning split's grid: corruption, severity, value, accuracy,
    recon_error, code_density, reference (whether the value is the trained one).
    """

    policy: LambdaPolicy
    oracle: CellPolicy
    frame: pd.DataFrame
    sweep: pd.DataFrame
    split: TuningSplit
    out: Path | None = None
    stats: dict[str, Any] = field(default_factory=dict)

    paired: dict[tuple[str, int], tuple[np.ndarray, np.ndarray]] = field(default_factory=dict, repr=False)

    def gains_by_severity(self) -> pd.DataFrame:
        """Per severity, over the corrupted cells: mean accuracy trained / tuned (/ oracle), mean lambda, and
        the mean gain with its paired bootstrap interval and p-value (the cells hold the same images, so one
        draw of images serves them all)."""
        rows = self.frame[self.frame["corruption"] != CLEAN]
        columns = [c for c in ("acc_trained", "acc_tuned", "acc_oracle", "gain", "lambda") if c in rows]
        means = rows.groupby("severity")[columns].mean()
        low, high, p_values = [], [], []
        for severity in means.index:
            cells = [(c, int(severity)) for c in rows.loc[rows["severity"] == severity, "corruption"]]
            tuned = np.stack([self.paired[cell][0] for cell in cells])
            trained = np.stack([self.paired[cell][1] for cell in cells])
            difference = compare(tuned, trained) if len(cells) > 1 else compare(tuned[0], trained[0])
            low.append(difference.low)
            high.append(difference.high)
            p_values.append(difference.p_value)
        return means.assign(gain_low=low, gain_high=high, p_value=p_values)

    def lines(self) -> list[str]:
        """The chosen lambda and the reporting-split accuracies per cell, then the gain per severity."""
        recon = "acc_oracle" in self.frame
        head = (f"lambda policy {self.policy.name} (rule {self.policy.rule}, layers {self.policy.layers}); "
                f"chosen on {self.split.tune_name} ({len(self.split.tune)} images per cell), "
                f"reported on {self.split.report_name} ({len(self.split.report)} images per cell); "
                "accuracy in %, gain in points with its 95% interval (paired bootstrap) and exact McNemar p")
        lines = [head]
        header = f"{'corruption':<18} {'sev':>3} {'lambda':>7} {'trained':>7} {'tuned':>7}  {'gain':<44}"
        if recon:
            header += f" {'oracle':>7} {'mean_lambda':>11}"
        lines.append(header)
        for row in self.frame.to_dict("records"):  # "lambda" is a keyword: no itertuples attribute
            gain = format_difference(row["gain"], row["gain_low"], row["gain_high"], row["p_value"])
            line = (f"{row['corruption']:<18} {row['severity']:>3} {row['lambda']:>7.3g} "
                    f"{row['acc_trained'] * 100:>7.1f} {row['acc_tuned'] * 100:>7.1f}  {gain:<44}")
            if recon:
                mean = row["mean_lambda"]
                mean_lambda = "n/a" if mean is None or math.isnan(mean) else f"{mean:.3g}"
                line += f" {row['acc_oracle'] * 100:>7.1f} {mean_lambda:>11}"
            lines.append(line.rstrip())
        by_severity = self.gains_by_severity()
        if not by_severity.empty:
            lines.append("mean gain per severity (over the corruptions, paired bootstrap over images):")
            for severity, row in by_severity.iterrows():
                text = format_difference(row["gain"], row["gain_low"], row["gain_high"], row["p_value"])
                lines.append(f"  severity {severity}: {text}")
        significant = int(self.frame["significant"].sum())
        lines.append(f"{significant} of {len(self.frame)} cells differ significantly from the trained lambda (5%); "
                     "a cell marked 'not significant' shows no evidence of a gain or a loss")
        if self.out is not None:
            lines.append(f"policy written to {self.out}")
        return lines


def choose(values: Sequence[float], accuracy: Sequence[float], reference: float) -> float:
    """The value of best accuracy; ties: closest to the reference, then the smaller value."""
    best = max(accuracy)
    tied = [v for v, a in zip(values, accuracy) if a == best]
    return min(tied, key=lambda v: (abs(v - reference), v))


def _check_choice(value: object, allowed: Sequence[str], what: str) -> str:
    if value not in allowed:
        raise RobustCSCError(f"unknown {what} {value!r}; use one of {', '.join(allowed)}")
    return str(value)


def _stored_sweep(store: ResultsStore, keys: list[CellKey], values: tuple[float, ...]) -> SweepCell | None:
    """The sweep of a cell whose every grid value is already stored with its outcomes, else None (run it)."""
    rows = [store.get(key) for key in keys]
    if any(row is None or row["outcomes"] is None for row in rows):
        return None  # missing, or stored by robust-csc < 0.2 without per-example outcomes: sweep again
    outcomes = [Outcomes.from_json(row["outcomes"], f"the stored sweep cell {key}") for row, key in zip(rows, keys)]
    if len({o.n for o in outcomes}) != 1 or any(not np.array_equal(o.index, outcomes[0].index) for o in outcomes):
        return None
    return SweepCell(
        values, outcomes[0].n, np.array([r["correct"] for r in rows]),
        np.array([np.nan if r["mean_recon_error"] is None else r["mean_recon_error"] for r in rows]),
        np.array([np.nan if r["mean_code_density"] is None else r["mean_code_density"] for r in rows]),
        0.0, outcomes[0].index, np.stack([o.correct for o in outcomes]),
    )


def tune(
    model: nn.Module,
    suite: CorruptionSuite,
    *,
    store: ResultsStore | str | Path,
    model_name: str | None = None,
    checkpoint_sha256: str | None = None,
    dataset: str,
    split_base: str = "test",
    clean: Dataset | None = None,
    grid: Sequence[float] | str | None = None,
    layers: str = "stem",
    rule: str = "grid",
    per: str = "sample",
    seed: int = 0,
    batch_size: int = 256,
    num_workers: int = 0,
    device: str | torch.device | None = None,
    progress: bool = False,
    echo: Callable[[str], None] | None = None,
    recompute: bool = False,
    suite_options: Mapping[str, Any] | None = None,
) -> TuneResult:
    """Tune lambda for every cell of suite (and the clean cell); see the module docstring.

    suite_options: how to build the suite again (the CLI's suite options: suite, dataset, profile, seed,
    n_examples), recorded in the policy so that `robust-csc evaluate --lambda-policy` rebuilds it.
    recompute: sweep and evaluate again, replacing stored cells.
    model may be any nn.Module with CSC layers or a LoadedModel; model_name /
    checkpoint_sha256 default to its name and weights hash (robust_csc.models.sources.identify).
    """
    model, model_name, checkpoint_sha256 = identify(model, model_name, checkpoint_sha256)
    layers = check_layers(layers)
    rule = _check_choice(rule, RULES, "rule")
    per = _check_choice(per, PER, "per (lambda choice of the recon rule)")
    values = default_grid(layers) if grid is None else check_grid(grid, layers)
    if not isinstance(suite, CorruptionSuite):
        raise RobustCSCError(f"suite is a {type(suite).__name__}; pass a CorruptionSuite (generated_suite, load_cifar_c, ...)")
    trained_lambdas(model)  # no CSC layers / per-sample lambdas: one clear error before any work
    reference = reference_value(model, layers)
    stem_reference = next(iter(trained_lambdas(model).values()))
    split = TuningSplit.of(suite.images_per_cell, split_base, seed)
    if clean is not None and len(clean) != suite.images_per_cell:
        raise RobustCSCError(
            f"the clean set has {len(clean)} images but the suite's cells have {suite.images_per_cell}; "
            "pass the clean images of the same test images"
        )
    cells = ([(CLEAN, 0)] if clean is not None else []) + [(c.corruption, c.severity) for c in suite.cells()]
    if not cells:
        raise RobustCSCError(f"the suite {suite.name} selects no cells and no clean set was given; select at least one cell")
    # The reference is swept too (for the recon rule's feature) when the grid lacks it.
    swept = values if any(math.isclose(v, reference) for v in values) else tuple(sorted(values + (reference,)))
    ref_index = min(range(len(swept)), key=lambda i: abs(swept[i] - reference))
    device = torch.device(device) if device is not None else model_device(model)
    model.to(device)

    store, owned = open_store(store)
    try:
        sweeps: dict[tuple[str, int], SweepCell] = {}
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(cells), desc=f"lambda sweep on {suite.name}", unit="cell")
        for corruption, severity in cells:
            keys = [CellKey(model_name, checkpoint_sha256, dataset, split.tune_name, corruption, severity,
                            setting_for(layers, v).name) for v in swept]
            stored = None if recompute else _stored_sweep(store, keys, swept)
            if stored is not None:
                sweeps[(corruption, severity)] = stored
            else:
                data = clean if corruption == CLEAN else suite.dataset(corruption, severity)
                # Statistics at every value: the store's per-grid-cell recon error and code density
                # feed the report's curves; the recon rule reads the reference value's.
                with frozen_state(model, f"the lambda sweep of {model_name}"):
                    result = sweep_cell(model, split.subset(data, "tune"), swept, layers, batch_size=batch_size,
                                        num_workers=num_workers, device=device, stats="all")
                sweeps[(corruption, severity)] = result
                for i, key in enumerate(keys):
                    store.add(key, {
                        "n": result.n, "correct": int(result.correct[i]),
                        "mean_recon_error": _number_or_none(result.recon_error[i]),
                        "mean_code_density": _number_or_none(result.code_density[i]),
                        "seconds": result.seconds / len(swept),  # the cell's sweep time, shared out
                        "extra": {"suite": suite.name, "sweep": len(swept), "batch_size": batch_size},
                        "outcomes": Outcomes(result.index, result.flags[i]),
                    }, replace=True)  # a sweep is only run when some of its cells are missing or lack outcomes
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()

        grid_index = [i for i, v in enumerate(swept) if any(v == g for g in values)]
        chosen: dict[tuple[str, int], float] = {}
        calibration = []
        for cell, result in sweeps.items():
            best = choose([swept[i] for i in grid_index], [int(result.correct[i]) for i in grid_index], reference)
            chosen[cell] = best
            calibration.append({"corruption": cell[0], "severity": cell[1], "best_lambda": best,
                                "recon_error": float(result.recon_error[ref_index])})
        meta = {
            "layers": layers, "grid": list(values), "seed": split.seed,
            "splits": {"tune": split.tune_name, "report": split.report_name},
            "arch": _arch(model, model_name), "checkpoint_sha256": checkpoint_sha256, "dataset": suite.name,
            "reference_lambda": stem_reference,
            "suite": {"name": suite.name, "corruptions": list(suite.corruptions), "severities": list(suite.severities),
                      "images_per_cell": suite.images_per_cell, "clean": clean is not None,
                      "options": dict(suite_options or {})},
            "tune_index": _tuning_index(sweeps),
        }
        oracle = CellPolicy(chosen, meta, calibration)
        policies: list[LambdaPolicy] = [oracle]
        policy: LambdaPolicy = oracle
        if rule == "recon":
            slope, intercept = fit_line([c["recon_error"] for c in calibration], [c["best_lambda"] for c in calibration])
            policy = ReconPolicy(slope=slope, intercept=intercept, clip=(min(values), max(values)), per=per,
                                 meta=meta, calibration=calibration)
            policies.append(policy)

        report = evaluate(
            model, split.suite(suite, "report"), store=store, model_name=model_name,
            checkpoint_sha256=checkpoint_sha256, dataset=dataset, split=split.report_name,
            lambdas=[None, *policies], clean=split.subset(clean, "report") if clean is not None else None,
            batch_size=batch_size, num_workers=num_workers, device=device, progress=progress, recompute=recompute,
        )
    finally:
        if owned:
            store.close()
    frame, paired = _report_frame(report.frame, cells, oracle, policy)
    sweep = pd.DataFrame([
        {"corruption": c, "severity": s, "value": v, "accuracy": r.correct[i] / r.n, "recon_error": r.recon_error[i],
         "code_density": r.code_density[i], "reference": i == ref_index, "in_grid": i in grid_index}
        for (c, s), r in sweeps.items() for i, v in enumerate(swept)
    ])
    return TuneResult(policy=policy, oracle=oracle, frame=frame, sweep=sweep, split=split,
                      stats={"reference": reference, "swept": swept}, paired=paired)


def _tuning_index(sweeps: Mapping[tuple[str, int], SweepCell]) -> dict:
    """The test-set indices of the tuning images (the same in every cell), in the store's index encoding."""
    indices = [cell.index for cell in sweeps.values()]
    first = np.sort(indices[0])
    if any(not np.array_equal(np.sort(other), first) for other in indices[1:]):
        raise RobustCSCError("the suite's cells do not hold the same images; tune on a suite whose cells share their images")
    return {"n": int(first.size), "index": encode_index(first)}


def _number_or_none(value: float) -> float | None:
    """A statistic for the store: None where it was not recorded (NaN)."""
    return None if math.isnan(value) else float(value)


def _arch(model: nn.Module, model_name: str) -> str:
    config = getattr(model, "config", None)
    arch = config.get("arch") if isinstance(config, Mapping) else None
    return str(arch or model_name)


def _report_frame(stored: pd.DataFrame, cells: list, oracle: CellPolicy, policy: LambdaPolicy) -> tuple[pd.DataFrame, dict]:
    """(one row per reporting-split cell: lambda, accuracies, the gain with its interval and p-value;
    {cell: (tuned flags, trained flags)} aligned on the same images)."""
    rows = stored[stored["attack"] == "none"]

    def cell_of(name: str) -> dict:
        part = rows[rows["lambda_setting"] == name]
        return {(r["corruption"], int(r["severity"])): r for r in part.to_dict("records")}

    trained, tuned, best = cell_of("trained"), cell_of(policy.name), cell_of(oracle.name)
    out, paired = [], {}
    for cell in cells:
        t, p = trained[cell], tuned[cell]
        first = Outcomes.from_json(p["outcomes"], f"the reporting cell {cell}")
        second = Outcomes.from_json(t["outcomes"], f"the reporting cell {cell}")
        flags = first.aligned(second, f"the tuned and trained cells of {cell[0]} {cell[1]}")
        paired[cell] = flags
        difference = compare(*flags)
        row = {"corruption": cell[0], "severity": cell[1], "lambda": oracle.cells[cell],
               "acc_trained": t["correct"] / t["n"], "acc_tuned": p["correct"] / p["n"], "n": int(p["n"]),
               "gain": difference.difference, "gain_low": difference.low, "gain_high": difference.high,
               "p_value": difference.p_value, "significant": difference.significant}
        if policy is not oracle:
            o = best[cell]
            row["acc_oracle"] = o["correct"] / o["n"]
            mean = _extra(p).get("mean_lambda")
            row["mean_lambda"] = float("nan") if mean is None else float(mean)
        out.append(row)
    columns = ["corruption", "severity", "lambda", "acc_trained", "acc_tuned", "gain", "gain_low", "gain_high",
               "p_value", "significant", "n"]
    if policy is not oracle:
        columns += ["acc_oracle", "mean_lambda"]
    return pd.DataFrame(out, columns=columns), paired


def _extra(row: Any) -> dict:
    import json

    value = row.get("extra") if isinstance(row, Mapping) else getattr(row, "extra", None)
    if isinstance(value, str):
        return json.loads(value)
    return dict(value or {})


def tune_checkpoint(
    path: str | Path,
    suite: CorruptionSuite,
    *,
    store: ResultsStore | str | Path,
    clean: Dataset | None = None,
    grid: Sequence[float] | str | None = None,
    layers: str = "stem",
    rule: str = "grid",
    per: str = "sample",
    seed: int = 0,
    out: str | Path | None = None,
    force: bool = False,
    dataset: str | None = None,
    split_base: str | None = None,
    batch_size: int = 256,
    num_workers: int = 0,
    device: str | torch.device | None = None,
    progress: bool = False,
    recompute: bool = False,
    suite_options: Mapping[str, Any] | None = None,
) -> TuneResult:
    """tune() a saved checkpoint: model name = its arch, checkpoint hash = the file's sha256,
    dataset = the suite's name unless given, split base "test" unless given (the CLI names an N-image
    suite "test[:N]"); out: write the policy there (refused if it exists, unless force).
    path may also be a LoadedModel (robust_csc.models.sources.load_model): its name and hash."""
    if out is not None and Path(out).exists() and not force:
        raise RobustCSCError(f"{out} already exists; pass --force (force=True) to replace it or choose another file")
    loaded = as_loaded(path, expect_num_classes=suite.num_classes)
    result = tune(
        loaded.model, suite, store=store, model_name=loaded.name, checkpoint_sha256=loaded.sha256,
        dataset=dataset or suite.name, split_base=split_base or "test", clean=clean, grid=grid, layers=layers,
        rule=rule, per=per, seed=seed, batch_size=batch_size, num_workers=num_workers, device=device,
        progress=progress, recompute=recompute, suite_options=suite_options,
    )
    if out is not None:
        result.out = result.policy.save(out, force=force)
    return result


__all__ = ["TuneResult", "choose", "tune", "tune_checkpoint"]
