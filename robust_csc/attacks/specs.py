"""What an attack is, by name: parsing, checking and the store's attack id.

An AttackSpec is a name plus the parameters a user chose.  Its ``attack_id``
is what the results store records (lower case, every non-default parameter
that changes the result written into it); ``key(norm)`` is the store's attack
column, f"{attack_id}:{norm}".
"""

from __future__ import annotations

import inspect
import math
import numbers
import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Iterable, Mapping

from robust_csc.errors import RobustCSCError

NORMS = ("Linf", "L2")

# torchattacks attacks that fit a norm-ball evaluation, by lower-case name, and their norm:
# "both" takes a norm= argument; "L2-min" is a minimum-norm L2 attack without eps (only
# perturbations that end up inside the ball count).  L0/L1 attacks, the noise "attacks",
# torchattacks' own AutoAttack copy and the wrappers are left out on purpose.
TORCHATTACKS_NORMS = {
    "fgsm": "Linf", "bim": "Linf", "rfgsm": "Linf", "pgd": "Linf", "eotpgd": "Linf", "ffgsm": "Linf",
    "tpgd": "Linf", "mifgsm": "Linf", "upgd": "Linf", "difgsm": "Linf", "tifgsm": "Linf", "jitter": "Linf",
    "nifgsm": "Linf", "sinifgsm": "Linf", "vmifgsm": "Linf", "vnifgsm": "Linf", "spsa": "Linf", "pgdrs": "Linf",
    "pgdl2": "L2", "pgdrsl2": "L2",
    "apgd": "both", "apgdt": "both", "square": "both",  # "fab" is AutoAttack's FAB here
    "cw": "L2-min", "deepfool": "L2-min",
}
# Query-based attacks: they run after every white-box attack of a run, so that what they
# break beyond the white-box attacks is seen (a sign of gradient masking).
BLACK_BOX = frozenset({"square", "spsa"})
# "pgd" means PGD in the run's norm: torchattacks.PGD for Linf, PGDL2 for L2.
PGD_CLASSES = {"Linf": "pgd", "L2": "pgdl2"}

# pyautoattack: the suite, its versions and its member attacks (also usable alone).
AUTOATTACK = "autoattack"
AA_VERSIONS = ("standard", "plus", "rand", "custom")
AA_ATTACKS = ("apgd-ce", "apgd-dlr", "apgd-t", "fab", "fab-t")  # AutoAttack's Square is reachable via a custom list
AA_ALL = AA_ATTACKS + ("square",)
AA_DEFAULT_STEPS = 100
TARGETED = ("apgd-t", "fab-t")
VERSION_ATTACKS = {
    "standard": ("apgd-ce", "apgd-t", "fab-t", "square"),
    "plus": ("apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t"),
    "rand": ("apgd-ce", "apgd-dlr"),
}
AA_PARAMS = ("version", "attacks", "steps", "n_queries")

# Parameters at 0 (or below) turn an attack into a no-op that reports every point robust: refused.
NO_OP_WHEN_ZERO = frozenset({"alpha", "steps", "n_queries", "n_restarts", "lr", "nb_iter", "nb_sample", "eot_iter", "p_init", "delta"})

# Set by the runner, never by the user.
RESERVED = ("model", "eps", "norm", "seed", "n_classes", "verbose", "device")


def check_norm(norm: object) -> str:
    """'Linf' or 'L2' (case-insensitive; 'inf' and 'l_inf' accepted)."""
    text = str(norm).strip().lower().replace("_", "")
    for name in NORMS:
        if text in (name.lower(), name.lower().lstrip("l")):
            return name
    raise RobustCSCError(f"unknown norm {norm!r}; use Linf or L2")


# Budgets past these are legal but unusual enough to be typos (8 instead of 8/255): they need allow_large=True.
# L2: 5.0 covers ImageNet's customary 3.0; Linf: 64/255 is 8 times the customary 8/255.
LARGE_EPSILON_BOUND = {"Linf": 64 / 255, "L2": 5.0}


