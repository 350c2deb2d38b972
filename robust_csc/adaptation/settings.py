"""Test-time adaptation as settings of a result cell, beside the lambda settings.

    from robust_csc.adaptation import BNAdapt, Tent, compose, parse_setting
    settings = [BNAdapt(prior=0), Tent(), compose(Tent(), "stem=0.5"), compose(BNAdapt(prior=16), policy)]
    evaluate(model, suite, ..., lambdas=[None, *settings], batch_size=128)

A setting here is what robust_csc.lambdas calls a lambda setting (a ``name``
and an ``applied(model, corruption, severity)`` context yielding the module to
call), so the harness runs, stores and resumes its cells like any other and
the report shows each name as a series.

- ``bn-adapt[N=...]``: BatchNorm statistics of every test batch, mixed with the
  source statistics at prior strength N (robust_csc.adaptation.batchnorm).
- ``tent[...]``: batch statistics plus one entropy step per batch on the
  BatchNorm affine parameters (robust_csc.adaptation.tent); episodic (reset to
  the source weights at the start of every cell) or online (carried from cell
  to cell of one run, in the run's cell order).
- ``<tta>+<lambda setting>``: the adaptation run on the model at a lambda
  setting or policy, e.g. ``tent[...]+stem=0.5`` or ``bn-adapt[N=0,...]+policy:7f27...``.

Names hold every parameter that changes results, the batch size included
(``bs=128``): TTA results depend on it. A setting built without a batch size
gets the harness's (``prepare_settings``, which the harness calls), so the
stored name always says the batch size the cells ran with; one built with
another batch size is refused. Labels never enter; every cell runs under a
forked torch RNG seeded with the setting's seed (the caller's RNG is left as it
was); the model's weights, buffers, requires_grad flags, grads and train/eval
flags are restored when the cell ends.
"""

from __future__ import annotations

import contextlib
import copy
import math
import numbers
import re
import weakref
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, ContextManager, Iterable, Iterator, Sequence

import torch
from torch import nn

from robust_csc.adaptation.batchnorm import batch_statistics, check_prior, require_batchnorm
from robust_csc.adaptation.tent import ModelSnapshot, TentRun, affine_parameters, check_batch
from robust_csc.errors import RobustCSCError
from robust_csc.runtime import seeded
from robust_csc.lambdas import LambdaSetting, as_setting

OPTIMIZERS = ("adam", "sgd")
# Tent's defaults, from the paper and the authors' code (github.com/DequanWang/tent):
# - adam: lr 1e-3, betas (0.9, 0.999), weight decay 0, 1 step per batch: cfgs/tent.yaml (OPTIM.METHOD Adam,
#   LR 1e-3, BETA 0.9, WD 0, STEPS 1; cifar10c.py passes betas=(BETA, 0.999)), the paper's CIFAR-10/100-C
#   setting (Adam, lr 0.001, batch 128; conf.py's TEST.BATCH_SIZE 128, the cfgs/*.yaml files use 200).
# - sgd: lr 0.00025, momentum 0.9, Nesterov, dampening 0, weight decay 0: the paper's ImageNet-C setting (SGD with
#   momentum, lr 0.00025, batch 64; the same in mariodoebler/test-time-adaptation cfgs/imagenet_c/tent.yaml) with
#   conf.py's OPTIM.MOMENTUM 0.9, DAMPENING 0.0, NESTEROV True.
# - Reset per cell: cifar10c.py resets the model and optimizer before every (corruption, severity). That is
#   "episodic" here; the authors' MODEL.EPISODIC flag means a reset before every batch, which is not offered.
ADAM_DEFAULTS = {"lr": 1e-3, "betas": (0.9, 0.999)}
SGD_DEFAULTS = {"lr": 2.5e-4, "momentum": 0.9, "nesterov": True}


# ---------------------------------------------------------------- small checks and formats


