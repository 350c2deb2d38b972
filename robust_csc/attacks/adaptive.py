"""Adaptive attacks on a lambda policy that reads its input (Athalye et al. 2018, BPDA; Tramer et al. 2020).

The recon rule picks lambda from the input itself, so the defended model is
input-adaptive: an attack through its own forward pass may be steered by the
choice (or by its clipped, flat regions) instead of by the classifier.  Each
white-box attack is therefore also run on three surrogates, and every
adversarial example is judged on the deployed, policy-wrapped model:

- "bpda-fixed": the model at the lambda the policy chose for each point's
  clean image (found as the nearest clean anchor), a constant the attack
  cannot move;
- "bpda-repick": the deployed forward pass (lambda chosen again from the
  current input at every step), with the choice treated as a constant in the
  backward pass;
- "transfer": the same model at its trained lambdas (adversarial examples of
  the undefended model, transferred).

The pointwise worst case over the plain attack and these is what the runner
reports, and each one's own robust accuracy is kept, so a reader sees how
much robustness came from the attacker not knowing the rule.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from robust_csc.deployed import eval_only

VARIANTS = ("bpda-fixed", "bpda-repick", "transfer")
SEPARATOR = "~"  # attack id "pgd~bpda-fixed": the attack pgd run on the bpda-fixed surrogate


def is_input_adaptive(setting: Any) -> bool:
    """Whether a lambda setting chooses lambda from the input (and can build the surrogates)."""
    return bool(getattr(setting, "input_adaptive", False)) and callable(getattr(setting, "wrap", None))


def variant_id(attack_id: str, variant: str) -> str:
    return f"{attack_id}{SEPARATOR}{variant}"


def split_variant(attack_id: str) -> tuple[str, str]:
    """("pgd", "bpda-fixed") from "pgd~bpda-fixed"; ("pgd", "") from "pgd"."""
    base, _, variant = attack_id.partition(SEPARATOR)
    return base, variant


def surrogates(setting: Any, model: nn.Module, anchors: Tensor) -> dict[str, nn.Module]:
    """The three attack surrogates of an input-adaptive setting, each guarded to stay in eval mode.

    model: the raw model at its trained lambdas; anchors: the clean images of
    the attacked points (for bpda-fixed).
    """
    return {
        "bpda-fixed": eval_only(setting.wrap(model, mode="fixed", anchors=anchors)),
        "bpda-repick": eval_only(setting.wrap(model, mode="repick")),
        "transfer": eval_only(model),
    }


__all__ = ["SEPARATOR", "VARIANTS", "is_input_adaptive", "split_variant", "surrogates", "variant_id"]
