"""Adapters: one call ``perturb(model, images, labels, eps)`` for torchattacks and for pyautoattack.

Models take images in [0, 1] and normalise inside, so no adapter ever calls
torchattacks' set_normalization_used.  The adapters do not seed: the runner
seeds torch before each (attack, epsilon) cell (AutoAttack seeds itself from
its ``seed``).
"""

from __future__ import annotations

import contextlib
import logging
from typing import Iterator

import torch
from torch import Tensor, nn

from robust_csc.attacks.specs import AUTOATTACK, AttackSpec, TARGETED, torchattacks_class, torchattacks_defaults
from robust_csc.errors import RobustCSCError


def _predict(model: nn.Module, images: Tensor) -> Tensor:
    with torch.no_grad():
        return model(images).argmax(dim=1)


class TorchattacksAdapter:
    """A torchattacks attack with the runner's eps, norm and seed.

    Step sizes follow eps: a parameter ``alpha`` that the user left alone is
    torchattacks' default alpha scaled by eps / default eps and by default
    steps / steps (PGD: 2.5 * eps / steps, Madry et al.'s rule), so one grid
    of epsilons needs no per-epsilon tuning.  Restarts for attacks without
    their own (PGD) are run here: each restart attacks the points the earlier
    ones did not break, from a new random start.
    """

    def __init__(self, spec: AttackSpec, norm: str, num_classes: int, seed: int = 0) -> None:
        self.spec = spec
        self.norm = norm
        self.name = spec.torchattacks_name(norm)
        self.cls = torchattacks_class(self.name)
        self.defaults = torchattacks_defaults(self.name)
        self.num_classes = num_classes
        self.seed = seed
        options = spec.options
        self.restarts = int(options.pop("restarts", 1))
        steps = options.pop("steps", None)
        self.kwargs = dict(options)
        if steps is not None:
            self.kwargs["steps"] = steps
        self.own_restarts = "n_restarts" not in self.defaults
        if not self.own_restarts:
            self.kwargs["n_restarts"] = self.restarts

    def parameters(self, eps: float) -> dict:
        """The constructor arguments used at eps (without the model)."""
        kwargs = dict(self.kwargs)
        if "eps" in self.defaults:
            kwargs["eps"] = eps
        if "norm" in self.defaults:
            kwargs["norm"] = self.norm
        if "seed" in self.defaults:
            kwargs["seed"] = self.seed
        if "n_classes" in self.defaults:
            kwargs["n_classes"] = self.num_classes
        if "alpha" in self.defaults and "alpha" not in kwargs:
            scale = eps / self.defaults["eps"]
            if "steps" in self.defaults:
                scale *= self.defaults["steps"] / kwargs.get("steps", self.defaults["steps"])
            kwargs["alpha"] = self.defaults["alpha"] * scale
        return kwargs

    def perturb(self, model: nn.Module, images: Tensor, labels: Tensor, eps: float) -> Tensor:
        attack = self.cls(model, **self.parameters(eps))
        restarts = self.restarts if self.own_restarts else 1
        adv = attack(images, labels)
        if restarts == 1:
            return adv
        adv = adv.clone()
        left = _predict(model, adv) == labels
        for _ in range(restarts - 1):
            if not bool(left.any()):
                break
            index = left.nonzero().squeeze(1)
            again = attack(images[index], labels[index])
            adv[index] = again
            left[index] = _predict(model, again) == labels[index]
        return adv


@contextlib.contextmanager
def _captured_warnings(logger_name: str) -> Iterator[list[str]]:
    """Collect what a library logs at WARNING and above (and keep it off stderr)."""
    messages: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(record.getMessage())

    logger = logging.getLogger(logger_name)
    handler = Collect(level=logging.WARNING)
    logger.addHandler(handler)  # a handler of its own: logging's last-resort handler would print
    try:
        yield messages
    finally:
        logger.removeHandler(handler)


def set_iterations(attack, n_iter: int) -> None:
    """Set an APGD / FAB attack's iterations and what APGD's constructor derives from them."""
    attack.n_iter = n_iter
    if hasattr(attack, "n_iter_2"):
        attack.n_iter_orig = n_iter
        attack.n_iter_2 = max(int(0.22 * n_iter), 1)
        attack.n_iter_min = max(int(0.06 * n_iter), 1)
        attack.size_decr = max(int(0.03 * n_iter), 1)