def _int(value: object, what: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise RobustCSCError(f"{what} {value!r} is invalid; pass an integer >= {minimum}")
    return int(value)


def _real(value: object, what: str, low: float = 0.0, high: float = math.inf, open_high: bool = False) -> float:
    ok = not isinstance(value, bool) and isinstance(value, numbers.Real) and math.isfinite(value)
    ok = ok and low <= value and (value < high if open_high else value <= high)
    if not ok:
        bound = f"in [{low:g}, {high:g})" if open_high else f">= {low:g}"
        raise RobustCSCError(f"{what} {value!r} is invalid; pass a finite number {bound}")
    return float(value)


def _batch_size(value: object) -> int | None:
    return None if value is None else _int(value, "test-time adaptation batch size", 1)


def _num(value: float) -> str:
    """The shortest text that reads back as the same float: names never merge two settings."""
    text = repr(float(value))
    return text[:-2] if text.endswith(".0") else text




# ---------------------------------------------------------------- the two adaptations


@dataclass(frozen=True)
class BNAdapt:
    """BatchNorm statistics re-estimated on every test batch, with the source statistics as a prior of strength N.

    prior: N (0: the test batch's statistics only); seed: torch's seed in each
    cell; batch_size: None = the harness's (set by prepare_settings).
    """

    prior: float = 0.0
    seed: int = 0
    batch_size: int | None = None

    kind: ClassVar[str] = "bn-adapt"
    needs_grad: ClassVar[bool] = False
    needs_csc: ClassVar[bool] = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "prior", check_prior(self.prior))
        object.__setattr__(self, "seed", _int(self.seed, "bn-adapt seed", 0))
        object.__setattr__(self, "batch_size", _batch_size(self.batch_size))

    @property
    def name(self) -> str:
        parts = [f"N={_num(self.prior)}", f"seed={self.seed}"] + ([f"bs={self.batch_size}"] if self.batch_size else [])
        return f"bn-adapt[{','.join(parts)}]"

    def check(self, model: nn.Module, model_name: str = "the model") -> None:
        """Refuse, in one line, a model without BatchNorm and a batch of one image without a prior."""
        require_batchnorm(model, self.name, model_name, self.prior)
        if self.batch_size == 1 and self.prior == 0:
            raise RobustCSCError(
                f"{self.name} at batch size 1 normalises every image by its own statistics, not the batch's; "
                "pass a batch size of at least 2 (--batch-size) or a prior N > 0, such as bn-adapt[N=16]"
            )

    @contextlib.contextmanager
    def adapting(self, model: nn.Module, run: nn.Module, model_name: str = "the model") -> Iterator[nn.Module]:
        """run (the model, or the model at a lambda setting) with model's BatchNorm layers adapted."""
        with seeded(self.seed), batch_statistics(model, self.prior, model_name):
            yield BatchRun(run, self.batch_size, self.name)

    def applied(self, model: nn.Module, corruption: str = "none", severity: int = 0) -> ContextManager[nn.Module]:
        """The model adapted for one cell (the cell's name does not matter); restored on exit."""
        return self.adapting(model, model)

    def cell_extra(self, corruption: str, severity: int, run: nn.Module) -> dict[str, Any]:
        return {"adaptation": self.kind, "prior": self.prior}


class BatchRun(nn.Module):
    """Calls inner; refuses batches larger than the batch size the setting is named for."""

    def __init__(self, inner: nn.Module, batch_size: int | None, what: str) -> None:
        super().__init__()
        self.inner, self.batch_size, self.what = inner, batch_size, what

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_batch(x, self.batch_size, self.what)
        return self.inner(x)


