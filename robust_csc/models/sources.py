"""Any classifier as a model the harness, the attacks and the tuner can run, with a store identity.

    loaded = load_model("torchvision:resnet18", weights="r18.pt", num_classes=10)
    loaded.model       # nn.Module in eval mode: images in [0, 1] in, logits out
    loaded.name        # the store's model name, "torchvision:resnet18"
    loaded.sha256      # the store's checkpoint_sha256 (see weights_sha256)

References:

- a robust-csc checkpoint file (``.safetensors``): rebuilt from its metadata;
  its identity is the file's sha256, as everywhere else;
- ``torchvision:NAME``: a torchvision classification model built with
  ``weights=None`` (nothing is downloaded), ``weights=FILE`` for local weights;
  torchvision's ImageNet mean/std unless ``mean``/``std`` are given;
- ``timm:NAME``: ``timm.create_model(NAME, pretrained=False)`` (timm is an
  optional extra), normalised with the model's ``pretrained_cfg`` mean/std;
- ``robustbench:DATASET:THREAT:NAME`` (THREAT corruptions, Linf or L2): the
  robustbench package's own load_model on ``model_dir``
  (robust_csc.models.robustbench_zoo); these models normalise themselves;
- ``package.module:function`` or ``path/to/file.py:function``: a builder
  returning an nn.Module, called with ``num_classes=`` when it takes it; with
  ``weights=FILE`` (``.safetensors``, or ``.pt`` read only with
  ``torch.load(weights_only=True)``), and ``mean``/``std`` when the model
  does not normalise its input itself.

The input normalisation lives inside the returned module (the project's
convention).  Any other nn.Module can be passed to evaluate / run_attacks /
tune directly: ``identify`` names it and hashes its weights.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import importlib.util
import inspect
import math
import numbers
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from robust_csc.constants import IMAGENET_MEAN, IMAGENET_STD
from robust_csc.csc import csc_layers, get_lambda
from robust_csc.errors import RobustCSCError
from robust_csc.models.resnet import Normalize

PREFIXES = ("torchvision", "timm", "robustbench")
REFERENCE_HINT = (
    "pass a robust-csc .safetensors checkpoint, torchvision:NAME, timm:NAME, robustbench:DATASET:THREAT:NAME, "
    "package.module:function or path/to/file.py:function"
)
_HASH_FORMAT = b"robust-csc weights sha256 v1\n"


# ---------------------------------------------------------------- identity


def weights_sha256(model: nn.Module) -> str:
    """sha256 of a model's state, the store's checkpoint_sha256 for a model that is not a checkpoint file.

    Hashed, in this order: the line ``robust-csc weights sha256 v1``; then
    every entry of ``model.state_dict()`` together with the model's
    non-persistent buffers (such as the input normalisation), sorted by name,
    each as ``name``, NUL, dtype (``torch.float32``), NUL, shape (``2,3``),
    NUL, byte count, NUL, then the tensor's bytes (C order, CPU, native byte
    order); then, for each CSC layer sorted by name, ``lambda:<name>`` NUL and
    its lambda (``repr`` of the float, or the bytes of a per-sample tensor).
    The training flag, the device and any wrapper outside the module do not
    count, so the same weights hash the same wherever they run.
    """
    if not isinstance(model, nn.Module):
        raise RobustCSCError(f"the model is a {type(model).__name__}; pass a torch nn.Module")
    entries: dict[str, Any] = dict(model.state_dict(keep_vars=True))
    for name, buffer in model.named_buffers():
        entries.setdefault(name, buffer)
    digest = hashlib.sha256(_HASH_FORMAT)
    for name in sorted(entries):
        _hash_value(digest, name, entries[name])
    for name, value in sorted(get_lambda(model).items()):
        _hash_value(digest, f"lambda:{name}", value)
    return digest.hexdigest()


def _hash_value(digest, name: str, value: Any) -> None:
    if isinstance(value, Tensor):
        tensor = value.detach().to("cpu").contiguous()
        data = tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b""
        shape = ",".join(str(d) for d in tensor.shape)
        head = f"{name}\0{tensor.dtype}\0{shape}\0{len(data)}\0"
    else:  # a float lambda, or a module's extra state
        data = repr(value).encode()
        head = f"{name}\0{type(value).__name__}\0\0{len(data)}\0"
    digest.update(head.encode())
    digest.update(data)


def _default_name(model: nn.Module) -> str:
    config = getattr(model, "config", None)
    arch = config.get("arch") if isinstance(config, dict) else None
    return str(arch or type(model).__name__.lower())


@dataclass
class LoadedModel:
    """A model ready to run and its identity in the results store.

    model: eval mode, images in [0, 1] in, logits out; name: the store's
    model name; sha256: the store's checkpoint_sha256; meta: what a
    checkpoint's metadata holds (arch, num_classes, dataset or None, lambda
    per CSC layer ({} without CSC layers)) plus source, reference, weights and
    normalization; label: how messages name it (the file or the reference).
    """

    model: nn.Module
    name: str
    sha256: str
    meta: dict = field(default_factory=dict)
    label: str = ""

    def __str__(self) -> str:
        return self.label or self.name

    @property
    def num_classes(self) -> int | None:
        return self.meta.get("num_classes")

    @property
    def dataset(self) -> str | None:
        return self.meta.get("dataset")

    def expect_classes(self, expected: int, where: str) -> "LoadedModel":
        """Refuse a model whose class count differs from the data set's."""
        if self.num_classes != expected:
            raise RobustCSCError(
                f"{self} has {self.num_classes} classes but {where} has {expected}; "
                "pass a model for that data set (--num-classes sets the head of a torchvision, timm or builder model)"
            )
        return self


