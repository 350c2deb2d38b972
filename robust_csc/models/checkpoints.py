"""Checkpoints: safetensors files that rebuild their model, and official SDNet conversion.

A checkpoint is a safetensors file holding ``model.state_dict()``; its header
carries one metadata entry, ``"robust_csc"``, a JSON object with everything
needed to rebuild the model (arch and builder arguments from
``create_model``) plus each CSC layer's lambda, the data set and a training
summary.  Nothing is ever unpickled from a safetensors file, and ``.pt``
files are read only with ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as serialize_tensors
from torch import Tensor, nn

from robust_csc import __version__
from robust_csc.csc import csc_layers, get_lambda, set_lambda
from robust_csc.atomic import atomic_write
from robust_csc.errors import RobustCSCError
from robust_csc.models.metadata import build_fitting, check_finite, check_metadata, shape_mismatches
from robust_csc.models.registry import list_models, model_arguments
from robust_csc.safe_pickle import load_torch_file
from robust_csc.validation import parse_json, regular_file

FORMAT_VERSION = 1
METADATA_KEY = "robust_csc"
WRAPPER_KEYS = ("state_dict", "model", "net")  # how training scripts commonly wrap a state_dict
WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DataParallel / DDP and torch.compile
MAX_METADATA_BYTES = 4 << 20  # the metadata of a trained model is a few kB


# ----------------------------------------------------------------------------
# Small helpers
# ----------------------------------------------------------------------------


def _some(names: list[str], limit: int = 3) -> str:
    """The first few names and how many more, for one-line messages."""
    shown = ", ".join(names[:limit])
    return f"{shown} and {len(names) - limit} more" if len(names) > limit else shown


def _jsonable(value: Any, where: str) -> Any:
    """value as plain JSON types (tuples become lists), or a RobustCSCError naming where."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v, f"{where}[{k!r}]") for k, v in value.items()}
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:  # 0-dim tensor or numpy scalar
        return value.item()
    raise RobustCSCError(
        f"{where} is a {type(value).__name__}, which checkpoint metadata cannot hold; "
        "pass numbers, strings, lists or dicts instead"
    )


def _existing_file(path) -> Path:
    # A FIFO or device is named, never opened: reading a FIFO would wait forever.
    return regular_file(path, "checkpoint", "pass the path of the checkpoint file itself")


def _is_safetensors(path: Path) -> bool:
    """By name, or by content: 8 bytes of header length, then the JSON header."""
    if path.suffix == ".safetensors":
        return True
    with open(path, "rb") as f:
        return f.read(9)[8:9] == b"{"


def _atomic_write(path: Path, data: bytes) -> None:
    # plain bytes through our own writer: safetensors' save_file would make the file 0600
    atomic_write(path, lambda f: f.write(data))