def check_epsilons(epsilons: object, norm: str | None = None, *, allow_large: bool = False) -> tuple[float, ...]:
    """Finite epsilons > 0, in pixel units of [0, 1] images, sorted and without repeats.

    With a norm: a Linf budget above 1 covers the whole image and is refused;
    budgets above LARGE_EPSILON_BOUND[norm] need allow_large (--allow-large-eps).
    """
    if isinstance(epsilons, (numbers.Real, str)) and not isinstance(epsilons, bool):
        epsilons = [epsilons]
    try:
        items = list(epsilons)  # type: ignore[arg-type]
    except TypeError:
        raise RobustCSCError(f"epsilons {epsilons!r} are not a list; pass numbers such as 2/255, 8/255") from None
    if not items:
        raise RobustCSCError("no epsilon given; pass at least one, such as 8/255")
    out = []
    for item in items:
        value = parse_number(item) if isinstance(item, str) else item
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value <= 0:
            raise RobustCSCError(f"epsilon {item!r} is not a finite number > 0; pass e.g. 8/255 (pixels in [0, 1])")
        out.append(float(value))
    if norm is not None:
        norm = check_norm(norm)
        for value in out:
            if norm == "Linf" and value > 1:
                raise RobustCSCError(
                    f"Linf epsilon {value:g} exceeds 1, a ball that covers every [0, 1] image; pass pixel units such as 8/255"
                )
            if value > LARGE_EPSILON_BOUND[norm] + 1e-12 and not allow_large:
                bound = "64/255" if norm == "Linf" else f"{LARGE_EPSILON_BOUND[norm]:g}"
                raise RobustCSCError(
                    f"{norm} epsilon {value:g} is above {bound}, far past the usual budgets; if you mean it pass "
                    "--allow-large-eps (allow_large=True), else pass pixel units such as 8/255"
                )
    return tuple(sorted(set(out)))


def parse_number(text: str) -> float:
    """A number or a fraction such as '8/255'."""
    raw = str(text).strip()
    try:
        if "/" in raw:
            num, den = raw.split("/", 1)
            return float(num) / float(den)
        return float(raw)
    except (ValueError, ZeroDivisionError):
        raise RobustCSCError(f"{text!r} is not a number; write e.g. 0.03 or 8/255") from None


@lru_cache(maxsize=None)
def torchattacks_class(name: str):
    """The torchattacks class of a lower-case name in TORCHATTACKS_NORMS."""
    import torchattacks

    for cls_name in torchattacks.__all__:
        if cls_name.lower() == name:
            return getattr(torchattacks, cls_name)
    raise RobustCSCError(f"torchattacks has no attack {name!r}")  # pragma: no cover - table and package agree


@lru_cache(maxsize=None)
def torchattacks_defaults(name: str) -> dict[str, Any]:
    """The keyword defaults of a torchattacks attack's constructor."""
    signature = inspect.signature(torchattacks_class(name).__init__)
    return {k: p.default for k, p in signature.parameters.items() if p.default is not inspect.Parameter.empty}


