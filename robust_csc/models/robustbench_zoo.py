"""RobustBench's model zoo through the robustbench package's own load_model, offline unless allowed.

    net, info = load_robustbench("cifar10", "corruptions", "Modas2021PRIMEResNet18", model_dir="models")

The checkpoint is read from RobustBench's layout,
``<model_dir>/<dataset>/<threat model>/<name>.pt`` (ensembles:
``<name>.pt_m0.pt``, ``<name>.pt_m1.pt``, ...), exactly where load_model looks.
Nothing is downloaded unless allow_download is set; every file is checked
with ``torch.load(weights_only=True)`` (code in a pickle is refused, never
run) before robustbench reads it.  Zoo models take images in [0, 1] and
normalise themselves.

Two problems of the published package (robustbench 1.1.1 on PyPI) are worked
around here rather than patched:

- ``import robustbench`` fails: its ``__init__`` imports ``robustbench.eval``,
  which imports ``autoattack`` (the GitHub-only original of AutoAttack, which
  no PyPI package provides), and ``robustbench.data`` imports
  ``pkg_resources``, which setuptools 82 removed.  The zoo needs neither, so
  when the plain import fails, ``robustbench`` is registered as a bare
  package (its ``__init__`` not run) and ``robustbench.utils`` (load_model)
  and ``robustbench.model_zoo`` are imported from it.
- torchattacks' wheel ships an old copy of a package named ``robustbench``
  into the same folder, so whichever was installed last wins file by file.
  The installed files are checked against the robustbench distribution's own
  RECORD hashes, and a mixed or old copy is refused with the reinstall
  command.
"""

from __future__ import annotations

import base64
import csv
import difflib
import hashlib
import importlib
import importlib.util
import sys
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from types import ModuleType

from torch import nn

from robust_csc.errors import RobustCSCError

DATASETS = ("cifar10", "cifar100", "imagenet")
THREAT_MODELS = ("corruptions", "Linf", "L2")
NUM_CLASSES = {"cifar10": 10, "cifar100": 100, "imagenet": 1000}
DEFAULT_MODEL_DIR = Path("models")  # load_model's own default, ./models
INSTALL = "pip install 'robust-csc[robustbench]'"
REINSTALL = "pip install --force-reinstall --no-deps robustbench==1.1.1"


@lru_cache(maxsize=1)
def _check_distribution() -> str:
    """The installed robustbench version, once its files are known to be its own (not torchattacks' copy)."""
    try:
        dist = metadata.distribution("robustbench")
    except metadata.PackageNotFoundError:
        where = importlib.util.find_spec("robustbench")
        found = f" (the robustbench at {where.origin} is the old copy torchattacks ships)" if where else ""
        raise RobustCSCError(f"the robustbench package is not installed{found}; install it with {INSTALL}") from None
    records = list(csv.reader((dist.read_text("RECORD") or "").splitlines()))
    changed = []
    for row in records:
        if len(row) < 2 or not row[0].startswith("robustbench/") or not row[0].endswith(".py") or not row[1]:
            continue
        algorithm, _, expected = row[1].partition("=")
        path = Path(str(dist.locate_file(row[0])))
        try:
            digest = hashlib.new(algorithm, path.read_bytes()).digest()
        except (OSError, ValueError):
            changed.append(row[0])
            continue
        if base64.urlsafe_b64encode(digest).rstrip(b"=").decode() != expected:
            changed.append(row[0])
    if changed:
        raise RobustCSCError(
            f"the installed robustbench {dist.version} files differ from its own ({', '.join(changed[:3])}"
            f"{' ...' if len(changed) > 3 else ''}): torchattacks' bundled old copy overwrote them; "
            f"reinstall robustbench last with {REINSTALL}"
        )
    return dist.version


def import_robustbench(submodule: str) -> ModuleType:
    """robustbench.<submodule> of the real robustbench distribution (see the module docstring)."""
    _check_distribution()
    name = f"robustbench.{submodule}"
    if name in sys.modules:
        return sys.modules[name]
    if "robustbench" not in sys.modules:
        try:
            importlib.import_module("robustbench")
        except ImportError:
            # The package __init__ pulls eval (autoattack) and data (pkg_resources); the zoo needs neither.
            spec = importlib.util.find_spec("robustbench")
            sys.modules["robustbench"] = importlib.util.module_from_spec(spec)
    try:
        return importlib.import_module(name)
    except ImportError as err:
        raise RobustCSCError(f"robustbench's {name} cannot be imported ({err}); install it with {INSTALL}") from None


def check_reference(dataset: str, threat_model: str, name: str) -> tuple[str, str, str]:
    """(dataset, threat model, name) spelled as RobustBench spells them; a one-line error otherwise."""
    dataset_key = dataset.lower()
    if dataset_key not in DATASETS:
        raise RobustCSCError(f"RobustBench has no data set {dataset!r}; use one of {', '.join(DATASETS)}")
    threat = {t.lower(): t for t in THREAT_MODELS}.get(threat_model.lower())
    if threat is None:
        raise RobustCSCError(f"RobustBench has no threat model {threat_model!r}; use one of {', '.join(THREAT_MODELS)}")
    zoo = _zoo(dataset_key, threat)
    if name not in zoo:
        close = difflib.get_close_matches(name, list(zoo), n=3)
        hint = f"did you mean {', '.join(close)}?" if close else f"see robustbench's model_zoo/{dataset_key}.py for the names"
        raise RobustCSCError(f"RobustBench's {dataset_key} {threat} zoo has no model {name!r}; {hint}")
    return dataset_key, threat, name