def identify(model: Any, model_name: str | None = None, checkpoint_sha256: str | None = None) -> tuple[nn.Module, str, str]:
    """(module, store model name, store checkpoint sha256) of a LoadedModel or any nn.Module.

    Names and hashes not given come from the LoadedModel, else the module's
    config arch (or class name) and weights_sha256.
    """
    if isinstance(model, LoadedModel):
        return model.model, model_name or model.name, checkpoint_sha256 or model.sha256
    if not isinstance(model, nn.Module):
        raise RobustCSCError(f"the model is a {type(model).__name__}; pass a torch nn.Module or a LoadedModel")
    return model, model_name or _default_name(model), checkpoint_sha256 or weights_sha256(model)


def as_loaded(source: Any, expect_num_classes: int | None = None) -> LoadedModel:
    """A LoadedModel as it is, or a checkpoint file loaded (its identity: arch and the file's sha256)."""
    if isinstance(source, LoadedModel):
        return source if expect_num_classes is None else source.expect_classes(expect_num_classes, "the data set")
    from robust_csc.models.checkpoints import checkpoint_hash, load_checkpoint

    model, meta = load_checkpoint(source, expect_num_classes=expect_num_classes)
    return LoadedModel(model, meta["arch"], checkpoint_hash(source), meta, str(source))


# ---------------------------------------------------------------- normalisation