@dataclass(frozen=True)
class Tent:
    """Entropy minimisation of the BatchNorm affine parameters, one step per batch (defaults: see ADAM_DEFAULTS).

    optimizer "adam" (lr, betas) or "sgd" (lr, momentum, nesterov; dampening
    0); weight_decay; steps per batch; episodic: reset to the source weights
    at every cell (True) or carry the adapted weights and optimizer state
    from cell to cell of one run (False, "online"); seed: torch's seed in
    each cell; batch_size: None = the harness's (set by prepare_settings).
    """

    optimizer: str = "adam"
    lr: float | None = None
    betas: tuple[float, float] | None = None
    momentum: float | None = None
    nesterov: bool | None = None
    weight_decay: float = 0.0
    steps: int = 1
    episodic: bool = True
    seed: int = 0
    batch_size: int | None = None
    # The online state: adapted values and optimizer state after the last cell (never compared or printed).
    _carried: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    kind: ClassVar[str] = "tent"
    needs_grad: ClassVar[bool] = True
    needs_csc: ClassVar[bool] = False

    def __post_init__(self) -> None:
        opt = str(self.optimizer).lower()
        if opt not in OPTIMIZERS:
            raise RobustCSCError(f"tent optimizer {self.optimizer!r} is unknown; use adam or sgd")
        set_ = object.__setattr__
        set_(self, "optimizer", opt)
        if opt == "adam":
            if self.momentum is not None or self.nesterov is not None:
                raise RobustCSCError("momentum and nesterov are SGD settings; drop them or pass optimizer='sgd'")
            betas = ADAM_DEFAULTS["betas"] if self.betas is None else tuple(self.betas)
            if len(betas) != 2:
                raise RobustCSCError(
                    f"tent betas {self.betas!r} are not a pair; pass two numbers in [0, 1), such as (0.9, 0.999)"
                )
            set_(self, "betas", tuple(_real(b, "tent beta", 0.0, 1.0, open_high=True) for b in betas))
        else:
            if self.betas is not None:
                raise RobustCSCError("betas are an Adam setting; drop them or pass optimizer='adam'")
            momentum = SGD_DEFAULTS["momentum"] if self.momentum is None else self.momentum
            set_(self, "momentum", _real(momentum, "tent momentum"))
            nesterov = SGD_DEFAULTS["nesterov"] if self.nesterov is None else self.nesterov
            if not isinstance(nesterov, bool):
                raise RobustCSCError(f"tent nesterov {nesterov!r} is not True or False; pass a bool")
            if nesterov and self.momentum == 0:
                raise RobustCSCError(
                    "Nesterov momentum needs a momentum > 0; pass nesterov=False or a momentum such as 0.9"
                )
            set_(self, "nesterov", nesterov)
        defaults = ADAM_DEFAULTS if opt == "adam" else SGD_DEFAULTS
        lr = _real(defaults["lr"] if self.lr is None else self.lr, "tent learning rate")
        if lr == 0:
            raise RobustCSCError("tent learning rate 0 adapts nothing; pass a learning rate > 0 (or use bn-adapt[N=0])")
        set_(self, "lr", lr)
        set_(self, "weight_decay", _real(self.weight_decay, "tent weight decay"))
        set_(self, "steps", _int(self.steps, "tent steps per batch", 1))
        if not isinstance(self.episodic, bool):
            raise RobustCSCError(
                f"tent episodic {self.episodic!r} is not True or False; pass True (reset per cell) or False (online)"
            )
        set_(self, "seed", _int(self.seed, "tent seed", 0))
        set_(self, "batch_size", _batch_size(self.batch_size))

    @property
    def name(self) -> str:
        parts = [self.optimizer, f"lr={_num(self.lr)}"]
        if self.optimizer == "adam":
            parts.append(f"betas={_num(self.betas[0])}/{_num(self.betas[1])}")
        else:
            parts += [f"momentum={_num(self.momentum)}", f"nesterov={str(self.nesterov).lower()}"]
        parts += [f"wd={_num(self.weight_decay)}", f"steps={self.steps}", "episodic" if self.episodic else "online",
                  f"seed={self.seed}"]
        if self.batch_size:
            parts.append(f"bs={self.batch_size}")
        return f"tent[{','.join(parts)}]"

    def check(self, model: nn.Module, model_name: str = "the model") -> None:
        """Refuse, in one line, a model without affine BatchNorm layers and a batch of one image."""
        layers = require_batchnorm(model, self.name, model_name)
        if not affine_parameters(layers):
            raise RobustCSCError(
                f"{model_name}'s BatchNorm layers have no affine weight or bias, so {self.name} has nothing to "
                "optimise; use bn-adapt instead"
            )
        if self.batch_size == 1:
            raise RobustCSCError(
                f"{self.name} at batch size 1 normalises every image by its own statistics, not the batch's; "
                "pass a batch size of at least 2 (--batch-size)"
            )

    def make_optimizer(self, params: Sequence[nn.Parameter]) -> torch.optim.Optimizer:
        if self.optimizer == "adam":
            return torch.optim.Adam(params, lr=self.lr, betas=self.betas, weight_decay=self.weight_decay)
        return torch.optim.SGD(params, lr=self.lr, momentum=self.momentum, dampening=0.0,
                               weight_decay=self.weight_decay, nesterov=self.nesterov)

    @contextlib.contextmanager
    def adapting(self, model: nn.Module, run: nn.Module, model_name: str = "the model") -> Iterator[nn.Module]:
        """run, adapting model's BatchNorm affine parameters on every batch; the model is restored on exit."""
        if torch.is_inference_mode_enabled():
            raise RobustCSCError(
                f"{self.name} takes gradient steps, which torch.inference_mode forbids; "
                "run it outside inference mode (the harness does for settings with needs_grad)"
            )
        self.check(model, model_name)
        params = affine_parameters(require_batchnorm(model, self.name, model_name))
        snapshot = ModelSnapshot(model, params)
        try:
            with seeded(self.seed), batch_statistics(model, 0.0, model_name):
                for p in snapshot.all:
                    p.requires_grad_(False)
                for p in params:
                    p.requires_grad_(True)
                optimizer = self.make_optimizer(params)
                carried = self._carried_for(model)
                if carried:
                    with torch.no_grad():
                        for p, value in zip(params, carried["values"]):
                            p.copy_(value)
                    optimizer.load_state_dict(copy.deepcopy(carried["optimizer"]))
                runner = TentRun(run, optimizer, self.steps, self.batch_size, carried.get("cells", 0))
                yield runner
                if not self.episodic:
                    self._carried.clear()
                    self._carried.update(
                        model=weakref.ref(model),
                        values=[p.detach().clone() for p in params],
                        optimizer=copy.deepcopy(optimizer.state_dict()),
                        cells=runner.cells_before + 1,
                    )
        finally:
            snapshot.restore()

    def _carried_for(self, model: nn.Module) -> dict:
        """Online: what the last cell of this run on this model left; episodic (or another model): nothing."""
        if self.episodic or self._carried.get("model", lambda: None)() is not model:
            return {}
        return self._carried

    def applied(self, model: nn.Module, corruption: str = "none", severity: int = 0) -> ContextManager[nn.Module]:
        """The model adapting during one cell (the cell's name does not matter); restored on exit."""
        return self.adapting(model, model)

    def cell_extra(self, corruption: str, severity: int, run: nn.Module) -> dict[str, Any]:
        extra: dict[str, Any] = {"adaptation": self.kind, "mean_entropy": run.mean_entropy()}
        if not self.episodic:  # what this cell started from: the cells adapted before it in this run
            extra["online_cells_before"] = run.cells_before
        return extra