def _unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DataParallel / DDP / torch.compile wrapper."""
    while not hasattr(model, "config"):
        inner = getattr(model, "module", getattr(model, "_orig_mod", None))
        if not isinstance(inner, nn.Module):
            break
        model = inner
    return model


# ----------------------------------------------------------------------------
# Reading files
# ----------------------------------------------------------------------------


def _read_safetensors(path: Path, tensors: bool) -> tuple[dict[str, Tensor], dict[str, str]]:
    """(tensors on the CPU, or {} when tensors is False; header metadata)."""
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            header = f.metadata() or {}
            found = {name: f.get_tensor(name) for name in f.keys()} if tensors else {}
    except (SafetensorError, OSError, ValueError):
        raise RobustCSCError(
            f"{path} is truncated or not a safetensors checkpoint; re-download or re-save it"
        ) from None
    return found, header


def _parse_metadata(path: Path, header: dict[str, str]) -> dict:
    if METADATA_KEY not in header:
        raise RobustCSCError(
            f"{path} has no robust_csc metadata, so its architecture is unknown; "
            "load it with load_weights_into into a model built with create_model"
        )
    corrupted = RobustCSCError(f"{path} has corrupted robust_csc metadata; re-download or re-save it")
    meta = parse_json(
        header[METADATA_KEY], what=f"the robust_csc metadata of {path}", fix="re-download or re-save the checkpoint",
        max_bytes=MAX_METADATA_BYTES,
    )
    try:
        version = int(meta["format_version"])
    except (ValueError, TypeError, KeyError, OverflowError):
        raise corrupted from None
    if version > FORMAT_VERSION:  # checked first: a newer format may lay the rest out differently
        raise RobustCSCError(
            f"{path} has checkpoint format {version} but this robust-csc reads up to format {FORMAT_VERSION}; "
            "upgrade robust-csc"
        )
    if not isinstance(meta.get("arch"), str) or not isinstance(meta.get("arguments"), dict):
        raise corrupted
    check_metadata(path, meta)  # types and ranges, before anything is built from them
    return meta


def safe_torch_load(path, map_location="cpu") -> Any:
    """What a .pt/.pth file holds, read with torch.load(weights_only=True) after a scan that refuses any pickle
    naming code (robust_csc.safe_pickle): code in the file is refused, never run."""
    path = _existing_file(path)
    return load_torch_file(
        path, map_location=map_location, what=str(path), fix="re-download or re-save it", kind="PyTorch state_dict"
    )


def _torch_state_dict(path: Path, map_location="cpu") -> dict[str, Tensor]:
    """A plain state_dict from a .pt/.pth file, never running code from it."""
    return _plain_state_dict(safe_torch_load(path, map_location), path)


def _plain_state_dict(obj: Any, source) -> dict[str, Tensor]:
    """Unwrap {"state_dict" | "model" | "net": ...} and strip wrapper prefixes from the names."""
    while isinstance(obj, Mapping):
        inner = next((obj[k] for k in WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, Tensor) for v in obj.values()):
        raise RobustCSCError(
            f"{source} holds no state_dict (a dict of tensors, possibly under {', '.join(WRAPPER_KEYS)}); "
            "save one with torch.save(model.state_dict(), path)"
        )
    plain = {}
    for name, tensor in obj.items():
        while name.startswith(WRAPPER_PREFIXES):
            name = name.split(".", 1)[1]
        plain[name] = tensor
    return plain


def _load_strict(model: nn.Module, tensors: Mapping[str, Tensor], source) -> None:
    """load_state_dict(strict=True), with every mismatch named in one line first."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    problems = shape_mismatches(expected, {k: tuple(t.shape) for k, t in tensors.items()})
    if problems:
        raise RobustCSCError(
            f"{source} does not fit the model: {'; '.join(problems)}; "
            "build the model with the architecture and arguments the weights were saved from"
        )
    check_finite(tensors, source)
    model.load_state_dict(tensors, strict=True)


def _header_shapes(path: Path) -> dict[str, tuple]:
    """Each tensor's shape from the safetensors header: nothing is allocated."""
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return {name: tuple(f.get_slice(name).get_shape()) for name in f.keys()}
    except (SafetensorError, OSError, ValueError):
        raise RobustCSCError(
            f"{path} is truncated or not a safetensors checkpoint; re-download or re-save it"
        ) from None


# ----------------------------------------------------------------------------
# The public API
# ----------------------------------------------------------------------------


def save_checkpoint(
    path, model: nn.Module, *, dataset: str | None = None, training: dict | None = None, extra: dict | None = None
) -> Path:
    """Write model (built by create_model) to a safetensors checkpoint, replacing path atomically."""
    path = Path(path)
    model = _unwrap(model)
    config = getattr(model, "config", None)
    if not isinstance(config, Mapping) or "arch" not in config:
        raise RobustCSCError(
            f"{type(model).__name__} has no config recording its architecture; "
            "build it with robust_csc.models.create_model to save a checkpoint"
        )
    lambdas = {}
    for name, value in get_lambda(model).items():
        if isinstance(value, Tensor):
            raise RobustCSCError(
                f"CSC layer {name} has a per-sample lambda tensor, which a checkpoint cannot store; "
                "set a float lambda with set_lambda before saving"
            )
        lambdas[name] = float(value)
    arguments = _jsonable(dict(config.get("arguments", {})), "the model arguments")
    meta = {
        "format_version": FORMAT_VERSION,
        "arch": config["arch"],
        "arguments": arguments,
        "num_classes": arguments.get("num_classes"),
        "dataset": _jsonable(dataset, "dataset"),
        "lambda": lambdas,
        "training": _jsonable(training or {}, "training"),
        "extra": _jsonable(extra or {}, "extra"),
        "torch_version": torch.__version__,
        "robust_csc_version": __version__,
    }
    # Own contiguous CPU copies: safetensors refuses views and tensors sharing storage.
    tensors = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}
    _atomic_write(path, serialize_tensors(tensors, metadata={METADATA_KEY: json.dumps(meta)}))
    return path