def _zoo(dataset: str, threat: str) -> dict:
    enums = import_robustbench("model_zoo.enums")
    zoo = import_robustbench("model_zoo").model_dicts[enums.BenchmarkDataset(dataset)]
    threat_model = enums.ThreatModel(threat)
    if threat_model not in zoo:
        raise RobustCSCError(f"RobustBench has no {threat} zoo for {dataset}; use one of {', '.join(t.value for t in zoo)}")
    return zoo[threat_model]


def checkpoint_files(model_dir: Path, dataset: str, threat: str, name: str) -> list[Path]:
    """The files load_model reads for this model, in its layout."""
    path = Path(model_dir) / dataset / threat / f"{name}.pt"
    ids = _zoo(dataset, threat)[name].get("gdrive_id")
    if isinstance(ids, list):
        return [Path(f"{path}_m{i}.pt") for i in range(len(ids))]
    return [path]


def _served_elsewhere(dataset: str, threat: str, name: str) -> str | None:
    """Why load_model would fetch this model from another hub (timm, torchvision) instead of model_dir; None if not."""
    timm = importlib.import_module("timm")
    if timm.is_model(f"{name.lower().replace('-', '_')}_{dataset}_{threat.lower()}"):
        return "robustbench serves it through timm's hub"
    if dataset == "imagenet" and "Standard" in name:
        return "robustbench builds it from torchvision's downloaded weights"
    return None


def load_robustbench(
    dataset: str, threat_model: str, name: str, *, model_dir=None, allow_download: bool = False
) -> tuple[nn.Module, dict]:
    """(zoo model in eval mode, info) through robustbench.utils.load_model; see the module docstring."""
    from robust_csc.models.checkpoints import safe_torch_load

    dataset, threat, name = check_reference(dataset, threat_model, name)
    model_dir = Path(model_dir) if model_dir is not None else DEFAULT_MODEL_DIR
    if model_dir.exists() and not model_dir.is_dir():
        raise RobustCSCError(f"--model-dir {model_dir} is a file; pass the folder that holds <dataset>/<threat model>/<name>.pt")
    utils = import_robustbench("utils")
    elsewhere = _served_elsewhere(dataset, threat, name)
    files = [] if elsewhere else checkpoint_files(model_dir, dataset, threat, name)
    missing = [path for path in files if not path.is_file()]
    if elsewhere and not allow_download:
        raise RobustCSCError(f"RobustBench model {name}: {elsewhere}; pass --allow-download to let robustbench fetch it")
    if missing and not allow_download:
        raise RobustCSCError(
            f"RobustBench model {name} has no checkpoint at {missing[0]}; place robustbench's file there "
            "(its layout under --model-dir) or pass --allow-download to let robustbench fetch it"
        )
    entry = _zoo(dataset, threat)[name]
    ids = entry.get("gdrive_id")
    for i, path in enumerate(missing):
        path.parent.mkdir(parents=True, exist_ok=True)
        try:  # robustbench's own downloader, before load_model, so the file is checked before it is unpickled
            utils.download_gdrive_new(ids[i] if isinstance(ids, list) else ids, path)
        except Exception as err:  # gdown raises many kinds (no network, quota, moved file)
            raise RobustCSCError(
                f"downloading RobustBench model {name} to {path} failed ({type(err).__name__}: {_line(err)}); "
                "check the network, or place the file there yourself"
            ) from None
        if not path.is_file():
            raise RobustCSCError(f"downloading RobustBench model {name} wrote no {path}; place the file there yourself")
    for path in files:
        safe_torch_load(path)  # a pickle that would run code is refused here, before robustbench loads it
    try:
        net = utils.load_model(name, model_dir=str(model_dir), dataset=dataset, threat_model=threat)
    except RuntimeError as err:  # load_state_dict(strict=True): missing / unexpected keys, shape mismatches
        raise RobustCSCError(
            f"the checkpoint of RobustBench model {name} in {model_dir} does not fit its architecture: {_line(err, 400)}; "
            "place the file robustbench publishes for this model"
        ) from None
    except Exception as err:
        if not allow_download:
            raise
        raise RobustCSCError(
            f"robustbench could not load {name} ({type(err).__name__}: {_line(err)}); check the network or the files"
        ) from None
    info = {
        "dataset": dataset,
        "threat_model": threat,
        "num_classes": NUM_CLASSES[dataset],
        "files": [str(path) for path in files],
        "robustbench_version": _check_distribution(),
    }
    return net.eval(), info


def _line(err: BaseException, limit: int = 200) -> str:
    text = " ".join(str(err).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


__all__ = ["DATASETS", "THREAT_MODELS", "check_reference", "checkpoint_files", "import_robustbench", "load_robustbench"]
