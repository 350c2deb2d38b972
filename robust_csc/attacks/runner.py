"""Run attacks over an epsilon grid; robust accuracy as the pointwise worst case over every attack ever run.

Each attack runs on its own on every clean-correct point, at every epsilon,
and its per-example robust flags go to the store as one committed cell
(robust_csc.attacks.record), so a rerun skips it (recompute=True redoes it).
The worst case at an epsilon is the pointwise AND over every attack cell of
the series in the store: the headline attacks of this run, the sanity
checks' stronger attack, the adaptive attacks on an input-adaptive lambda
policy (robust_csc.attacks.adaptive) and any earlier run on the same points.
It is stored as the cell f"worst-case:{norm}" (replaced whenever it grows)
with the attacks that make it up, their settings and the sanity checks.
Figures from anything weaker than the full standard AutoAttack are labelled
upper bounds.

The model is judged as it is deployed: clean prediction, every attack step
and the judgement of every adversarial example run inside the lambda
setting's ``applied`` context, in eval mode (robust_csc.deployed.EvalOnly:
whatever an attack library does to the module's mode), and the model's
weights, buffers and lambdas are checked unchanged when the run ends.  Every
adversarial example is judged again by a plain forward pass of the deployed
model, and only those inside the epsilon ball and in [0, 1] count.
"""

from __future__ import annotations

import math
import numbers
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from robust_csc import __version__
from robust_csc.attacks import checks as sanity
from robust_csc.attacks.adaptive import VARIANTS, is_input_adaptive, surrogates, variant_id
from robust_csc.attacks.adapters import AutoAttackAdapter, TorchattacksAdapter, make_adapter
from robust_csc.attacks.record import (
    CHECK,
    WORST_CASE,
    attack_id_of,
    cell_key,
    evaluation_grade,
    outcomes_of,
    stored_attack_cells,
    worst_case_key,
)
from robust_csc.attacks.specs import (
    AttackSpec,
    as_specs,
    check_epsilons,
    check_norm,
    check_norm_fits,
    is_minimum_norm,
    make_spec,
)
from robust_csc.deployed import eval_only, frozen_state
from robust_csc.adaptation import adaptation_of
from robust_csc.errors import RobustCSCError
from robust_csc.evaluation.outcomes import Outcomes, combine_worst
from robust_csc.evaluation.stats import compare, format_accuracy, wilson_interval
from robust_csc.evaluation.store import CellKey, ResultsStore, open_store
from robust_csc.lambdas import as_setting, check_model_takes
from robust_csc.models.sources import identify
from robust_csc.runtime import model_device

PROBABILITY_TOLERANCE = 1e-5

format_epsilon = sanity.format_epsilon