def read_metadata(path) -> dict:
    """The robust_csc metadata of a checkpoint, without reading its tensors."""
    path = _existing_file(path)
    if not _is_safetensors(path):
        raise RobustCSCError(
            f"{path} is not a safetensors checkpoint, so it has no robust_csc metadata; "
            "load a .pt state_dict with load_weights_into or convert an official one with convert_official_checkpoint"
        )
    _, header = _read_safetensors(path, tensors=False)
    return _parse_metadata(path, header)


def load_checkpoint(
    path, *, map_location="cpu", expect_arch: str | None = None, expect_num_classes: int | None = None
) -> tuple[nn.Module, dict]:
    """Rebuild the model a checkpoint was saved from: (model in eval mode, metadata)."""
    meta = read_metadata(path)
    path = Path(path)
    if expect_arch is not None and meta["arch"] != expect_arch.lower():
        raise RobustCSCError(
            f"{path} holds a {meta['arch']} model but {expect_arch} was expected; "
            f"pass the {expect_arch} checkpoint or ask for arch {meta['arch']}"
        )
    if expect_num_classes is not None and meta.get("num_classes") != expect_num_classes:
        raise RobustCSCError(
            f"{path} has {meta.get('num_classes')} classes but {expect_num_classes} were expected; "
            "pass a checkpoint trained on the data set you evaluate"
        )
    model = build_fitting(meta["arch"], meta["arguments"], _header_shapes(path), path)
    tensors, _ = _read_safetensors(path, tensors=True)
    _load_strict(model, tensors, path)
    set_lambda(model, meta.get("lambda", {}))
    return model.to(map_location).eval(), meta


def load_weights_into(model: nn.Module, path, *, map_location="cpu") -> dict:
    """Load only the weights of a checkpoint or a plain .pt state_dict into model.

    The model keeps its own architecture arguments and lambdas (apply
    ``set_lambda(model, meta["lambda"])`` to take the saved ones); returns the
    metadata, {} for a file without it.
    """
    path = _existing_file(path)
    if _is_safetensors(path):
        tensors, header = _read_safetensors(path, tensors=True)
        meta = _parse_metadata(path, header) if METADATA_KEY in header else {}
    else:
        tensors, meta = _torch_state_dict(path), {}
    target = _unwrap(model)
    _load_strict(target, tensors, path)
    target.to(map_location)
    return meta


def read_state_dict(path) -> dict[str, Tensor]:
    """The tensors of a .safetensors file or of a .pt/.pth state_dict (read weights-only), wrapper prefixes stripped."""
    path = _existing_file(path)
    if _is_safetensors(path):
        tensors, _ = _read_safetensors(path, tensors=True)
        return _plain_state_dict(tensors, path)
    return _torch_state_dict(path)


def load_state_dict_strict(model: nn.Module, tensors: Mapping[str, Tensor], source) -> None:
    """model.load_state_dict(tensors, strict=True), every missing / unexpected key and shape mismatch named in one line."""
    _load_strict(model, tensors, source)