def _fmt_value(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "+".join(_fmt_value(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value).lower() if isinstance(value, bool) else str(value)


@dataclass(frozen=True)
class AttackSpec:
    """One attack: ``name`` (lower case) and the parameters chosen (defaults left out).

    name: "pgd" (norm-dependent), a torchattacks name (TORCHATTACKS_NORMS),
    "autoattack" (params version, attacks, steps, n_queries) or one of
    AutoAttack's members alone ("apgd-ce", "apgd-t", ...).
    Parameters: "steps" and "restarts" for every attack that iterates or
    restarts, any constructor argument of the torchattacks class otherwise.
    """

    name: str
    params: tuple[tuple[str, Any], ...] = field(default=())

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.params)

    @property
    def family(self) -> str:
        """'autoattack' for pyautoattack, 'torchattacks' otherwise."""
        return AUTOATTACK if self.name == AUTOATTACK or self.name in AA_ATTACKS else "torchattacks"

    @property
    def black_box(self) -> bool:
        return self.name in BLACK_BOX

    @property
    def white_box(self) -> bool:
        return not self.black_box

    # -- what AutoAttack runs --------------------------------------------------

    def autoattack_version(self) -> str:
        if self.name != AUTOATTACK:
            return "custom"
        return self.options.get("version", "custom" if "attacks" in self.options else "standard")

    def autoattack_members(self) -> tuple[str, ...]:
        if self.name in AA_ATTACKS:
            return (self.name,)
        version = self.autoattack_version()
        return tuple(self.options["attacks"]) if version == "custom" else VERSION_ATTACKS[version]

    # -- torchattacks ----------------------------------------------------------

    def torchattacks_name(self, norm: str) -> str:
        return PGD_CLASSES[norm] if self.name == "pgd" else self.name

    def steps_default(self, norm: str) -> int | None:
        if self.family == AUTOATTACK:
            return AA_DEFAULT_STEPS
        return torchattacks_defaults(self.torchattacks_name(norm)).get("steps")

    # -- identity ----------------------------------------------------------------

    def attack_id(self, norm: str) -> str:
        """The store's id: e.g. pgd, pgd-50x3 (50 steps, 3 restarts), square[n_queries=1000], autoattack-standard."""
        options = self.options
        base = self.name
        if self.name == AUTOATTACK:
            version = self.autoattack_version()
            base = f"{AUTOATTACK}-{version}"
            options.pop("version", None)
        steps = options.pop("steps", None)
        restarts = options.pop("restarts", None)
        default_steps = self.steps_default(norm)
        if steps is not None and steps != default_steps or restarts not in (None, 1):
            if default_steps is not None:
                base += f"-{steps if steps is not None else default_steps}" + (f"x{restarts}" if restarts not in (None, 1) else "")
            else:
                options["restarts"] = restarts
        options = {k: v for k, v in options.items() if v is not None}
        if options:
            base += "[" + ",".join(f"{k}={_fmt_value(v)}" for k, v in sorted(options.items())) + "]"
        return base

    def key(self, norm: str) -> str:
        """The store's attack column: f"{attack_id}:{norm}"."""
        return f"{self.attack_id(norm)}:{norm}"


def check_norm_fits(spec: AttackSpec, norm: str) -> None:
    """Refuse an attack that does not work in the norm of the run."""
    if spec.family == AUTOATTACK or spec.name == "pgd":
        return
    kind = TORCHATTACKS_NORMS[spec.name]
    own = "L2" if kind == "L2-min" else kind
    if own != "both" and own != norm:
        others = sorted(n for n, k in TORCHATTACKS_NORMS.items() if k in ("both", norm, f"{norm}-min"))
        raise RobustCSCError(
            f"{spec.name} is an {own} attack and the run's norm is {norm}; pass --norm {own} or use an {norm} attack "
            f"(pgd, autoattack, {', '.join(others)})"
        )


def is_minimum_norm(spec: AttackSpec) -> bool:
    """An attack without eps (CW, DeepFool): only adversarial examples inside the ball count."""
    return TORCHATTACKS_NORMS.get(spec.name) == "L2-min"


def _check_int_param(name: str, key: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise RobustCSCError(f"{name} parameter {key}={value!r} is invalid; pass an integer >= {minimum}")
    return int(value)


def make_spec(name: str, params: Mapping[str, Any] | None = None) -> AttackSpec:
    """A checked AttackSpec; every user mistake is a RobustCSCError naming the fix."""
    key = str(name).strip().lower()
    params = dict(params or {})
    if key in ("aa", "auto-attack"):
        key = AUTOATTACK
    known = ("pgd", AUTOATTACK) + AA_ATTACKS + tuple(TORCHATTACKS_NORMS)
    if key not in known:
        raise RobustCSCError(
            f"unknown attack {name!r}; use pgd, autoattack, an AutoAttack member ({', '.join(AA_ATTACKS)}) "
            f"or a torchattacks name ({', '.join(sorted(TORCHATTACKS_NORMS))})"
        )
    reserved = sorted(set(params) & set(RESERVED))
    if reserved:
        raise RobustCSCError(
            f"{key} parameter {', '.join(reserved)} is set by the runner (eps from the epsilon list, norm from the "
            "norm, seed from the seed); leave it out"
        )
    checked: dict[str, Any] = {}
    for pname in ("steps", "restarts"):
        if params.get(pname) is not None:
            checked[pname] = _check_int_param(key, pname, params.pop(pname), 1)
        params.pop(pname, None)
    if key == AUTOATTACK or key in AA_ATTACKS:
        _check_autoattack_params(key, params, checked)
    else:
        _check_torchattacks_params(key, params, checked)
    return AttackSpec(key, tuple(sorted(checked.items())))


def _check_autoattack_params(key: str, params: dict[str, Any], checked: dict[str, Any]) -> None:
    allowed = AA_PARAMS if key == AUTOATTACK else ("steps", "n_queries")
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise RobustCSCError(f"{key} has no parameter {', '.join(unknown)}; use {', '.join(('steps',) + tuple(a for a in allowed if a != 'steps'))}")
    if checked.get("restarts") is not None:
        raise RobustCSCError(f"{key} sets its own restarts per version; leave restarts out")
    if params.get("n_queries") is not None:
        checked["n_queries"] = _check_int_param(key, "n_queries", params["n_queries"], 1)
    if key != AUTOATTACK:
        return
    attacks = params.get("attacks")
    version = params.get("version")
    if version is not None:
        version = str(version).strip().lower()
        if version not in AA_VERSIONS:
            raise RobustCSCError(f"unknown AutoAttack version {params['version']!r}; use one of {', '.join(AA_VERSIONS)}")
    if attacks is not None:
        if isinstance(attacks, str):
            attacks = [a for a in re.split(r"[+\s]+", attacks) if a]
        attacks = tuple(dict.fromkeys(str(a).strip().lower() for a in attacks))
        bad = [a for a in attacks if a not in AA_ALL]
        if bad or not attacks:
            raise RobustCSCError(f"AutoAttack has no attack {', '.join(bad) or '(empty list)'}; choose from {', '.join(AA_ALL)}")
        if version not in (None, "custom"):
            raise RobustCSCError(f"an AutoAttack attack list needs version custom, not {version}; drop the version or the list")
        checked["attacks"] = attacks
        checked["version"] = "custom"
    elif version == "custom":
        raise RobustCSCError("AutoAttack version custom needs an attack list; pass e.g. autoattack[attacks=apgd-ce+apgd-t]")
    elif version is not None:
        checked["version"] = version


def _check_torchattacks_params(key: str, params: dict[str, Any], checked: dict[str, Any]) -> None:
    names = {PGD_CLASSES[n] for n in NORMS} if key == "pgd" else {key}
    defaults: dict[str, Any] = {}
    for cls_name in names:
        defaults.update(torchattacks_defaults(cls_name))
    if checked.get("steps") is not None and "steps" not in defaults:
        raise RobustCSCError(f"{key} takes no steps; leave steps out for it")
    own_restarts = "random_start" in defaults and "n_restarts" not in defaults
    if checked.get("restarts") not in (None, 1) and "n_restarts" not in defaults and not own_restarts:
        raise RobustCSCError(f"{key} has no random start, so restarts change nothing; leave restarts out for it")
    if "n_restarts" in params:
        raise RobustCSCError(f"{key}: write restarts=N, not n_restarts")
    unknown = sorted(set(params) - set(defaults))
    if unknown:
        usable = sorted(set(defaults) - set(RESERVED) - {"n_restarts"}) + ["restarts"] * ("n_restarts" in defaults or own_restarts)
        raise RobustCSCError(f"{key} has no parameter {', '.join(unknown)}; its parameters are {', '.join(usable) or 'none'}")
    for pname, value in params.items():
        default = defaults[pname]
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise RobustCSCError(f"{key} parameter {pname}={value!r} must be true or false")
        elif isinstance(default, numbers.Real) and (isinstance(value, bool) or not isinstance(value, numbers.Real)):
            raise RobustCSCError(f"{key} parameter {pname}={value!r} must be a number")
        if pname in NO_OP_WHEN_ZERO and not (isinstance(value, numbers.Real) and math.isfinite(value) and value > 0):
            raise RobustCSCError(
                f"{key} parameter {pname}={value!r} makes the attack do nothing (robust accuracy would equal clean "
                f"accuracy); pass {pname} > 0 or leave it at its default"
            )
        if value != default:
            checked[pname] = value


def parse_value(text: str) -> Any:
    """A parameter value from text: int, float (fractions too), true/false, or the text itself."""
    raw = text.strip()
    if raw.lower() in ("true", "false"):
        return raw.lower() == "true"
    if re.fullmatch(r"[+-]?\d+", raw):
        return int(raw)
    try:
        return parse_number(raw)
    except RobustCSCError:
        return raw


def split_top_level(text: str, sep: str = ",") -> list[str]:
    """Split on sep outside [brackets]."""
    parts, depth, current = [], 0, []
    for ch in text:
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth = max(0, depth - 1)
        if ch == sep and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return [p.strip() for p in parts if p.strip()]


def parse_attack(text: str) -> AttackSpec:
    """'pgd', 'square[n_queries=500]', 'autoattack[attacks=apgd-ce+apgd-t,steps=20]' -> AttackSpec."""
    raw = str(text).strip()
    match = re.fullmatch(r"([A-Za-z0-9_\-]+)\s*(?:\[(.*)\])?", raw)
    if not match:
        raise RobustCSCError(f"attack {text!r} is not understood; write NAME or NAME[key=value,...], e.g. square[n_queries=500]")
    params: dict[str, Any] = {}
    for item in split_top_level(match.group(2) or ""):
        pname, sep, value = item.partition("=")
        if not sep or not pname.strip():
            raise RobustCSCError(f"attack parameter {item!r} in {text!r} is not key=value; write e.g. square[n_queries=500]")
        params[pname.strip().lower()] = parse_value(value)
    return make_spec(match.group(1), params)


def as_specs(
    attacks: Iterable[Any] | str | AttackSpec,
    *,
    steps: int | None = None,
    restarts: int | None = None,
    version: str | None = None,
) -> tuple[AttackSpec, ...]:
    """Attacks (specs, names, 'name[k=v]' strings or (name, params) pairs) as specs.

    steps / restarts / version apply to every attack that takes them (and must
    fit at least one); black-box attacks move to the end of the run.
    """
    if isinstance(attacks, (str, AttackSpec)) or (isinstance(attacks, tuple) and len(attacks) == 2 and isinstance(attacks[1], Mapping)):
        attacks = [attacks]
    specs: list[AttackSpec] = []
    for item in attacks:
        if isinstance(item, AttackSpec):
            spec = make_spec(item.name, item.options)
        elif isinstance(item, str):
            specs.extend(parse_attack(part) for part in split_top_level(item))  # a comma list, brackets kept
            continue
        elif isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[1], Mapping):
            spec = make_spec(item[0], item[1])
        else:
            raise RobustCSCError(f"attack {item!r} is not understood; pass a name such as 'pgd' or an AttackSpec")
        specs.append(spec)
    if not specs:
        raise RobustCSCError("no attack given; pass at least one, such as pgd or autoattack")
    specs = [_with_common(s, steps, restarts, version) for s in specs]
    _check_common_fits(specs, steps, restarts, version)
    unique = list(dict.fromkeys(specs))
    return tuple([s for s in unique if s.white_box] + [s for s in unique if s.black_box])


def _takes(spec: AttackSpec, option: str) -> bool:
    if option == "version":
        return spec.name == AUTOATTACK and "attacks" not in spec.options
    try:
        make_spec(spec.name, {**spec.options, option: 2})
        return True
    except RobustCSCError:
        return False


def _with_common(spec: AttackSpec, steps: int | None, restarts: int | None, version: str | None) -> AttackSpec:
    extra = {}
    for option, value in (("steps", steps), ("restarts", restarts), ("version", version)):
        if value is not None and option not in spec.options and _takes(spec, option):
            extra[option] = value
    return make_spec(spec.name, {**spec.options, **extra}) if extra else spec


def _check_common_fits(specs: list[AttackSpec], steps, restarts, version) -> None:
    for option, value in (("steps", steps), ("restarts", restarts), ("version", version)):
        if value is not None and not any(option in s.options for s in specs):
            what = {"steps": "iterates", "restarts": "restarts from random points", "version": "is autoattack"}[option]
            raise RobustCSCError(f"{option} {value} fits none of the attacks ({', '.join(s.name for s in specs)}): none {what}; drop it")


__all__ = [
    "AA_ATTACKS",
    "AUTOATTACK",
    "AttackSpec",
    "BLACK_BOX",
    "NORMS",
    "TARGETED",
    "TORCHATTACKS_NORMS",
    "as_specs",
    "check_epsilons",
    "check_norm_fits",
    "is_minimum_norm",
    "check_norm",
    "make_spec",
    "parse_attack",
    "parse_number",
]
