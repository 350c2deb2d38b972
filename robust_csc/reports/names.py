"""Readable names for what the store names exactly: lambda and TTA settings, policies, attacks, data, numbers.

The store keeps exact names ("policy:7f2753419926", "tent[adam,lr=0.001,...,bs=128]", "stem=0.5"), and so do
the report's CSV files; tables, headings, legends and sentences use these instead:

    trained                      -> trained λ
    stem=0.5 / 0.5 / scale=1.5   -> stem λ = 0.50 / λ = 0.50 / λ × 1.50
    policy:7f2753419926          -> recon rule, per sample (7f27…)     (grid policy (per cell) (8e43…))
    tent[adam,lr=0.001,...]      -> tent (Adam, lr 0.001, episodic, batch 128)
    bn-adapt[N=0,seed=0,bs=8]    -> bn-adapt (N = 0, batch 8)
    tent[...]+policy:7f27...     -> tent (Adam, ...) + recon rule, per sample (7f27…)

A policy's rule is read from its cells (their extras say "rule" and, for the recon rule, "per"): while a report
is built, ``naming(frame)`` makes those known to every label.  One number format: percent with one decimal
(``pct``), percentage points with a sign (``pts``), lambda with two decimals (``lam``).
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from typing import Iterator, Mapping

from robust_csc.reports.cells import POLICY_PREFIX, TRAINED

_POLICIES: contextvars.ContextVar[dict] = contextvars.ContextVar("robust_csc_report_policies", default={})


# ---------------------------------------------------------------- numbers


def pct(value: float, digits: int = 1) -> str:
    """0.853 -> "85.3%"; NaN -> "n/a"."""
    return "n/a" if _missing(value) else f"{value * 100:.{digits}f}%"


def pts(value: float) -> str:
    """0.048 -> "+4.8 pts" (percentage points)."""
    return "n/a" if _missing(value) else f"{value * 100:+.1f} pts".replace("-", "−", 1)


def lam(value: float) -> str:
    """A lambda value, always with two decimals: 0.35, 0.40, 1.00."""
    return "n/a" if _missing(value) else f"{value:.2f}"


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


# ---------------------------------------------------------------- settings


def policy_kinds(frame) -> dict[str, dict]:
    """{policy store name: {"rule": ..., "per": ...}} from the cells that ran a policy (alone or composed)."""
    out: dict[str, dict] = {}
    if frame is None or len(frame) == 0 or "lambda_setting" not in frame:
        return out
    extras = frame["extras"] if "extras" in frame else [{}] * len(frame)
    for name, extra in zip(frame["lambda_setting"], extras):
        if POLICY_PREFIX not in str(name) or not isinstance(extra, Mapping) or "rule" not in extra:
            continue
        policy = POLICY_PREFIX + str(name).split(POLICY_PREFIX, 1)[1].split("+", 1)[0]
        known = out.setdefault(policy, {})
        known.setdefault("rule", extra.get("rule"))
        if extra.get("per"):
            known.setdefault("per", extra.get("per"))
        if extra.get("layers"):
            known.setdefault("layers", extra.get("layers"))
    return out


@contextlib.contextmanager
def naming(frame) -> Iterator[None]:
    """While a report is built: the policies of frame's cells are known to setting_label."""
    token = _POLICIES.set(policy_kinds(frame))
    try:
        yield
    finally:
        _POLICIES.reset(token)


def short_hash(text: str) -> str:
    return f"{text[:4]}…"


def policy_label(name: str) -> str:
    """"recon rule, per sample (7f27…)", "grid policy (per cell) (8e43…)", or "λ policy (7f27…)" when unknown."""
    digest = name[len(POLICY_PREFIX):]
    kind = _POLICIES.get().get(name, {})
    rule = kind.get("rule")
    if rule == "recon":
        per = kind.get("per")
        return f"recon rule, per {per} ({short_hash(digest)})" if per else f"recon rule ({short_hash(digest)})"
    if rule == "grid":
        return f"grid policy (per cell) ({short_hash(digest)})"
    return f"λ policy ({short_hash(digest)})"


def _number(value: float) -> str:
    return f"{value:g}"


def adaptation_label(text: str) -> str | None:
    """"tent (Adam, lr 0.001, episodic, batch 128)" for a stored TTA name; None if it is none."""
    from robust_csc.adaptation.settings import BNAdapt, Tent, parse_adaptation
    from robust_csc.errors import RobustCSCError

    try:
        adaptation = parse_adaptation(text)
    except RobustCSCError:
        return None
    batch = f", batch {adaptation.batch_size}" if adaptation.batch_size else ""
    if isinstance(adaptation, BNAdapt):
        return f"bn-adapt (N = {_number(adaptation.prior)}{batch})"
    if isinstance(adaptation, Tent):
        optimizer = "Adam" if adaptation.optimizer == "adam" else "SGD"
        steps = f", {adaptation.steps} steps" if adaptation.steps != 1 else ""
        mode = "episodic" if adaptation.episodic else "online"
        return f"tent ({optimizer}, lr {_number(adaptation.lr)}{steps}, {mode}{batch})"
    return None


