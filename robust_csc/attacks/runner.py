"""Run attacks over an epsilon grid as the pointwise worst case, one committed store cell per (attack, epsilon).

For each epsilon the attacks run in a chain: the first attacks every
clean-correct point, each later one only the points still robust, and a
point counts as robust only if every attack failed on it.  Each finished
(attack, epsilon) cell is committed with its cumulative per-example flags, so
a rerun skips it, rebuilds the flags from the store and resumes with the next
attack.  The worst case per epsilon is its own cell, attack
f"worst-case:{norm}", holding the sanity checks of the run.

The model is attacked exactly as it is evaluated: clean prediction, every
attack step and the final check of each adversarial example run inside the
lambda setting's ``applied`` context, in eval mode.  Every adversarial
example is judged again by a plain forward pass, and only those inside the
epsilon ball and in [0, 1] count.
"""

from __future__ import annotations

import numbers
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import pandas as pd
import torch
from torch import Tensor, nn

from robust_csc.attacks import checks as sanity
from robust_csc.attacks.adapters import AutoAttackAdapter, make_adapter
from robust_csc.attacks.flags import pack_flags, unpack_flags
from robust_csc.attacks.specs import (
    AttackSpec,
    as_specs,
    check_epsilons,
    check_norm,
    check_norm_fits,
    is_minimum_norm,
)
from robust_csc.errors import RobustCSCError
from robust_csc.evaluation.store import CellKey, ResultsStore, open_store
from robust_csc.lambdas import as_setting, check_model_takes
from robust_csc.models.sources import identify
from robust_csc.runtime import model_device

WORST_CASE = "worst-case"
PROBABILITY_TOLERANCE = 1e-5


def worst_case_key(norm: str) -> str:
    return f"{WORST_CASE}:{norm}"


format_epsilon = sanity.format_epsilon