def build_autoattack(model: nn.Module, spec: AttackSpec, norm: str, eps: float, seed: int, device: str):
    """A pyautoattack.AutoAttack as the spec describes (steps -> n_iter of APGD and FAB)."""
    from pyautoattack import AutoAttack

    version = spec.autoattack_version()
    members = list(spec.autoattack_members())
    attack = AutoAttack(
        model,
        attacks=members if version == "custom" else None,
        device=device,
        eps=eps,
        norm=norm,
        seed=seed,
        version=version,
    )
    options = spec.options
    if options.get("steps") is not None:
        for part in (attack.apgd, attack.apgd_targeted, attack.fab):
            set_iterations(part, options["steps"])
    if options.get("n_queries") is not None:
        attack.square.n_queries = options["n_queries"]
    return attack


def check_autoattack_classes(spec: AttackSpec, num_classes: int) -> None:
    """AutoAttack's targeted attacks use 9 target classes; DLR needs 3 classes."""
    members = spec.autoattack_members()
    targeted = [m for m in members if m in TARGETED]
    if targeted and num_classes < 10:
        raise RobustCSCError(
            f"{spec.name} runs {', '.join(targeted)} with 9 target classes, which needs at least 10 "
            f"classes, and the model has {num_classes}; use a list without them, e.g. autoattack[attacks=apgd-ce+apgd-dlr]"
        )
    if "apgd-dlr" in members and num_classes < 3:
        raise RobustCSCError(f"apgd-dlr needs at least 3 classes and the model has {num_classes}; use apgd-ce")


class AutoAttackAdapter:
    """pyautoattack with a fixed seed; its self-check warnings are kept in ``warnings``."""

    def __init__(self, spec: AttackSpec, norm: str, num_classes: int, seed: int = 0, batch_size: int = 250) -> None:
        if spec.family != AUTOATTACK:  # pragma: no cover - the runner dispatches
            raise RobustCSCError(f"{spec.name} is not an AutoAttack attack")
        self.spec = spec
        self.norm = norm
        self.seed = seed
        self.batch_size = batch_size
        self.warnings: list[str] = []
        check_autoattack_classes(spec, num_classes)

    def parameters(self, eps: float) -> dict:
        return {
            "version": self.spec.autoattack_version(),
            "attacks": list(self.spec.autoattack_members()),
            "eps": eps,
            "seed": self.seed,
            **{k: v for k, v in self.spec.options.items() if k in ("steps", "n_queries")},
        }

    def perturb(self, model: nn.Module, images: Tensor, labels: Tensor, eps: float, tick=None) -> Tensor:
        """AutoAttack's adversarial images; tick(points, member) as its member attacks finish their batches."""
        from pyautoattack import checks

        device = str(images.device)
        attack = build_autoattack(model, self.spec, self.norm, eps, self.seed, device)
        if tick is not None:
            _report_members(attack, tick)
        # pyautoattack counts grad/backward calls during a traced forward in a module-level dict
        # that it never resets, so one dynamic model would make every later model look dynamic.
        for name in checks.funcs:
            checks.funcs[name] = 0
        with _captured_warnings("auto-attack") as messages:
            adv, _ = attack.run_standard_evaluation(images, labels, batch_size=self.batch_size)
        self.warnings.extend(m for m in messages if m not in self.warnings)
        return adv


def _member_name(part, which: str) -> str:
    if which == "apgd":
        return f"apgd-{getattr(part, 'loss', 'ce')}"
    if which == "fab":
        return "fab-t" if getattr(part, "targeted", False) else "fab"
    return {"apgd_targeted": "apgd-t", "square": "square"}[which]


def _report_members(attack, tick) -> None:
    """Wrap AutoAttack's member attacks so each batch they finish ticks the progress (a share per member).

    pyautoattack runs its members in turn on the points still robust, with no progress of its own; a member
    counts for 1/len(members) of the points, so the bar moves through every member, and the runner settles the
    rest when AutoAttack returns (later members see fewer points).
    """
    share = 1.0 / max(1, len(attack.attacks_to_run))
    for which in ("apgd", "apgd_targeted", "fab", "square"):
        part = getattr(attack, which, None)
        if part is None or not hasattr(part, "perturb"):
            continue
        original = part.perturb

        def counted(x, y, *args, _original=original, _part=part, _which=which, **kwargs):
            out = _original(x, y, *args, **kwargs)
            tick(share * len(x), _member_name(_part, _which))
            return out

        part.perturb = counted


def make_adapter(spec: AttackSpec, norm: str, num_classes: int, *, seed: int = 0, batch_size: int = 250):
    """The adapter of a spec: AutoAttackAdapter or TorchattacksAdapter."""
    if spec.family == AUTOATTACK:
        return AutoAttackAdapter(spec, norm, num_classes, seed=seed, batch_size=batch_size)
    return TorchattacksAdapter(spec, norm, num_classes, seed=seed)


__all__ = [
    "AutoAttackAdapter",
    "TorchattacksAdapter",
    "build_autoattack",
    "check_autoattack_classes",
    "make_adapter",
    "set_iterations",
]