ADAPTATIONS = (BNAdapt, Tent)


# ---------------------------------------------------------------- on top of a lambda setting


@dataclass(frozen=True)
class Composed:
    """A test-time adaptation run on the model at a lambda setting or policy (an SDNet's lambda)."""

    adaptation: BNAdapt | Tent
    lambdas: Any  # a LambdaSetting or a policy (robust_csc.lambdas.LambdaPolicyLike)

    needs_csc: ClassVar[bool] = True

    @property
    def name(self) -> str:
        return f"{self.adaptation.name}+{self.lambdas.name}"

    @property
    def needs_grad(self) -> bool:
        return self.adaptation.needs_grad

    @contextlib.contextmanager
    def applied(self, model: nn.Module, corruption: str = "none", severity: int = 0) -> Iterator[nn.Module]:
        """The lambdas set for the cell, the adaptation around them; both restored on exit."""
        with self.lambdas.applied(model, corruption, severity) as run, self.adaptation.adapting(model, run) as adapted:
            yield adapted

    def cell_extra(self, corruption: str, severity: int, run: nn.Module) -> dict[str, Any]:
        extra: dict[str, Any] = {}
        describe = getattr(self.lambdas, "cell_extra", None)  # a policy says what it chose
        if describe is not None:
            extra.update(describe(corruption, severity, run.inner))
        extra.update(self.adaptation.cell_extra(corruption, severity, run))
        return extra


def compose(adaptation: BNAdapt | Tent, setting: object) -> BNAdapt | Tent | Composed:
    """adaptation on top of a lambda setting (None / a number / "stem=0.5" / a LambdaSetting / a policy).

    On top of the trained lambdas it is the adaptation itself (one name per result).
    """
    if not isinstance(adaptation, ADAPTATIONS):
        raise RobustCSCError(f"compose takes a BNAdapt or Tent first, not {type(adaptation).__name__}")
    if isinstance(setting, (*ADAPTATIONS, Composed)):
        raise RobustCSCError(
            "compose takes one test-time adaptation and one lambda setting; pass a lambda setting second"
        )
    setting = as_setting(setting)
    if isinstance(setting, LambdaSetting) and setting.kind == "trained":
        return adaptation
    return Composed(adaptation, setting)


def adaptation_of(setting: object) -> BNAdapt | Tent | None:
    """The test-time adaptation in a setting; None for a lambda setting or policy."""
    if isinstance(setting, ADAPTATIONS):
        return setting
    if isinstance(setting, Composed):
        return setting.adaptation
    return None