class NormalizedModel(nn.Module):
    """Normalize -> net: a classifier that expects normalised input, made to take images in [0, 1]."""

    def __init__(self, net: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        return self.net(self.normalize(x))


def check_normalization(mean: Sequence[float] | None, std: Sequence[float] | None) -> tuple | None:
    """((mean...), (std...)) checked, or None for no normalisation; both or neither must be given."""
    if mean is None and std is None:
        return None
    if mean is None or std is None:
        raise RobustCSCError("pass both --mean and --std (per channel), or neither when the model normalises its input itself")
    mean, std = _numbers(mean, "--mean"), _numbers(std, "--std")
    if len(mean) != len(std):
        raise RobustCSCError(f"--mean has {len(mean)} values but --std has {len(std)}; pass one value per input channel to each")
    if any(s <= 0 for s in std):
        raise RobustCSCError(f"--std {', '.join(f'{s:g}' for s in std)} has a value <= 0; pass positive standard deviations")
    return mean, std


def _numbers(values: Sequence[float] | str, option: str) -> tuple[float, ...]:
    items = [v for v in values.split(",") if v.strip()] if isinstance(values, str) else list(values)
    out = []
    for item in items:
        try:
            number = float(item)
        except (TypeError, ValueError):
            raise RobustCSCError(f"{option} value {item!r} is not a number; pass numbers per channel, e.g. 0.485,0.456,0.406") from None
        if not math.isfinite(number):
            raise RobustCSCError(f"{option} value {item!r} is not finite; pass finite numbers per channel")
        out.append(number)
    if not out:
        raise RobustCSCError(f"{option} is empty; pass one number per input channel, e.g. 0.485,0.456,0.406")
    return tuple(out)


# ---------------------------------------------------------------- the loader


def load_model(
    reference: str | Path,
    *,
    weights: str | Path | None = None,
    num_classes: int | None = None,
    mean: Sequence[float] | str | None = None,
    std: Sequence[float] | str | None = None,
    model_dir: str | Path | None = None,
    allow_download: bool = False,
) -> LoadedModel:
    """The model a reference names, ready to run, and its identity; see the module docstring.

    Every mistake (an unknown name, a builder that does not import or return a
    module, weights that do not fit, a pickle that would run code) raises
    RobustCSCError with one line naming the fix; nothing is written (except a
    RobustBench download, which allow_download permits).
    """
    text = str(reference).strip()
    if not text:
        raise RobustCSCError(f"the model reference is empty; {REFERENCE_HINT}")
    if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral) or num_classes < 1):
        raise RobustCSCError(f"--num-classes {num_classes!r} is invalid; pass the number of classes the model outputs (>= 1)")
    normalization = check_normalization(mean, std)
    prefix, sep, rest = text.partition(":")
    kind = prefix.lower() if sep and prefix.lower() in PREFIXES else None
    if kind is None and (Path(text).is_file() or text.endswith(".safetensors")):
        kind = "checkpoint"
    elif kind is None and ":" in text:
        kind = "builder"
    if kind is None:
        raise RobustCSCError(f"model reference {text!r} is neither a file nor a known reference; {REFERENCE_HINT}")
    if kind != "robustbench" and (model_dir is not None or allow_download):
        raise RobustCSCError("--model-dir and --allow-download apply to robustbench: references only; drop them")
    if kind == "checkpoint":
        extra = [o for o, v in (("--weights", weights), ("--num-classes", num_classes), ("--mean/--std", normalization)) if v is not None]
        if extra:
            raise RobustCSCError(f"{text} is a robust-csc checkpoint, which records its own weights, classes and normalisation; drop {', '.join(extra)}")
        return as_loaded(Path(text))
    if kind == "robustbench":
        return _robustbench(text, rest, weights, num_classes, normalization, model_dir, allow_download)
    if not rest.strip() and kind != "builder":
        raise RobustCSCError(f"model reference {text!r} names no model; write {kind}:NAME, e.g. {kind}:resnet18")
    if kind == "torchvision":
        net, meta_name, classes, defaults = _torchvision(rest.strip(), num_classes)
    elif kind == "timm":
        net, meta_name, classes, defaults = _timm(rest.strip(), num_classes)
    else:
        net, meta_name, classes, defaults = _builder(text, num_classes)
    return _finish(net, kind, text, meta_name, weights, classes, normalization or defaults)