def lambda_label(name: str) -> str:
    """A lambda setting or policy: "trained λ", "stem λ = 0.50", "λ = 0.50", "λ × 1.50", a policy's label."""
    if name == TRAINED:
        return "trained λ"
    if name.startswith(POLICY_PREFIX):
        return policy_label(name)
    from robust_csc.errors import RobustCSCError
    from robust_csc.lambdas import LambdaSetting

    try:
        setting = LambdaSetting.parse(name)
    except RobustCSCError:
        return name
    if setting.kind == "stem":
        return f"stem λ = {lam(setting.value)}"
    if setting.kind == "scale":
        return f"λ × {lam(setting.value)}"
    return f"λ = {lam(setting.value)}"


def setting_label(name: str) -> str:
    """Any stored lambda_setting as a reader names it (see the module docstring)."""
    name = str(name)
    from robust_csc.adaptation.settings import split_top
    from robust_csc.errors import RobustCSCError

    try:
        parts = split_top(name, "+")
    except RobustCSCError:
        return name
    if len(parts) == 2:
        adaptation = adaptation_label(parts[0])
        if adaptation is not None:
            return f"{adaptation} + {lambda_label(parts[1])}"
    if len(parts) == 1:
        adaptation = adaptation_label(name)
        if adaptation is not None:
            return adaptation
    return lambda_label(name)


def setting_kind(name: str) -> str:
    """"trained", "lambda" (fixed), "policy", "tta" or "tta+lambda": what a setting does, for grouping."""
    name = str(name)
    if name == TRAINED:
        return "trained"
    label = setting_label(name)
    if " + " in label and not name.startswith(POLICY_PREFIX):
        return "tta+lambda"
    if label.startswith(("tent (", "bn-adapt (")):
        return "tta"
    if name.startswith(POLICY_PREFIX):
        return "policy"
    return "lambda"


def adaptation_part(name: str) -> str | None:
    """The TTA part of a stored name ("tent[...]" of "tent[...]+policy:..."), None without one."""
    if setting_kind(name) not in ("tta", "tta+lambda"):
        return None
    from robust_csc.adaptation.settings import split_top

    return split_top(str(name), "+")[0]


def lambda_part(name: str) -> str:
    """The lambda part of a stored name ("policy:..." of "tent[...]+policy:...", "trained" of "tent[...]")."""
    kind = setting_kind(name)
    if kind == "tta":
        return TRAINED
    if kind == "tta+lambda":
        from robust_csc.adaptation.settings import split_top

        return split_top(str(name), "+")[1]
    return str(name)


# ---------------------------------------------------------------- attacks, norms, data


_ATTACKS = {
    "pgd": "PGD", "fgsm": "FGSM", "apgd-ce": "APGD-CE", "apgd-t": "APGD-T", "apgd-dlr": "APGD-DLR", "fab": "FAB",
    "fab-t": "FAB-T", "square": "Square", "cw": "C&W", "worst-case": "worst case",
    "autoattack-standard": "AutoAttack (standard)", "autoattack-plus": "AutoAttack (plus)",
    "autoattack-rand": "AutoAttack (rand)", "autoattack": "AutoAttack",
}
_VARIANTS = {"bpda-fixed": "BPDA, λ fixed", "bpda-repick": "BPDA, λ re-picked", "transfer": "transfer from trained λ",
             "check": "sanity check"}


def attack_label(attack_id: str) -> str:
    """"pgd" -> "PGD", "pgd~bpda-fixed" -> "PGD (BPDA, λ fixed)", "pgd-40x2~check" -> "PGD-40x2 (sanity check)"."""
    base, _, variant = str(attack_id).partition("~")
    head, _, params = base.partition("[")
    text = _ATTACKS.get(head)
    if text is None:
        stem, dash, rest = head.partition("-")
        text = (_ATTACKS.get(stem, stem.upper()) + (f"-{rest}" if dash else "")) if head else head
    if params:
        text += f" [{params}"
    if variant:
        text += f" ({_VARIANTS.get(variant, variant)})"
    return text


def norm_label(norm: str) -> str:
    return {"linf": "L∞", "l2": "L2"}.get(str(norm).lower(), str(norm))


def data_label(dataset: str, split: str) -> str:
    """"digits-c[cifar], first 200 test images"; a reporting split names its half."""
    import re

    text = dataset
    found = re.match(r"^(?P<base>.*):report:s(?P<seed>\d+)(?P<rest>.*)$", split)
    if found:
        base = _split_text(found["base"])
        return f"{text}, the reporting half of {base} (split seed {found['seed']}){_subset(found['rest'])}"
    return f"{text}, {_split_text(split)}"


def _split_text(split: str) -> str:
    import re

    if split == "test":
        return "all test images"
    found = re.match(r"^test\[:(\d+)\]$", split)
    if found:
        return f"the first {found[1]} test images"
    return f"split {split}"


def _subset(rest: str) -> str:
    import re

    found = re.match(r"^\[:(\d+)\]$", rest or "")
    return f", its first {found[1]}" if found else (f" {rest}" if rest else "")


__all__ = [
    "adaptation_label", "adaptation_part", "attack_label", "data_label", "lam", "lambda_label", "lambda_part",
    "naming", "norm_label", "pct", "policy_kinds", "policy_label", "pts", "setting_kind", "setting_label",
]