def checkpoint_hash(path) -> str:
    """sha256 of the file's bytes: the identity of a checkpoint in result stores."""
    digest = hashlib.sha256()
    with open(_existing_file(path), "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ----------------------------------------------------------------------------
# Official SDNet checkpoints (github.com/Delay-Xili/SDNet)
# ----------------------------------------------------------------------------

_OFFICIAL_STEM = "layer0.0.dn.weight"
_DROPPED = (".dn.step_size", ".running_c_loss")  # buffers we recompute (power iteration) or never use


def _official_name(key: str) -> str:
    """An official state_dict name as ours: layer0 -> stem, no .layers / .dn levels."""
    if key.startswith("layer0."):
        key = "stem." + key[len("layer0.") :]
    key = re.sub(r"^(layer[1-4])\.layers\.", r"\1.", key)
    return key.replace(".dn.", ".")


def convert_official_state_dict(
    state_dict: dict,
    arch: str,
    *,
    num_classes: int | None = None,
    stem: str | None = None,
    shortcut: bool | None = None,
) -> nn.Module:
    """Build arch and fill it from an official SDNet state_dict (returned in eval mode).

    num_classes, stem (3x3 stem dictionary -> cifar, 7x7 -> imagenet), width
    and, for the -all models, shortcut are read from the weights when not given.
    """
    arch = arch.lower()
    supported = list_models("sdnet*")
    if arch not in supported:
        raise RobustCSCError(f"official SDNet conversion supports {', '.join(supported)}, not {arch!r}; pick one")
    official = _plain_state_dict(state_dict, "the official checkpoint")
    for key in (_OFFICIAL_STEM, "linear.weight"):
        if key not in official:
            raise RobustCSCError(
                f"the state_dict has no {key}, so it is not an official SDNet checkpoint; "
                "load our own checkpoints with load_checkpoint"
            )
    stem_weight = official[_OFFICIAL_STEM]
    kernel = stem_weight.shape[-1]
    if stem is None:
        if kernel not in (3, 7):
            raise RobustCSCError(
                f"the stem dictionary has a {kernel}x{kernel} kernel; pass stem='cifar' or stem='imagenet'"
            )
        stem = "cifar" if kernel == 3 else "imagenet"
    kwargs = {
        "num_classes": int(official["linear.weight"].shape[0]) if num_classes is None else num_classes,
        "stem": stem,
        "width": int(stem_weight.shape[0]),
    }
    if shortcut is None and arch.endswith("_all"):
        shortcut = any("shortcut." in k for k in official)
    if shortcut is not None and "shortcut" in model_arguments(arch):
        kwargs["shortcut"] = shortcut
    ours: dict[str, Tensor] = {}
    from_dictionary = set()  # our module names that were CSC layers (.dn) in the file
    for key, tensor in official.items():
        if key.endswith(_DROPPED):
            continue
        name = _official_name(key)
        ours[name] = tensor
        if ".dn." in key:
            from_dictionary.add(name.rsplit(".", 1)[0])
    # The width comes from the file: a skeleton on the meta device checks every shape before any allocation.
    model = build_fitting(arch, kwargs, {k: tuple(v.shape) for k, v in ours.items()}, "the official state_dict")
    # Same names and shapes are not enough: a dictionary must land in a CSC layer and vice versa.
    csc, modules = set(csc_layers(model)), {name for name, _ in model.named_modules()}
    present = {k.rsplit(".", 1)[0] for k in ours}
    wrong = sorted(((from_dictionary - csc) & modules) | ((csc - from_dictionary) & present))
    if wrong:
        raise RobustCSCError(
            f"the CSC layers of the state_dict do not match {arch} at {_some(wrong)}; "
            "pick the matching arch (sdnet18/sdnet34 code only the stem, the -all models every block conv)"
        )
    _load_strict(model, ours, "the official state_dict")
    return model.eval()


def convert_official_checkpoint(
    src_path,
    dst_path,
    arch: str,
    *,
    dataset: str | None = None,
    stem=None,
    shortcut=None,
    num_classes=None,
    overwrite: bool = False,
) -> Path:
    """Convert an official SDNet .pt/.pth checkpoint into a robust_csc safetensors checkpoint."""
    src, dst = _existing_file(src_path), Path(dst_path)
    if dst.exists() and not overwrite:
        raise RobustCSCError(f"{dst} already exists; pass --force (overwrite=True) to replace it")
    model = convert_official_state_dict(
        _torch_state_dict(src), arch, num_classes=num_classes, stem=stem, shortcut=shortcut
    )
    extra = {"converted_from": src.name, "source_sha256": checkpoint_hash(src)}
    return save_checkpoint(dst, model, dataset=dataset, extra=extra)