@dataclass
class AttackResult:
    """Robust accuracies of one run (stored cells included) and its sanity checks.

    robust[(attack key, eps)]: points robust after that attack and every attack
    before it in the chain; worst_case[eps]: after all of them.
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

    @property
    def passed(self) -> bool:
        """Whether every sanity check passed."""
        return all(c["passed"] for c in self.checks.values())

    def robust_accuracy(self, eps: float, attack: str | None = None) -> float:
        """Robust accuracy at eps: the worst case, or after the attack key given (cumulative)."""
        count = self.worst_case[eps] if attack is None else self.robust[(attack, eps)]
        return count / self.n

    def table(self) -> pd.DataFrame:
        """Robust accuracy: a row per attack (cumulative) and the worst case, a column per epsilon."""
        rows = {a: [self.robust[(a, e)] / self.n for e in self.epsilons] for a in self.attacks}
        rows[worst_case_key(self.norm)] = [self.worst_case[e] / self.n for e in self.epsilons]
        return pd.DataFrame.from_dict(rows, orient="index", columns=[format_epsilon(e) for e in self.epsilons])

    def lines(self) -> list[str]:
        """A printable report: the table, the clean accuracy and the checks."""
        out = [
            f"{self.model} ({self.checkpoint_sha256[:12]}) on {self.dataset} {self.split}, lambda {self.lambda_setting}, "
            f"{self.norm}: clean accuracy {self.clean_correct / self.n:.4f} ({self.clean_correct}/{self.n})",
            f"robust accuracy by epsilon ({self.norm}); each attack row counts the attacks above it too:",
        ]
        out.extend(self.table().to_string(float_format=lambda v: f"{v:.4f}").splitlines())
        out.append("checks:" if self.checks else "checks: not run")
        for name, result in self.checks.items():
            out.append(f"  {'passed' if result['passed'] else 'FAILED'}  {name}: {result['detail']}")
        out.append(f"cells run {self.cells_run}, skipped {self.cells_skipped}")
        return out


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
    if images.shape[0] == 0:
        raise RobustCSCError("no images to attack; pass at least one")
    if not bool(torch.isfinite(images).all()) or float(images.min()) < 0 or float(images.max()) > 1:
        raise RobustCSCError("images must have pixels in [0, 1] (the models normalise inside); do not normalise them")
    return images.detach().cpu(), labels.detach().cpu().long()


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
    classes = logits.shape[1]
    if int(labels.max()) >= classes or int(labels.min()) < 0:
        raise RobustCSCError(f"labels run up to {int(labels.max())} but {model_name} has {classes} classes; pass its data set's labels")
    return classes


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


def _attack_points(run, adapter, spec: AttackSpec, images, labels, index, eps, norm, seed, batch_size, device):
    """Attack images[index]; (newly broken indices, points returned outside the ball)."""
    broken_parts, outside = [], 0
    with sanity.seeded(seed):
        if isinstance(adapter, AutoAttackAdapter):
            # AutoAttack batches and filters by itself: hand it every point at once, as a direct call would.
            x, y = images[index].to(device), labels[index].to(device)
            chunks = [(torch.arange(len(index)), adapter.perturb(run, x, y, eps))]
        else:
            chunks = []
            for start in range(0, len(index), batch_size):
                part = torch.arange(start, min(start + batch_size, len(index)))
                x, y = images[index[part]].to(device), labels[index[part]].to(device)
                chunks.append((part, adapter.perturb(run, x, y, eps)))
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
    progress: bool = False,
) -> AttackResult:
    """Attack (images, labels) with every attack at every epsilon; see the module docstring.

    attacks: names ("pgd", "autoattack", "apgd-ce", "square[n_queries=500]", a
    torchattacks name), AttackSpecs or (name, params) pairs; steps / restarts
    / version apply to every attack that takes them.  epsilons in pixel units
    of [0, 1] images.  lambda_setting: None (trained), a number, "stem=0.5",
    "scale=1.5" or a tuned policy; the store's lambda_setting is its name.
    seed: torch is seeded with it before each (attack, epsilon) cell, and
    AutoAttack gets it as its seed.  checks: also run the attacking sanity
    checks (gradients, large epsilon, more steps); the others are free and
    always run.  Bad input raises RobustCSCError before the store is opened.
    model may be any nn.Module or a LoadedModel; model_name / checkpoint_sha256
    default to its name and weights hash (robust_csc.models.sources.identify).
    """
    model, model_name, checkpoint_sha256 = identify(model, model_name, checkpoint_sha256)
    norm = check_norm(norm)
    eps_list = check_epsilons(epsilons)
    specs = as_specs(attacks, steps=steps, restarts=restarts, version=version)
    for spec in specs:
        check_norm_fits(spec, norm)
    seed = _check_int(seed, "seed", 0)
    batch_size = _check_int(batch_size, "batch_size", 1)
    images, labels = _check_data(images, labels)
    setting = as_setting(lambda_setting)
    check_model_takes(model, setting, model_name)
    base = CellKey(model_name, checkpoint_sha256, dataset, split, lambda_setting=setting.name)
    if not isinstance(store, (ResultsStore, str, Path)):
        open_store(store)  # raises the one-line error
    device = model_device(model) if device is None else torch.device(device)

    was_training = model.training
    model.to(device).eval()
    try:
        with setting.applied(model, "none", 0) as run:
            logits = _predict(run, images, batch_size, device)
            num_classes = _check_logits(logits, labels, model_name)
            adapters = {s: make_adapter(s, norm, num_classes, seed=seed, batch_size=batch_size) for s in specs}
            clean = logits.argmax(dim=1) == labels
            handle, owned = open_store(store)
            try:
                return _run(run, handle, base, specs, adapters, images, labels, clean, eps_list, norm, seed, batch_size, device, checks, progress)
            finally:
                if owned:
                    handle.close()
    finally:
        model.train(was_training)


def _cell(base: CellKey, attack: str, eps: float) -> CellKey:
    return CellKey(base.model, base.checkpoint_sha256, base.dataset, base.split, lambda_setting=base.lambda_setting, attack=attack, epsilon=eps)


def _prescan(store: ResultsStore, base: CellKey, specs, eps_list, norm: str, clean_correct: int) -> dict:
    """The stored cells of this run, refused when they came from another chain of attacks or other images."""
    chain = [s.key(norm) for s in specs]
    stored = {}
    for eps in eps_list:
        for i, attack in enumerate(chain + [worst_case_key(norm)]):
            row = store.get(_cell(base, attack, eps))
            if row is None:
                continue
            extra = row["extra"]
            expected = chain[: i + 1] if attack in chain else chain
            found = extra.get("chain", extra.get("attacks"))
            if found != expected:
                raise RobustCSCError(
                    f"the store already holds {attack} at eps {eps:g} from the attack chain {' -> '.join(found or ['?'])}, "
                    f"and this run's chain is {' -> '.join(expected)}; run the same attacks in the same order, or use another store"
                )
            if extra.get("clean_correct") != clean_correct:
                raise RobustCSCError(
                    f"the store holds {attack} at eps {eps:g} for {base.split} with {extra.get('clean_correct')} clean-correct "
                    f"points, and this model gets {clean_correct}; the split name must name the same images: use another split name or store"
                )
            stored[(attack, eps)] = row
    return stored


def _run(run, store, base, specs, adapters, images, labels, clean, eps_list, norm, seed, batch_size, device, do_checks, progress):
    n = int(labels.shape[0])
    clean_correct = int(clean.sum())
    chain = [s.key(norm) for s in specs]
    stored = _prescan(store, base, specs, eps_list, norm, clean_correct)
    cells: dict[tuple[str, float], dict] = {}  # the values (extra decoded) of every attack cell
    run_count = skipped = 0
    pending = sum((k, e) not in stored for k in chain for e in eps_list)
    bar = None
    if progress and pending:
        from tqdm.auto import tqdm

        bar = tqdm(total=pending, desc=f"attacking {base.model}", unit="cell")
    try:
        for eps in eps_list:
            flags = clean.clone()
            for i, spec in enumerate(specs):
                key = chain[i]
                row = stored.get((key, eps))
                if row is not None:
                    flags = unpack_flags(row["extra"]["robust_flags"], n, f"the stored cell {key} at eps {eps:g}")
                    cells[(key, eps)] = row
                    skipped += 1
                    continue
                if bar is not None:
                    bar.set_postfix_str(f"{key} eps {format_epsilon(eps)}")
                start = time.perf_counter()
                index = flags.nonzero().squeeze(1)
                adapter = adapters[spec]
                broken, outside = (torch.zeros(0, dtype=torch.long), 0)
                if len(index):
                    broken, outside = _attack_points(run, adapter, spec, images, labels, index, eps, norm, seed, batch_size, device)
                flags[broken] = False
                extra = {
                    "chain": chain[: i + 1],
                    "robust_flags": pack_flags(flags),
                    "clean_correct": clean_correct,
                    "attacked": int(len(index)),
                    "broken": int(len(broken)),
                    "outside_ball": outside,
                    "params": adapter.parameters(eps),
                    "seed": seed,
                    "batch_size": batch_size,
                }
                if isinstance(adapter, AutoAttackAdapter):
                    extra["autoattack_warnings"] = list(adapter.warnings)
                    adapter.warnings.clear()
                values = {"n": n, "correct": int(flags.sum()), "seconds": time.perf_counter() - start, "extra": extra}
                store.add(_cell(base, key, eps), values)  # committed: a kill loses at most the next cell
                cells[(key, eps)] = values
                run_count += 1
                if bar is not None:
                    bar.update(1)
    finally:
        if bar is not None:
            bar.close()

    robust = {k: int(v["correct"]) for k, v in cells.items()}
    worst = {eps: robust[(chain[-1], eps)] for eps in eps_list}
    wc_key = worst_case_key(norm)
    wc_stored = {eps: stored[(wc_key, eps)] for eps in eps_list if (wc_key, eps) in stored}
    if len(wc_stored) == len(eps_list):
        results = next(iter(wc_stored.values()))["extra"].get("checks", {})  # what the run that wrote them found
    else:
        results = _free_checks(specs, chain, cells, worst, eps_list, n)
        if do_checks:
            results = {**_attacking_checks(run, specs, images, labels, clean, worst, norm, seed, device), **results}
    for eps in eps_list:
        if eps in wc_stored:
            skipped += 1
            continue
        last = cells[(chain[-1], eps)]
        extra = {
            "attacks": chain,
            "robust_flags": last["extra"]["robust_flags"],
            "clean_correct": clean_correct,
            "checks": results,
            "seed": seed,
        }
        seconds = sum(float(cells[(k, eps)]["seconds"]) for k in chain)
        store.add(_cell(base, wc_key, eps), {"n": n, "correct": worst[eps], "seconds": seconds, "extra": extra})
        run_count += 1
    return AttackResult(
        model=base.model,
        checkpoint_sha256=base.checkpoint_sha256,
        dataset=base.dataset,
        split=base.split,
        lambda_setting=base.lambda_setting,
        norm=norm,
        n=n,
        clean_correct=clean_correct,
        epsilons=eps_list,
        attacks=tuple(chain),
        robust=robust,
        worst_case=worst,
        checks=results,
        cells_run=run_count,
        cells_skipped=skipped,
    )


def _free_checks(specs, chain, cells, worst, eps_list, n) -> dict:
    """Checks computed from the cells themselves."""
    results = {"monotone_in_epsilon": sanity.monotone_check(worst, n)}
    results["within_epsilon"] = sanity.within_ball_check(
        {k: sum(int(cells[(k, e)]["extra"].get("outside_ball", 0)) for e in eps_list) for k in chain}
    )
    white = [s for s in specs if s.white_box]
    squares = [s for s in specs if s.name == "square"]
    if white and squares:
        extra_broken = {e: sum(int(cells[(chain[specs.index(s)], e)]["extra"]["broken"]) for s in squares) for e in eps_list}
        results["square_vs_white_box"] = sanity.square_check(extra_broken, n)
    warnings = []
    for (key, _eps), values in cells.items():
        for message in values["extra"].get("autoattack_warnings", []):
            if message not in warnings:
                warnings.append(message)
    if any(s.family == "autoattack" for s in specs):
        results["autoattack_self_checks"] = sanity.autoattack_check(warnings)
    return results


def _attacking_checks(run, specs, images, labels, clean, worst, norm, seed, device) -> dict:
    """Gradients, a large epsilon and more steps, on a few clean-correct points.

    More steps are tried at the epsilon whose worst case is nearest half the
    clean-correct points: where neither 0 nor all robust makes the test trivial.
    """
    pgd = next((s for s in specs if s.name == "pgd"), None)
    steps = int(pgd.options.get("steps", 10)) if pgd is not None else 10
    correct = clean.nonzero().squeeze(1)[: sanity.CHECK_POINTS]
    x, y = images[correct].to(device), labels[correct].to(device)
    half = int(clean.sum()) / 2
    middle = min(sorted(worst), key=lambda e: abs(worst[e] - half))
    return {
        "gradients": sanity.gradient_check(run, images[: sanity.CHECK_POINTS].to(device), labels[: sanity.CHECK_POINTS].to(device)),
        "large_epsilon": sanity.large_epsilon_check(run, x, y, norm, steps, seed),
        "more_steps": sanity.more_steps_check(run, x, y, norm, middle, steps, seed),
    }


__all__ = ["AttackResult", "WORST_CASE", "format_epsilon", "judge", "run_attacks", "worst_case_key"]