@dataclass
class AttackResult:
    """Robust accuracies of one run (stored cells included), the worst case and the sanity checks.

    robust[(attack key, eps)]: points each attack left robust, on its own;
    worst_case[eps]: points robust against every attack cell of the series in
    the store (worst_attacks[eps] names them); grade: whether the worst case is
    AutoAttack-grade and the sentence that says so.
    """

    model: str
    checkpoint_sha256: str
    dataset: str
    split: str
    lambda_setting: str
    norm: str
    n: int
    clean_correct: int
    epsilons: tuple[float, ...]
    attacks: tuple[str, ...]
    robust: dict[tuple[str, float], int]
    worst_case: dict[float, int]
    checks: dict[str, dict] = field(default_factory=dict)
    cells_run: int = 0
    cells_skipped: int = 0
    worst_attacks: dict[float, list[str]] = field(default_factory=dict)
    params: dict[str, dict] = field(default_factory=dict)
    grade: tuple[bool, str] = (False, "")
    other_versions: dict[str, int] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        """Whether every sanity check passed."""
        return all(c["passed"] for c in self.checks.values())

    def robust_accuracy(self, eps: float, attack: str | None = None) -> float:
        """Robust accuracy at eps: the worst case, or the attack key's own."""
        count = self.worst_case[eps] if attack is None else self.robust[(attack, eps)]
        return count / self.n

    def table(self) -> pd.DataFrame:
        """Robust accuracy: a row per attack (each on its own) and the worst case, a column per epsilon."""
        rows = {a: [self.robust[(a, e)] / self.n for e in self.epsilons] for a in self.attacks}
        rows[worst_case_key(self.norm)] = [self.worst_case[e] / self.n for e in self.epsilons]
        return pd.DataFrame.from_dict(rows, orient="index", columns=[format_epsilon(e) for e in self.epsilons])

    def lines(self) -> list[str]:
        """A printable report: clean accuracy, robust accuracy with 95% intervals, what the worst case is, the checks."""
        out = [
            f"{self.model} ({self.checkpoint_sha256[:12]}) on {self.dataset} {self.split}, lambda {self.lambda_setting}, "
            f"{self.norm}: clean accuracy {format_accuracy(self.clean_correct, self.n)}",
            f"robust accuracy in % [95% Wilson interval] by epsilon ({self.norm}); each attack on its own, the worst case "
            "over every attack of this series in the store:",
        ]
        width = max(len(a) for a in [*self.attacks, worst_case_key(self.norm)]) + 2
        out.append(" " * width + "".join(f"{format_epsilon(e):>22}" for e in self.epsilons))
        for attack in self.attacks:
            out.append(f"{attack:<{width}}" + "".join(f"{_with_interval(self.robust[(attack, e)], self.n):>22}" for e in self.epsilons))
        out.append(f"{worst_case_key(self.norm):<{width}}"
                   + "".join(f"{_with_interval(self.worst_case[e], self.n):>22}" for e in self.epsilons))
        everything = sorted({a for attacks in self.worst_attacks.values() for a in attacks})
        out.append(f"worst case over: {', '.join(everything)}")
        out.append(f"evaluation: {self.grade[1]}")
        out.append("checks:" if self.checks else "checks: not run")
        for name, result in self.checks.items():
            out.append(f"  {'passed' if result['passed'] else 'FAILED'}  {name}: {result['detail']}")
        if self.other_versions:
            which = ", ".join(f"{count} by {version}" for version, count in sorted(self.other_versions.items()))
            out.append(f"note: reused attack cells computed by other robust-csc versions ({which}); pass --recompute to redo them")
        out.append(f"cells run {self.cells_run}, skipped {self.cells_skipped}")
        return out


def _with_interval(count: int, n: int) -> str:
    if n < 2:
        return f"{count / n * 100:.1f}" if n else "n/a"
    low, high = wilson_interval(count, n)
    return f"{count / n * 100:.1f} [{low * 100:.1f}, {high * 100:.1f}]"


# ---------------------------------------------------------------- checks of the arguments


