"""Sanity checks that catch false robustness (Carlini et al., "On Evaluating Adversarial Robustness").

Each check returns {"passed": bool, "detail": str}.  The ones that attack
(gradients, large epsilon, and the runner's cross-check: a stronger PGD on the
points every attack left robust) run on a small subset of the points,
seeded, at the lambda setting of the run.
"""

from __future__ import annotations

from typing import Mapping

import torch
from torch import Tensor, nn

from robust_csc.attacks.adapters import TorchattacksAdapter
from robust_csc.attacks.specs import make_spec
from robust_csc.runtime import seeded

CHECK_POINTS = 32  # points the attacking checks use
LARGE_EPSILON = {"Linf": 0.5, "L2": 10.0}  # half the pixel range; an L2 ball that reaches far on 32x32 images
LARGE_EPSILON_MAX_ROBUST = 0.05  # "near 0": at most this fraction may survive
SQUARE_TOLERANCE = 0.002  # AutoAttack's own margin for Square beating the white-box attacks
MORE_STEPS_FACTOR = 4  # the cross-check's PGD: 4x the headline PGD's steps (40 by default) ...
MORE_RESTARTS = 2  # ... and 2 random restarts


def format_epsilon(eps: float) -> str:
    """8/255 for multiples of 1/255, else the number (as the result tables)."""
    k = eps * 255
    return f"{round(k)}/255" if abs(k - round(k)) < 1e-6 and round(k) > 0 else f"{eps:g}"


def check(passed: bool, detail: str) -> dict:
    return {"passed": bool(passed), "detail": detail}




def margin_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Per-example (best other logit - true logit): unlike cross-entropy it never saturates to a zero gradient."""
    true = logits.gather(1, labels.view(-1, 1)).squeeze(1)
    others = logits.scatter(1, labels.view(-1, 1), float("-inf"))
    return others.max(dim=1).values - true


def gradient_check(run: nn.Module, images: Tensor, labels: Tensor) -> dict:
    """Input gradients of the margin loss are finite and not zero at every point."""
    x = images[:CHECK_POINTS].clone().requires_grad_(True)
    y = labels[:CHECK_POINTS]
    with torch.enable_grad():
        loss = margin_loss(run(x), y).sum()
        (grad,) = torch.autograd.grad(loss, x)
    per_point = grad.flatten(1).abs().sum(1)
    finite = bool(torch.isfinite(grad).all())
    zero = int((per_point == 0).sum())
    n = x.shape[0]
    if not finite:
        return check(False, f"non-finite input gradients at {int((~torch.isfinite(per_point)).sum())} of {n} points")
    if zero:
        return check(False, f"zero input gradient at {zero} of {n} points: gradients are masked, gradient attacks are blind")
    return check(True, f"finite and non-zero at all {n} points (mean |grad|_1 {float(per_point.mean()):.3g})")


def _pgd_robust(run, images, labels, norm, eps, steps, restarts, seed, random_start=True) -> int:
    params = {"steps": steps, "restarts": restarts}
    if not random_start:
        params["random_start"] = False
    adapter = TorchattacksAdapter(make_spec("pgd", params), norm, num_classes=0, seed=seed)
    with seeded(seed):
        adv = adapter.perturb(run, images, labels, eps)
    with torch.no_grad():
        return int((run(adv).argmax(1) == labels).sum())


def large_epsilon_check(run, images, labels, norm, steps, seed) -> dict:
    """PGD from the clean point (no random start) at a huge epsilon must break (nearly) every point."""
    x, y = images[:CHECK_POINTS], labels[:CHECK_POINTS]
    if x.shape[0] == 0:
        return check(True, "no clean-correct points to attack")
    eps = LARGE_EPSILON[norm]
    robust = _pgd_robust(run, x, y, norm, eps, max(steps, 20), 1, seed, random_start=False)
    fraction = robust / x.shape[0]
    detail = f"PGD-{max(steps, 20)} at {norm} eps {eps:g}: {robust} of {x.shape[0]} clean-correct points still robust"
    if fraction > LARGE_EPSILON_MAX_ROBUST:
        detail += f" (more than {LARGE_EPSILON_MAX_ROBUST:.0%}: gradients do not lead anywhere)"
    return check(fraction <= LARGE_EPSILON_MAX_ROBUST, detail)


def monotone_check(worst: Mapping[float, int], n: int) -> dict:
    """Robust accuracy must not rise with epsilon."""
    epsilons = sorted(worst)
    rises = [(a, b) for a, b in zip(epsilons, epsilons[1:]) if worst[b] > worst[a]]
    figures = ", ".join(f"{format_epsilon(e)}: {worst[e]}/{n}" for e in epsilons)
    if rises:
        where = "; ".join(f"{worst[a]} at {format_epsilon(a)} -> {worst[b]} at {format_epsilon(b)}" for a, b in rises)
        return check(False, f"robust accuracy rises with epsilon ({where}); the attack is not converging")
    return check(True, f"non-increasing ({figures})")


def square_check(extra_broken: Mapping[float, int], n: int) -> dict:
    """Square (run after every white-box attack) must not break more than AutoAttack's 0.2% margin of points."""
    beats = {e: k for e, k in extra_broken.items() if n and k / n > SQUARE_TOLERANCE}
    if beats:
        where = ", ".join(f"{k} points at eps {format_epsilon(e)}" for e, k in sorted(beats.items()))
        return check(False, f"black-box Square broke points the white-box attacks left robust ({where}): gradients may be masked")
    return check(True, "Square broke no point beyond the white-box attacks' results")


def within_ball_check(outside: Mapping[str, int]) -> dict:
    """Bounded attacks must return points inside the epsilon ball and [0, 1]; such points are not counted anyway."""
    bad = {k: v for k, v in outside.items() if v}
    if bad:
        return check(False, "points outside the epsilon ball or [0, 1], not counted: " + ", ".join(f"{k} {v}" for k, v in bad.items()))
    return check(True, "every adversarial example lies in the epsilon ball and in [0, 1]")


def autoattack_check(messages: list[str]) -> dict:
    """AutoAttack's own self-checks (randomness, probabilities, dynamic defence, zero gradients, Square)."""
    if messages:
        return check(False, " | ".join(messages))
    return check(True, "no warning from AutoAttack's self-checks (random, softmax, dynamic, zero gradients, Square)")


__all__ = [
    "CHECK_POINTS",
    "LARGE_EPSILON",
    "autoattack_check",
    "gradient_check",
    "large_epsilon_check",
    "margin_loss",
    "monotone_check",
    "seeded",
    "square_check",
    "within_ball_check",
]