# ---------------------------------------------------------------- for the harness


def bind(setting: BNAdapt | Tent | Composed, batch_size: int) -> BNAdapt | Tent | Composed:
    """A fresh copy (no online state) named for batch_size; refused if built for another batch size."""
    adaptation = adaptation_of(setting)
    if adaptation.batch_size is not None and adaptation.batch_size != batch_size:
        raise RobustCSCError(
            f"{setting.name} is set up for batch size {adaptation.batch_size} "
            f"but the run uses batch size {batch_size}; "
            f"evaluate with batch size {adaptation.batch_size} (--batch-size) or drop bs= from the setting"
        )
    fresh = replace(adaptation, batch_size=batch_size)
    return replace(setting, adaptation=fresh) if isinstance(setting, Composed) else fresh


def prepare_settings(settings: Iterable[Any], model: nn.Module, batch_size: int, model_name: str = "the model") -> list:
    """The run's settings with every test-time adaptation bound to batch_size and checked against model.

    Lambda settings and policies pass as they are. Fresh copies: an online
    tent starts from the source weights in every run. Raises one line for a
    model without BatchNorm, a batch size of 1 without a prior, or a batch
    size other than the one a setting was built for, before any cell runs.
    """
    prepared: list = []
    names: dict[str, Any] = {}
    for setting in settings:
        adaptation = adaptation_of(setting)
        if adaptation is not None:
            setting = bind(setting, batch_size)
            adaptation_of(setting).check(model, model_name)
        if setting.name in names:
            continue  # the same setting twice (one built with bs=, one without)
        names[setting.name] = setting
        prepared.append(setting)
    return prepared


# ---------------------------------------------------------------- names and CLI text


_HEAD = re.compile(r"^(?P<kind>[a-z][a-z-]*)(?:\[(?P<params>[^\[\]]*)\])?$", re.IGNORECASE)


def split_top(text: str, sep: str) -> list[str]:
    """text split at sep outside brackets: "tent[lr=1,online],bn-adapt" -> ["tent[lr=1,online]", "bn-adapt"]."""
    parts, depth, start = [], 0, 0
    for i, char in enumerate(text):
        depth += {"[": 1, "]": -1}.get(char, 0)
        if depth < 0:
            raise RobustCSCError(f"{text!r} has a ']' without '['; write settings such as tent[lr=0.001,online]")
        if char == sep and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    if depth:
        raise RobustCSCError(f"{text!r} has a '[' without ']'; write settings such as tent[lr=0.001,online]")
    return parts + [text[start:]]


def _parameters(kind: str, text: str | None) -> tuple[list[str], dict[str, str]]:
    words, pairs = [], {}
    for item in (text or "").split(","):
        item = item.strip()
        if not item:
            continue
        key, sep, value = item.partition("=")
        if sep:
            key = key.strip().lower()
            if key in pairs:
                raise RobustCSCError(f"{kind} parameter {key} is given twice; give it once")
            pairs[key] = value.strip()
        else:
            words.append(item.lower())
    return words, pairs


def _value(kind: str, key: str, text: str, convert):
    try:
        return convert(text)
    except ValueError:
        raise RobustCSCError(
            f"{kind} parameter {key}={text!r} is not valid; write e.g. {kind}[{key}=...] with a number"
        ) from None


def _bool(text: str) -> bool:
    lowered = text.lower()
    if lowered not in ("true", "false"):
        raise ValueError(text)
    return lowered == "true"


def _betas(text: str) -> tuple[float, float]:
    parts = text.split("/")
    if len(parts) != 2:
        raise ValueError(text)
    return float(parts[0]), float(parts[1])


_BN_KEYS = {"n": ("prior", float), "prior": ("prior", float), "seed": ("seed", int), "bs": ("batch_size", int),
            "batch_size": ("batch_size", int)}
_TENT_KEYS = {"optimizer": ("optimizer", str), "lr": ("lr", float), "betas": ("betas", _betas),
              "momentum": ("momentum", float), "nesterov": ("nesterov", _bool), "wd": ("weight_decay", float),
              "weight_decay": ("weight_decay", float), "steps": ("steps", int), "episodic": ("episodic", _bool),
              "seed": ("seed", int), "bs": ("batch_size", int), "batch_size": ("batch_size", int)}
_TENT_WORDS = {"adam": ("optimizer", "adam"), "sgd": ("optimizer", "sgd"), "episodic": ("episodic", True),
               "online": ("episodic", False)}