def _check_int(value: object, what: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise RobustCSCError(f"{what} {value!r} is invalid; pass an integer >= {minimum}")
    return int(value)


def _check_data(images: object, labels: object) -> tuple[Tensor, Tensor]:
    if not isinstance(images, Tensor) or images.dim() != 4 or not images.is_floating_point():
        raise RobustCSCError("images must be a float tensor (N, C, H, W) with pixels in [0, 1]; stack the test images")
    if not isinstance(labels, Tensor) or labels.dim() != 1 or labels.shape[0] != images.shape[0]:
        raise RobustCSCError(f"labels must be a 1-D tensor with one label per image ({images.shape[0]}); pass the test labels")
    if images.shape[0] < 2:
        raise RobustCSCError(f"{images.shape[0]} image(s) to attack; an interval needs at least 2: pass more images")
    if not bool(torch.isfinite(images).all()) or float(images.min()) < 0 or float(images.max()) > 1:
        raise RobustCSCError("images must have pixels in [0, 1] (the models normalise inside); do not normalise them")
    return images.detach().cpu(), labels.detach().cpu().long()


def _check_index(index: object, n: int) -> np.ndarray:
    if index is None:
        return np.arange(n, dtype=np.int64)
    array = np.asarray(index, dtype=np.int64).reshape(-1)
    if array.size != n or np.unique(array).size != n or (n and array.min() < 0):
        raise RobustCSCError(f"index must hold {n} distinct test-set indices >= 0, one per image; pass the images' indices")
    return array


def _predict(run: nn.Module, images: Tensor, batch_size: int, device: torch.device) -> Tensor:
    """Logits of every image, in batches, on the CPU."""
    out = []
    with torch.no_grad():
        for start in range(0, images.shape[0], batch_size):
            out.append(run(images[start : start + batch_size].to(device)).float().cpu())
    return torch.cat(out)


def _check_logits(logits: Tensor, labels: Tensor, model_name: str) -> int:
    if logits.dim() != 2 or logits.shape[1] < 2:
        raise RobustCSCError(f"{model_name} returns shape {tuple(logits.shape)}; attacks need logits of shape (N, classes)")
    rows = logits.sum(dim=1)
    if (
        bool(torch.isfinite(logits).all())
        and float(logits.min()) >= -PROBABILITY_TOLERANCE
        and float(logits.max()) <= 1 + PROBABILITY_TOLERANCE
        and bool(((rows - 1).abs() <= PROBABILITY_TOLERANCE * logits.shape[1]).all())
    ):
        raise RobustCSCError(
            f"{model_name} returns probabilities (rows in [0, 1] summing to 1), and attacks on them are unreliable; "
            "remove the final softmax so the model returns logits"
        )
    if not bool(torch.isfinite(logits).all()):
        raise RobustCSCError(f"{model_name} returns non-finite logits on clean images; check its weights and lambda")
    classes = logits.shape[1]
    if int(labels.max()) >= classes or int(labels.min()) < 0:
        raise RobustCSCError(f"labels run up to {int(labels.max())} but {model_name} has {classes} classes; pass its data set's labels")
    return classes


def _check_l2_reach(epsilons: tuple[float, ...], norm: str, images: Tensor) -> None:
    if norm != "L2":
        return
    diameter = math.sqrt(images[0].numel())  # the L2 distance between an all-0 and an all-1 image
    for eps in epsilons:
        if eps > diameter:
            raise RobustCSCError(f"L2 epsilon {eps:g} exceeds {diameter:.4g}, a ball that covers every image of this size; "
                                 "pass a smaller budget")


# ---------------------------------------------------------------- judging adversarial examples


def judge(run: nn.Module, clean: Tensor, adv: Tensor, labels: Tensor, norm: str, eps: float) -> tuple[Tensor, Tensor]:
    """(broken, inside): misclassified by a plain forward pass and inside the ball and [0, 1]."""
    diff = (adv - clean).flatten(1).double()
    distance = diff.abs().amax(dim=1) if norm == "Linf" else diff.norm(dim=1)
    flat = adv.flatten(1)
    tolerance = 1e-6 + 1e-5 * eps  # float rounding of projections, not a looser ball
    inside = (
        (distance <= eps + tolerance)
        & torch.isfinite(flat).all(dim=1)
        & (flat.amin(dim=1) >= -1e-6)
        & (flat.amax(dim=1) <= 1 + 1e-6)
    )
    with torch.no_grad():
        wrong = run(adv).argmax(dim=1) != labels
    return wrong & inside, inside


def attack_points(run, surrogate, adapter, spec: AttackSpec, images, labels, index, eps, norm, seed, batch_size, device,
                  tick=None):
    """Attack images[index] through surrogate, judge on run; (broken positions, points returned outside the ball).

    tick(points, label): progress, called as batches of points are attacked (AutoAttack: as its member attacks
    finish their batches, each member counting for its share of the points).
    """
    broken_parts, outside = [], 0
    with sanity.seeded(seed):
        if isinstance(adapter, AutoAttackAdapter):
            # AutoAttack batches and filters by itself: hand it every point at once, as a direct call would.
            x, y = images[index].to(device), labels[index].to(device)
            chunks = [(torch.arange(len(index)), adapter.perturb(surrogate, x, y, eps, tick=tick))]
        else:
            chunks = []
            for start in range(0, len(index), batch_size):
                part = torch.arange(start, min(start + batch_size, len(index)))
                x, y = images[index[part]].to(device), labels[index[part]].to(device)
                chunks.append((part, adapter.perturb(surrogate, x, y, eps)))
                if tick is not None:
                    tick(len(part), spec.name)
    for part, adv in chunks:
        x, y = images[index[part]].to(device), labels[index[part]].to(device)
        for start in range(0, len(part), batch_size):  # judged in batches: AutoAttack returns all points at once
            sl = slice(start, start + batch_size)
            broken, inside = judge(run, x[sl], adv[sl].to(device), y[sl], norm, eps)
            broken_parts.append(index[part[sl]][broken.cpu()])
            if not is_minimum_norm(spec):
                outside += int((~inside).sum())
    broken = torch.cat(broken_parts) if broken_parts else torch.zeros(0, dtype=torch.long)
    return broken, outside


# ---------------------------------------------------------------- the runner


@dataclass(frozen=True)
class _Planned:
    """One attack cell to run at every epsilon: spec, surrogate name ("" = the deployed model), role."""

    spec: AttackSpec
    variant: str
    role: str  # "headline" or "adaptive"

    def attack_id(self, norm: str) -> str:
        base = self.spec.attack_id(norm)
        return variant_id(base, self.variant) if self.variant else base

    def key(self, norm: str) -> str:
        return f"{self.attack_id(norm)}:{norm}"


def run_attacks(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    *,
    attacks: Iterable[Any] | str | AttackSpec,
    norm: str,
    epsilons: Iterable[float] | float,
    store: ResultsStore | str | Path,
    model_name: str | None = None,
    checkpoint_sha256: str | None = None,
    dataset: str,
    split: str,
    lambda_setting: object = None,
    steps: int | None = None,
    restarts: int | None = None,
    version: str | None = None,
    seed: int = 0,
    batch_size: int = 128,
    device: str | torch.device | None = None,
    checks: bool = True,
    adaptive: bool = True,
    recompute: bool = False,
    allow_large_epsilon: bool = False,
    index: Any = None,
    progress: bool = False,
) -> AttackResult:
    """Attack (images, labels) with every attack at every epsilon; see the module docstring.

    attacks: names ("pgd", "autoattack", "apgd-ce", "square[n_queries=500]", a
    torchattacks name), AttackSpecs or (name, params) pairs; steps / restarts
    / version apply to every attack that takes them.  epsilons in pixel units
    of [0, 1] images (Linf above 64/255, L2 above 5 need allow_large_epsilon).
    lambda_setting: None (trained), a number, "stem=0.5", "scale=1.5" or a
    tuned policy; the store's lambda_setting is its name.  adaptive: for a
    policy that reads its input, also run every white-box attack on the
    BPDA and transfer surrogates.  seed: torch is seeded with it before each
    (attack, epsilon) cell, and AutoAttack gets it as its seed.  checks: also
    run the attacking sanity checks (gradients, large epsilon, the stronger
    attack on the points left robust); the others are free and always run.
    index: the test-set index of each image (default 0..n-1), recorded with
    the per-example outcomes.  Bad input raises RobustCSCError before the
    store is opened.  model may be any nn.Module or a LoadedModel;
    model_name / checkpoint_sha256 default to its name and weights hash
    (robust_csc.models.sources.identify).
    """
    model, model_name, checkpoint_sha256 = identify(model, model_name, checkpoint_sha256)
    norm = check_norm(norm)
    eps_list = check_epsilons(epsilons, norm, allow_large=allow_large_epsilon)
    specs = as_specs(attacks, steps=steps, restarts=restarts, version=version)
    for spec in specs:
        check_norm_fits(spec, norm)
    seed = _check_int(seed, "seed", 0)
    batch_size = _check_int(batch_size, "batch_size", 1)
    images, labels = _check_data(images, labels)
    _check_l2_reach(eps_list, norm, images)
    points = _check_index(index, images.shape[0])
    setting = as_setting(lambda_setting)
    if adaptation_of(setting) is not None:
        # An attack on a model that changes itself on every batch is another threat model (and BN statistics
        # of adversarial batches); these runners attack deployed, fixed models only.
        raise RobustCSCError(f"{setting.name} adapts the model during a run; attack a lambda setting or policy instead")
    check_model_takes(model, setting, model_name)
    tuned_on = getattr(setting, "tune_index", None)
    if tuned_on is not None and np.isin(points, tuned_on).any():
        raise RobustCSCError(
            f"{int(np.isin(points, tuned_on).sum())} of the points are images lambda policy {setting.name} was tuned on; "
            "attack it on its reporting split (attack_checkpoint and `robust-csc attack --lambda-policy` pick it)"
        )
    base = CellKey(model_name, checkpoint_sha256, dataset, split, lambda_setting=setting.name)
    if not isinstance(store, (ResultsStore, str, Path)):
        open_store(store)  # raises the one-line error
    device = model_device(model) if device is None else torch.device(device)

    model.to(device)
    with frozen_state(model, f"attacking {model_name}"), setting.applied(model, "none", 0) as applied:
        run = eval_only(applied)
        logits = _predict(run, images, batch_size, device)
        num_classes = _check_logits(logits, labels, model_name)
        clean = logits.argmax(dim=1) == labels
        plan = [_Planned(spec, "", "headline") for spec in specs]
        models = {"": run}
        if adaptive and is_input_adaptive(setting):
            models.update(surrogates(setting, model, images.to(device)))
            plan += [_Planned(spec, variant, "adaptive") for spec in specs if spec.white_box for variant in VARIANTS]
        adapters = {spec: make_adapter(spec, norm, num_classes, seed=seed, batch_size=batch_size) for spec in specs}
        handle, owned = open_store(store)
        try:
            context = _Context(run, models, handle, base, images, labels, points, clean, norm, seed, batch_size, device,
                               recompute, progress)
            return context.run(plan, adapters, eps_list, checks)
        finally:
            if owned:
                handle.close()


class _Context:
    """Everything one run_attacks call shares while it runs its cells."""

    def __init__(self, run, models, store, base, images, labels, points, clean, norm, seed, batch_size, device,
                 recompute, progress) -> None:
        self.run_model, self.models, self.store, self.base = run, models, store, base
        self.images, self.labels, self.points, self.clean = images, labels, points, clean
        self.norm, self.seed, self.batch_size, self.device = norm, seed, batch_size, device
        self.recompute, self.progress = recompute, progress
        self.n = int(labels.shape[0])
        self.cells_run = self.cells_skipped = 0
        self.other_versions: dict[str, int] = {}
        self.bar = None  # a progress bar over points attacked (the checks' points included)
        self.ticked = 0.0  # points the cell in flight has counted so far

    # -- progress ------------------------------------------------------------------

    def ticker(self, attack: str):
        """tick(points, label) for the cell in flight: advances the bar, names the attack (AutoAttack: its member)."""
        def tick(points: float, label: str | None = None) -> None:
            if self.bar is None:
                return
            before = int(self.ticked)
            self.ticked += points
            if label and label != attack_id_of(attack):
                self.bar.set_postfix_str(f"{attack_id_of(attack)}: {label}", refresh=False)
            self.bar.update(int(self.ticked) - before)
        return tick

    def settle(self, points: int) -> None:
        """The cell is done: the bar gets the rest of its points (AutoAttack's later members attack fewer)."""
        if self.bar is not None and points > int(self.ticked):
            self.bar.update(points - int(self.ticked))
        self.ticked = float(points)

    # -- one cell --------------------------------------------------------------

    def _stored(self, attack: str, eps: float) -> Outcomes | None:
        """The stored outcomes of a cell this run may reuse; refuses a cell of other points under this split name."""
        if self.recompute:
            return None
        row = self.store.get(cell_key(self.base, attack, eps))
        if row is None or row["outcomes"] is None:  # absent, or from robust-csc < 0.2 without outcomes: run it
            return None
        outcomes = outcomes_of(row, f"the stored cell {attack} at eps {eps:g}")
        clean_correct = row["extra"].get("clean_correct")
        if not np.array_equal(outcomes.index, self.points) or clean_correct != int(self.clean.sum()):
            raise RobustCSCError(
                f"the store holds {attack} at eps {eps:g} for split {self.base.split} on other images (or another "
                f"model state: {clean_correct} clean-correct points, this run {int(self.clean.sum())}); the split name "
                "must name the same images: use another split name or store, or pass --recompute"
            )
        if row["code_version"] != __version__:
            name = row["code_version"] or "robust-csc < 0.2"
            self.other_versions[name] = self.other_versions.get(name, 0) + 1
        return outcomes

    def attack_cell(self, attack: str, eps: float, spec: AttackSpec, adapter, surrogate, targets: Tensor, role: str) -> Outcomes:
        """Run (or reuse) one attack cell on the positions targets; store and return its robust flags."""
        stored = self._stored(attack, eps)
        self.ticked = 0.0
        if stored is not None:
            self.cells_skipped += 1
            self.settle(len(targets))
            return stored
        start = time.perf_counter()
        broken, outside = (torch.zeros(0, dtype=torch.long), 0)
        if len(targets):
            broken, outside = attack_points(self.run_model, surrogate, adapter, spec, self.images, self.labels, targets,
                                            eps, self.norm, self.seed, self.batch_size, self.device, tick=self.ticker(attack))
            self.settle(len(targets))
        flags = self.clean.clone()
        flags[broken] = False
        outcomes = Outcomes(self.points, flags.numpy())
        extra = {
            "role": role,
            "clean_correct": int(self.clean.sum()),
            "attacked": int(len(targets)),
            "broken": int(len(broken)),
            "outside_ball": outside,
            "params": adapter.parameters(eps),
            "seed": self.seed,
            "batch_size": self.batch_size,
        }
        if role == CHECK:
            extra["attacked_index"] = self.points[targets.numpy()].tolist()
        if isinstance(adapter, AutoAttackAdapter):
            extra["autoattack_warnings"] = list(adapter.warnings)
            adapter.warnings.clear()
        values = {"n": self.n, "correct": outcomes.count, "seconds": time.perf_counter() - start, "extra": extra,
                  "outcomes": outcomes}
        self.store.add(cell_key(self.base, attack, eps), values, replace=True)  # committed: a kill loses the next cell
        self.cells_run += 1
        return outcomes

    def worst(self, eps: float, checks: bool = True) -> tuple[Outcomes, dict[str, dict]]:
        """The pointwise worst case over every attack cell of the series at eps in the store (without the sanity
        checks' cells when checks is False), and those cells."""
        rows = {}
        for attack, row in stored_attack_cells(self.store, self.base, self.norm, eps).items():
            if not checks and attack_id_of(attack).endswith(f"~{CHECK}"):
                continue
            outcomes = outcomes_of(row, f"the stored cell {attack} at eps {eps:g}")
            if np.array_equal(np.sort(outcomes.index), np.sort(self.points)):
                rows[attack] = (row, outcomes)
        combined = combine_worst([Outcomes(self.points, self.clean.numpy())] + [o for _, o in rows.values()])
        return combined, {attack: row for attack, (row, _) in rows.items()}

    # -- the whole run -----------------------------------------------------------

    def run(self, plan: list[_Planned], adapters: dict, eps_list: tuple[float, ...], do_checks: bool) -> AttackResult:
        norm = self.norm
        targets = self.clean.nonzero().squeeze(1)
        if self.progress:
            from tqdm.auto import tqdm

            # Points attacked, not cells: the checks' points too (the large epsilon and the cross-check per epsilon).
            checked = (1 + len(eps_list)) * min(sanity.CHECK_POINTS, len(targets)) if do_checks else 0
            self.bar = tqdm(total=len(plan) * len(eps_list) * len(targets) + checked,
                            desc=f"attacking {self.base.model} ({self.base.lambda_setting})", unit="point")
        own: dict[tuple[str, float], Outcomes] = {}
        try:
            for eps in eps_list:
                for item in plan:
                    key = item.key(norm)
                    if self.bar is not None:
                        self.bar.set_postfix_str(f"{attack_id_of(key)} eps {format_epsilon(eps)}")
                    own[(key, eps)] = self.attack_cell(key, eps, item.spec, adapters[item.spec], self.models[item.variant],
                                                       targets, item.role)
            results = self._free_checks(plan, own, eps_list)
            if do_checks:
                results = {**self._attacking_checks(plan, eps_list), **results}
        finally:
            if self.bar is not None:
                self.bar.close()
                self.bar = None
        worst, cells = {}, {}
        for eps in eps_list:
            worst[eps], cells[eps] = self.worst(eps)  # after the checks: their attack counts too
        results["monotone_in_epsilon"] = sanity.monotone_check({e: worst[e].count for e in eps_list}, self.n)
        keys = sorted({a for rows in cells.values() for a in rows})
        grade = evaluation_grade(keys)
        params = {attack: row["extra"].get("params", {}) for rows in cells.values() for attack, row in rows.items()}
        for eps in eps_list:
            extra = {
                "attacks": sorted(cells[eps]),
                "params": {a: cells[eps][a]["extra"].get("params", {}) for a in sorted(cells[eps])},
                "clean_correct": int(self.clean.sum()),
                "checks": results,
                "seed": self.seed,
                "autoattack_grade": grade[0],
                "grade": grade[1],
            }
            seconds = sum(float(row["seconds"]) for row in cells[eps].values())
            values = {"n": self.n, "correct": worst[eps].count, "seconds": seconds, "extra": extra, "outcomes": worst[eps]}
            self.store.add(cell_key(self.base, worst_case_key(norm), eps), values, replace=True)
        return AttackResult(
            model=self.base.model,
            checkpoint_sha256=self.base.checkpoint_sha256,
            dataset=self.base.dataset,
            split=self.base.split,
            lambda_setting=self.base.lambda_setting,
            norm=norm,
            n=self.n,
            clean_correct=int(self.clean.sum()),
            epsilons=eps_list,
            attacks=tuple(item.key(norm) for item in plan),
            robust={k: o.count for k, o in own.items()},
            worst_case={e: worst[e].count for e in eps_list},
            checks=results,
            cells_run=self.cells_run,
            cells_skipped=self.cells_skipped,
            worst_attacks={e: sorted(cells[e]) for e in eps_list},
            params=params,
            grade=grade,
            other_versions=self.other_versions,
        )

    def _free_checks(self, plan: list[_Planned], own: dict, eps_list) -> dict:
        """Checks computed from the cells themselves."""
        norm, clean = self.norm, self.clean.numpy()
        results = {}
        outside = {}
        for item in plan:
            key = item.key(norm)
            total = 0
            for eps in eps_list:
                row = self.store.get(cell_key(self.base, key, eps))
                total += int(row["extra"].get("outside_ball", 0)) if row else 0
            outside[key] = total
        results["within_epsilon"] = sanity.within_ball_check(outside)
        headline = [item for item in plan if item.role == "headline"]
        white = [item for item in headline if item.spec.white_box]
        squares = [item for item in headline if item.spec.name == "square"]
        if white and squares:
            beyond = {}
            for eps in eps_list:
                white_robust = np.logical_and.reduce([own[(i.key(norm), eps)].correct for i in white])
                square_broken = np.logical_or.reduce([clean & ~own[(i.key(norm), eps)].correct for i in squares])
                beyond[eps] = int((white_robust & square_broken).sum())
            results["square_vs_white_box"] = sanity.square_check(beyond, self.n)
        warnings: list[str] = []
        for item in headline:
            if item.spec.family != "autoattack":
                continue
            for eps in eps_list:
                row = self.store.get(cell_key(self.base, item.key(norm), eps))
                for message in (row["extra"].get("autoattack_warnings", []) if row else []):
                    if message not in warnings:
                        warnings.append(message)
        if any(item.spec.family == "autoattack" for item in headline):
            results["autoattack_self_checks"] = sanity.autoattack_check(warnings)
        adaptive = [item for item in plan if item.role == "adaptive"]
        if adaptive:
            results["adaptive_attacks"] = self._adaptive_check(headline, adaptive, own, eps_list)
        return results

    def _adaptive_check(self, headline, adaptive, own, eps_list) -> dict:
        """The adaptive attacks must not leave significantly fewer points robust than the plain attacks."""
        norm = self.norm
        lines, passed = [], True
        for eps in eps_list:
            plain = np.logical_and.reduce([own[(i.key(norm), eps)].correct for i in headline if i.spec.white_box])
            adapted = np.logical_and.reduce([own[(i.key(norm), eps)].correct for i in adaptive])
            difference = compare(adapted, plain)
            lower = difference.difference < 0 and difference.significant
            passed &= not lower
            lines.append(f"{format_epsilon(eps)}: plain {int(plain.sum())}, adaptive {int(adapted.sum())} robust"
                         + (f" ({difference.text()})" if lower else ""))
        detail = "; ".join(lines)
        if not passed:
            detail = ("the adaptive attacks (BPDA, transfer) leave significantly fewer points robust than attacks through "
                      "the policy: its gradients are masked and the plain figure overstates robustness; the worst case "
                      "includes them. " + detail)
        return sanity.check(passed, detail)

    def _attacking_checks(self, plan: list[_Planned], eps_list) -> dict:
        """Gradients, a large epsilon, and the cross-check: a stronger PGD on points every attack left robust."""
        run, images, labels, clean, norm, seed, device = (self.run_model, self.images, self.labels, self.clean,
                                                          self.norm, self.seed, self.device)
        # At least PGD-10's steps: the check must stay strong when the headline attack is weak.
        steps = max([int(i.spec.options.get("steps", 10)) for i in plan if i.spec.name == "pgd"] + [10])
        correct = clean.nonzero().squeeze(1)[: sanity.CHECK_POINTS]
        x, y = images[correct].to(device), labels[correct].to(device)
        if self.bar is not None:
            self.bar.set_postfix_str("checks: gradients, large epsilon")
        results = {
            "gradients": sanity.gradient_check(run, images[: sanity.CHECK_POINTS].to(device), labels[: sanity.CHECK_POINTS].to(device)),
            "large_epsilon": sanity.large_epsilon_check(run, x, y, norm, steps, seed),
        }
        if self.bar is not None:
            self.bar.update(len(correct))
        strong = make_spec("pgd", {"steps": steps * sanity.MORE_STEPS_FACTOR, "restarts": sanity.MORE_RESTARTS})
        adapter = TorchattacksAdapter(strong, norm, num_classes=0, seed=seed)
        attack = f"{variant_id(strong.attack_id(norm), CHECK)}:{norm}"
        found, lines = 0, []
        rng = np.random.default_rng(seed)
        for eps in eps_list:
            # The points no attack but a check broke: chosen among, and counted against, the other attacks' worst case,
            # so a rerun that reuses the stored check cell reaches the same verdict.
            others, _ = self.worst(eps, checks=False)
            robust = np.flatnonzero(others.correct)
            chosen = np.sort(rng.choice(robust, size=min(sanity.CHECK_POINTS, robust.size), replace=False)) if robust.size else robust
            if self.bar is not None:
                self.bar.set_postfix_str(f"check: {attack_id_of(attack)} eps {format_epsilon(eps)}")
            checked = self.attack_cell(attack, eps, strong, adapter, run, torch.as_tensor(chosen, dtype=torch.long), CHECK)
            if self.bar is not None:  # the check's share of the bar is its most points, whatever it attacked
                self.bar.update(max(0, min(sanity.CHECK_POINTS, int(self.clean.sum())) - len(chosen)))
            _, flags = others.aligned(checked, "the worst case and the cross-check")
            newly = int((others.correct & ~flags).sum())
            found += newly
            lines.append(f"{format_epsilon(eps)}: {newly} of {len(chosen)}")
        detail = (f"PGD-{strong.options['steps']}x{sanity.MORE_RESTARTS} on up to {sanity.CHECK_POINTS} points every other "
                  f"attack left robust broke: " + ", ".join(lines))
        if found:
            detail += "; the headline attacks missed them (too weak), and they now count in the worst case"
        results["cross_check"] = sanity.check(found == 0, detail)
        return results


__all__ = ["AttackResult", "WORST_CASE", "attack_points", "format_epsilon", "judge", "run_attacks", "worst_case_key"]