def _finish(net: nn.Module, kind: str, reference: str, name: str, weights, classes, normalization) -> LoadedModel:
    """Load the weights, wrap the normalisation, go to eval mode, and work out the identity."""
    from robust_csc.models.checkpoints import checkpoint_hash, load_state_dict_strict, read_state_dict

    if classes is None:
        raise RobustCSCError(f"the number of classes of {reference} is not known; pass --num-classes N (the model's outputs)")
    weights_sha = None
    if weights is not None:
        tensors = read_state_dict(weights)  # .pt only through torch.load(weights_only=True)
        try:
            load_state_dict_strict(net, tensors, weights)  # names the missing / unexpected keys and the shapes
        except RobustCSCError as err:
            if "shape mismatch" not in str(err) or kind == "builder":
                raise
            raise RobustCSCError(f"{err} (--num-classes N sets the size of the classification head)") from None
        weights_sha = checkpoint_hash(weights)
    model = NormalizedModel(net, *normalization) if normalization is not None else net
    model.eval()
    lambdas = {k: (float(v) if not isinstance(v, Tensor) else v.tolist()) for k, v in get_lambda(model).items()}
    meta = {
        "arch": name,
        "num_classes": int(classes),
        "dataset": None,
        "lambda": lambdas,
        "source": kind,
        "reference": reference,
        "weights": None if weights is None else str(weights),
        "weights_file_sha256": weights_sha,
        "normalization": None if normalization is None else {"mean": list(normalization[0]), "std": list(normalization[1])},
    }
    return LoadedModel(model, name, weights_sha256(model), meta, reference)


def _head_classes(net: nn.Module) -> int | None:
    """The class count a model declares (create_model's config, timm's and others' num_classes attribute), else None."""
    config = getattr(net, "config", None)
    arguments = config.get("arguments") if isinstance(config, dict) else None
    value = arguments.get("num_classes") if isinstance(arguments, dict) else getattr(net, "num_classes", None)
    return int(value) if isinstance(value, numbers.Integral) and not isinstance(value, bool) and value > 0 else None


def _torchvision(name: str, num_classes: int | None):
    import torchvision.models as tvm

    known = tvm.list_models(module=tvm)  # classification models only (not detection, segmentation, video)
    if name not in known:
        close = difflib.get_close_matches(name.lower(), known, n=3)
        hint = f"did you mean {', '.join(close)}?" if close else "see torchvision.models.list_models(module=torchvision.models)"
        raise RobustCSCError(f"torchvision has no classification model {name!r}; {hint}")
    kwargs = {} if num_classes is None else {"num_classes": int(num_classes)}
    try:
        net = tvm.get_model(name, weights=None, **kwargs)  # weights=None: built at random, never downloaded
    except (TypeError, ValueError) as err:
        raise RobustCSCError(f"torchvision could not build {name} ({_line(err)}); check --num-classes") from None
    # 1000: every torchvision classification builder's default head; their weights all take ImageNet-normalised input.
    return net, f"torchvision:{name}", num_classes or 1000, (IMAGENET_MEAN, IMAGENET_STD)


def _timm(name: str, num_classes: int | None):
    try:
        timm = importlib.import_module("timm")
    except ImportError:
        raise RobustCSCError("timm is not installed; install it with pip install 'robust-csc[timm]'") from None
    if not timm.is_model(name):
        close = difflib.get_close_matches(name.lower(), timm.list_models(), n=3)
        hint = f"did you mean {', '.join(close)}?" if close else "see timm.list_models()"
        raise RobustCSCError(f"timm has no model {name!r}; {hint}")
    kwargs = {} if num_classes is None else {"num_classes": int(num_classes)}
    try:
        net = timm.create_model(name, pretrained=False, **kwargs)  # pretrained=False: nothing is downloaded
    except (TypeError, ValueError, RuntimeError) as err:
        raise RobustCSCError(f"timm could not build {name} ({_line(err)}); check --num-classes") from None
    config = getattr(net, "pretrained_cfg", None) or {}
    mean, std = config.get("mean", IMAGENET_MEAN), config.get("std", IMAGENET_STD)
    return net, f"timm:{name}", _head_classes(net), (tuple(float(m) for m in mean), tuple(float(s) for s in std))