def parse_adaptation(text: str) -> BNAdapt | Tent:
    """bn-adapt / tent with optional parameters, as written on the command line or as a stored name.

    bn-adapt[N=16]  bn-adapt[N=0,seed=0,bs=128]  tent  tent[sgd]  tent[lr=0.0005,online]
    tent[adam,lr=0.001,betas=0.9/0.999,wd=0,steps=1,episodic,seed=0,bs=128]
    """
    found = _HEAD.match(text.strip())
    kind = found["kind"].lower() if found else ""
    if kind not in ("bn-adapt", "tent"):
        raise RobustCSCError(
            f"test-time adaptation {text!r} is not understood; write bn-adapt, bn-adapt[N=16], tent or tent[sgd,online]"
        )
    words, pairs = _parameters(kind, found["params"])
    keys, named = (_BN_KEYS, {}) if kind == "bn-adapt" else (_TENT_KEYS, _TENT_WORDS)
    arguments: dict[str, Any] = {}
    for word in words:
        if word not in named:
            allowed = ", ".join([*named, *(f"{k}=" for k in keys)])
            raise RobustCSCError(f"{kind} has no parameter {word!r}; use {allowed}")
        argument, value = named[word]
        if argument in arguments:
            raise RobustCSCError(f"{kind} is given {argument} twice ({word!r}); give it once")
        arguments[argument] = value
    for key, raw in pairs.items():
        if key not in keys:
            allowed = ", ".join([*named, *(f"{k}=" for k in keys)])
            raise RobustCSCError(f"{kind} has no parameter {key!r}; use {allowed}")
        argument, convert = keys[key]
        if argument in arguments:
            raise RobustCSCError(f"{kind} is given {argument} twice ({key}={raw}); give it once")
        arguments[argument] = _value(kind, key, raw, convert)
    return BNAdapt(**arguments) if kind == "bn-adapt" else Tent(**arguments)


def parse_setting(text: str, policies: Sequence[Any] = ()) -> BNAdapt | Tent | Composed:
    """A test-time adaptation, alone or on top of a lambda setting: "tent", "bn-adapt[N=16]+stem=0.5", "tent+policy".

    After "+": a lambda setting (trained, 0.5, stem=0.5, scale=1.5), "policy"
    (the one policy in policies: the CLI's --lambda-policy) or a policy's
    stored name "policy:<hex>" (one of policies).
    """
    head, *rest = split_top(str(text).strip(), "+")
    adaptation = parse_adaptation(head)
    if not rest:
        return adaptation
    if len(rest) > 1:
        raise RobustCSCError(
            f"{text!r} composes more than two parts; write one adaptation + one lambda setting, such as tent+stem=0.5"
        )
    return compose(adaptation, _lambda_part(rest[0].strip(), policies, text))


def _lambda_part(text: str, policies: Sequence[Any], whole: str) -> Any:
    if text.lower() == "policy" or text.lower().startswith("policy:"):
        if not policies:
            raise RobustCSCError(
                f"{whole!r} names a lambda policy but none was given; pass its file with --lambda-policy"
            )
        if text.lower() == "policy":
            if len(policies) > 1:
                raise RobustCSCError(f"{whole!r} could mean any of {len(policies)} policies; name one as policy:<hex>")
            return policies[0]
        for policy in policies:
            if policy.name == text.lower():
                return policy
        raise RobustCSCError(
            f"{whole!r} names {text} but the policy given is {', '.join(p.name for p in policies)}; "
            "pass that policy's file with --lambda-policy or write +policy"
        )
    return LambdaSetting.parse(text)


def parse_settings(values: Iterable[str] | None, policies: Sequence[Any] = ()) -> tuple:
    """The CLI's --tta values (repeated options, comma lists outside brackets) as settings, in order, once each."""
    settings = []
    for value in values or ():
        for item in split_top(value, ","):
            if item.strip():
                settings.append(parse_setting(item, policies))
    return tuple(dict.fromkeys(settings))


__all__ = [
    "ADAM_DEFAULTS", "ADAPTATIONS", "BNAdapt", "BatchRun", "Composed", "OPTIMIZERS", "SGD_DEFAULTS", "Tent",
    "adaptation_of", "bind", "compose", "parse_adaptation", "parse_setting", "parse_settings", "prepare_settings",
    "seeded", "split_top",
]