def _robustbench(text, rest, weights, num_classes, normalization, model_dir, allow_download) -> LoadedModel:
    from robust_csc.models.robustbench_zoo import load_robustbench

    parts = rest.split(":", 2)
    if len(parts) != 3 or not all(p.strip() for p in parts):
        raise RobustCSCError(
            f"model reference {text!r} is not robustbench:DATASET:THREAT:NAME; write e.g. robustbench:cifar10:corruptions:Standard"
        )
    if weights is not None or normalization is not None:
        raise RobustCSCError(
            "a RobustBench model reads its checkpoint from --model-dir and normalises itself; drop --weights, --mean and --std"
        )
    net, info = load_robustbench(*(p.strip() for p in parts), model_dir=model_dir, allow_download=allow_download)
    if num_classes is not None and num_classes != info["num_classes"]:
        raise RobustCSCError(f"RobustBench's {info['dataset']} models have {info['num_classes']} classes, not {num_classes}; drop --num-classes")
    name = f"robustbench:{info['dataset']}:{info['threat_model']}:{parts[2].strip()}"
    meta = {
        "arch": name,
        "num_classes": info["num_classes"],
        "dataset": info["dataset"],
        "lambda": {},
        "source": "robustbench",
        "reference": name,
        "weights": info["files"],
        "robustbench_version": info["robustbench_version"],
        "normalization": None,  # inside the zoo model
    }
    if csc_layers(net):  # cannot happen for the published zoo; kept exact for the lambda checks
        meta["lambda"] = {k: float(v) for k, v in get_lambda(net).items()}
    return LoadedModel(net, name, weights_sha256(net), meta, text)


def _builder(reference: str, num_classes: int | None):
    target, _, function = reference.rpartition(":")
    function = function.strip()
    if not target or not function.isidentifier():
        raise RobustCSCError(f"builder reference {reference!r} is not package.module:function or path/file.py:function; fix it")
    module = _import_target(target.strip(), reference)
    builder = getattr(module, function, None)
    if builder is None or not callable(builder):
        raise RobustCSCError(f"{target} has no function {function!r}; name a function that returns the model")
    kwargs = {}
    if num_classes is not None and _takes(builder, "num_classes"):
        kwargs["num_classes"] = int(num_classes)
    try:
        net = builder(**kwargs)
    except Exception as err:  # the user's code may raise anything: say which and where
        raise RobustCSCError(f"builder {reference} raised {type(err).__name__}: {_line(err)}; fix the builder") from None
    if not isinstance(net, nn.Module):
        raise RobustCSCError(f"builder {reference} returned a value of type {type(net).__name__}, not a torch nn.Module; return the model")
    if num_classes is not None and "num_classes" not in kwargs:
        declared = _head_classes(net)
        if declared is not None and declared != num_classes:
            raise RobustCSCError(f"builder {reference} made a model with {declared} classes, not --num-classes {num_classes}; fix one of them")
    name = f"{Path(target).name}:{function}" if target.endswith(".py") else f"{target}:{function}"
    # A user's model normalises itself unless --mean/--std say how.
    return net, name, num_classes if num_classes is not None else _head_classes(net), None


def _import_target(target: str, reference: str):
    if target.endswith(".py") or "/" in target or "\\" in target:
        path = Path(target)
        if not path.is_file():
            raise RobustCSCError(f"builder file {path} does not exist; check the path in {reference}")
        stem = "".join(c if c.isalnum() else "_" for c in str(path.resolve()))
        spec = importlib.util.spec_from_file_location(f"robust_csc_user_model_{stem}", path)
        module = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(module)
        except Exception as err:  # a syntax error, a failing import inside the file, ...
            raise RobustCSCError(f"builder file {path} does not import ({type(err).__name__}: {_line(err)}); fix the file") from None
        return module
    # Like `python -m`, a module name is looked up from the working folder too.
    added = "" not in sys.path and str(Path.cwd()) not in sys.path
    if added:
        sys.path.insert(0, str(Path.cwd()))
    try:
        return importlib.import_module(target)
    except Exception as err:
        raise RobustCSCError(
            f"builder module {target} does not import ({type(err).__name__}: {_line(err)}); "
            "check the name and that its package is installed or in the working folder"
        ) from None
    finally:
        if added:
            sys.path.remove(str(Path.cwd()))


def _takes(function, parameter: str) -> bool:
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == parameter or p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


def _line(err: BaseException, limit: int = 200) -> str:
    text = " ".join(str(err).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


__all__ = [
    "LoadedModel", "NormalizedModel", "PREFIXES", "as_loaded", "check_normalization", "identify", "load_model",
    "weights_sha256",
]
