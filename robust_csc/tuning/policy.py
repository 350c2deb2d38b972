"""Lambda policies: a tuned choice of lambda, saved as JSON with the checkpoint hash it was tuned for.

Two rules:
  "grid"  - CellPolicy: one value per (corruption, severity) cell, the clean
            cell ("none", 0) included; a cell not in it is an error.
  "recon" - ReconPolicy: lambda from the stem's reconstruction error by a
            fitted line (robust_csc.tuning.rule); needs no cell name or label.

A policy is a lambda setting (robust_csc.lambdas.LambdaPolicyLike):

    policy = load_policy("policy.json", checkpoint_sha256=checkpoint_hash(ckpt))
    with policy.applied(model, "gaussian_noise", 3) as run:   # lambdas restored on exit
        logits = run(images)
    policy.name   # "policy:" + the first 12 hex digits of the sha256 of its canonical JSON

The file also records the layers, grid, seed, split names, architecture,
data set, reference lambda and the calibration points (per cell: the stem's
mean reconstruction error at the reference lambda and the best grid value),
and (version 2) the suite it was tuned on and the test-set indices of its
tuning images.  A policy was fitted on data, so it may only be scored on
images it never saw: ``scoring_plan`` restricts a suite to the policy's
reporting split (or refuses another suite, profile or split), and
``tune_index`` lets the harness check every scored batch.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import numbers
import zlib
from pathlib import Path
from typing import Any, Iterator, Mapping

from torch import nn

from robust_csc.atomic import atomic_write
from robust_csc.csc import select_csc_layers
from robust_csc.constants import MAX_LAMBDA
from robust_csc.errors import RobustCSCError
from robust_csc.evaluation.outcomes import decode_index
from robust_csc.tuning.grid import check_layers, setting_for
from robust_csc.tuning.rule import PER, ReconLambdaModel
from robust_csc.tuning.splits import TuningSplit
from robust_csc.validation import parse_json, regular_file

POLICY_FORMAT = "robust-csc lambda policy"
POLICY_VERSION = 2
MAX_POLICY_BYTES = 16 << 20  # a policy of every ImageNet-C cell with its calibration is tens of kB
RULES = ("grid", "recon")
_META_FIELDS = ("layers", "grid", "seed", "splits", "arch", "checkpoint_sha256", "dataset", "reference_lambda", "suite",
                "tune_index")


def canonical_json(data: Mapping[str, Any]) -> str:
    """One text per content: sorted keys, no spaces (the policy's hash is taken over it)."""
    try:
        return json.dumps(data, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as err:
        raise RobustCSCError(f"the lambda policy cannot be written as JSON ({err}); pass plain numbers and strings") from None


def _number(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise RobustCSCError(f"lambda policy field {what} is {str(value)[:40]}; it must be a finite number (re-run tune-lambda)")
    return float(value)


def _lambda(value: object, what: str) -> float:
    """A finite lambda from 0 to MAX_LAMBDA (a clip bound, the reference, a grid value)."""
    number = _number(value, what)
    if not 0 <= number <= MAX_LAMBDA:
        raise RobustCSCError(
            f"lambda policy field {what} is {number:g}, outside 0 to {MAX_LAMBDA:g} where lambdas live; re-run tune-lambda"
        )
    return number


class LambdaPolicy:
    """What both rules share: the metadata, the name, the file."""

    rule = ""

    def __init__(self, meta: Mapping[str, Any]) -> None:
        missing = [f for f in _META_FIELDS if f not in meta]
        if missing:
            raise RobustCSCError(f"lambda policy lacks {', '.join(missing)}; write it with tune-lambda")
        self.meta = {f: meta[f] for f in _META_FIELDS}
        self.meta["layers"] = check_layers(self.meta["layers"])
        if not isinstance(self.meta["grid"], list):
            raise RobustCSCError("lambda policy field grid is not a list of numbers; write it with tune-lambda")
        self.meta["grid"] = [_lambda(v, "grid") for v in self.meta["grid"]]
        if not self.meta["grid"]:
            raise RobustCSCError("lambda policy has an empty grid; write it with tune-lambda")
        self.meta["reference_lambda"] = _lambda(self.meta["reference_lambda"], "reference_lambda")
        self._check_suite()

    def _check_suite(self) -> None:
        suite, splits = self.meta["suite"], self.meta["splits"]
        try:
            ok = (
                isinstance(suite, Mapping) and isinstance(suite["name"], str) and suite["name"] == self.meta["dataset"]
                and isinstance(suite["images_per_cell"], int) and suite["images_per_cell"] >= 2
                and isinstance(splits, Mapping) and isinstance(splits["tune"], str) and isinstance(splits["report"], str)
                and isinstance(suite["corruptions"], list) and isinstance(suite["severities"], list)
            )
        except (KeyError, TypeError):
            ok = False
        if not ok:
            raise RobustCSCError("lambda policy's suite or split record is malformed; write it again with tune-lambda")
        # The tuning images' test-set indices, in the store's index encoding (used by the harness's guard).
        record = self.meta["tune_index"]
        try:
            self._tune_index = decode_index(record["index"], int(record["n"]))
        except (KeyError, TypeError, ValueError, zlib.error):
            raise RobustCSCError("lambda policy's tuning index is malformed; write it again with tune-lambda") from None
        expected = suite["images_per_cell"] // 2
        if self._tune_index.size != expected:
            raise RobustCSCError(
                f"lambda policy's tuning index holds {self._tune_index.size} images, not {expected}; write it again with tune-lambda"
            )

    @property
    def layers(self) -> str:
        return self.meta["layers"]

    # -- where it may be scored ---------------------------------------------------

    @property
    def suite_name(self) -> str:
        return str(self.meta["dataset"])

    @property
    def tune_split(self) -> str:
        return str(self.meta["splits"]["tune"])

    @property
    def report_split(self) -> str:
        return str(self.meta["splits"]["report"])

    @property
    def split_base(self) -> str:
        return self.report_split.rsplit(":report:", 1)[0]

    @property
    def tune_index(self):
        """The test-set indices of the images the policy was tuned on (never to be scored)."""
        return self._tune_index

    def scoring_plan(self, suite_name: str, images_per_cell: int, split: str) -> str:
        """"report" if (suite, split) already is the policy's reporting split, "restrict" if it is the whole
        split the policy was tuned on (score only its reporting half), else a one-line refusal."""
        if suite_name != self.suite_name:
            raise RobustCSCError(
                f"lambda policy {self.name} was tuned on the suite {self.suite_name} and this is {suite_name} "
                "(another data set, corruption profile or seed); evaluate it on its own suite (the CLI takes it from the "
                "policy when --suite, --dataset, --profile and --seed are left out)"
            )
        whole = self.meta["suite"]["images_per_cell"]
        if split == self.report_split and images_per_cell == whole - whole // 2:
            return "report"
        if split == self.split_base and images_per_cell == whole:
            return "restrict"
        raise RobustCSCError(
            f"lambda policy {self.name} was tuned on {self.tune_split} ({whole // 2} of {whole} images per cell) and "
            f"may be scored only on its reporting split {self.report_split}; this run is split {split} with "
            f"{images_per_cell} images per cell: leave --n-examples out (the CLI takes it from the policy)"
        )

    def reporting_split(self) -> TuningSplit:
        """The halving the policy was tuned with (its .report positions are the scorable images)."""
        return TuningSplit.of(self.meta["suite"]["images_per_cell"], self.split_base, int(self.meta["seed"]))

    @property
    def suite_options(self) -> dict[str, Any]:
        """How the CLI builds the suite again: suite, dataset, profile, seed, n_examples ({} if not recorded)."""
        options = self.meta["suite"].get("options")
        return dict(options) if isinstance(options, Mapping) else {}

    def base_dataset(self) -> str:
        """The data set whose first images_per_cell test images the policy's suite corrupts."""
        if self.suite_options.get("dataset"):
            return str(self.suite_options["dataset"])
        name = self.suite_name
        if name == "imagenet-c" or "-c" not in name:
            raise RobustCSCError(f"lambda policy {self.name} was tuned on {name}, whose clean images are not a test set's "
                                 "first images; use it on its own suite with robust-csc evaluate")
        return name.split("-c", 1)[0]

    def reporting_images(self, clean: Any) -> Any:
        """The reporting half of the clean images the policy's suite was made from (its first images_per_cell)."""
        whole = int(self.meta["suite"]["images_per_cell"])
        if len(clean) < whole:
            raise RobustCSCError(f"the clean set has {len(clean)} images, fewer than the {whole} lambda policy {self.name} "
                                 f"was tuned and reported on; pass the first {whole} test images of {self.base_dataset()}")
        from torch.utils.data import Subset

        return self.reporting_split().subset(Subset(clean, range(whole)), "report")

    @property
    def checkpoint_sha256(self) -> str:
        return str(self.meta["checkpoint_sha256"])

    def _body(self) -> dict[str, Any]:
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        return {"format": POLICY_FORMAT, "version": POLICY_VERSION, "rule": self.rule, **self.meta, **self._body()}

    @property
    def name(self) -> str:
        """The store's lambda_setting of this policy: "policy:" + 12 hex digits of its content hash."""
        return "policy:" + hashlib.sha256(canonical_json(self.to_dict()).encode()).hexdigest()[:12]

    def _check_model(self, model: nn.Module) -> None:
        select_csc_layers(model)  # a model without CSC layers: one clear error
        config = getattr(model, "config", None)
        arch = config.get("arch") if isinstance(config, Mapping) else None
        if arch is not None and self.meta["arch"] and arch != self.meta["arch"]:
            raise RobustCSCError(
                f"lambda policy {self.name} was tuned for a {self.meta['arch']} model, not {arch}; "
                "tune a policy for this checkpoint with tune-lambda"
            )

    def save(self, path: str | Path, force: bool = False) -> Path:
        """Write the policy as JSON, atomically; an existing file only with force."""
        path = Path(path)
        if path.exists() and not force:
            raise RobustCSCError(f"{path} already exists; pass --force (force=True) to replace it or choose another file")
        if path.is_dir():
            raise RobustCSCError(f"{path} is a folder; pass a file name for the policy, such as {path / 'policy.json'}")
        text = json.dumps(self.to_dict(), indent=2, sort_keys=True, allow_nan=False) + "\n"
        return atomic_write(path, lambda f: f.write(text.encode()))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name}, layers={self.layers})"


def _cell(corruption: object, severity: object) -> tuple[str, int]:
    """A (corruption, severity) key: the clean cell ("none", 0) or a named corruption at severity 1 to 5."""
    if not isinstance(corruption, str) or not isinstance(severity, numbers.Integral) or isinstance(severity, bool):
        raise RobustCSCError(
            f"lambda policy cell ({str(corruption)[:40]}, {str(severity)[:10]}) is not a (name, integer severity) pair; "
            "re-run tune-lambda"
        )
    if not (corruption == "none" and severity == 0) and not (0 < len(corruption) <= 64 and 1 <= severity <= 5):
        raise RobustCSCError(
            f"lambda policy cell ({corruption[:40]}, {severity}) is neither the clean cell (none, 0) nor a corruption "
            "at severity 1 to 5; re-run tune-lambda"
        )
    return corruption, int(severity)


def _calibration(points: object) -> list:
    """The calibration points as written by tune-lambda: a list of objects (None: none recorded)."""
    if points is None:
        return []
    if not isinstance(points, list) or not all(isinstance(p, Mapping) for p in points):
        raise RobustCSCError("lambda policy field calibration is not a list of points; re-run tune-lambda")
    return list(points)


class CellPolicy(LambdaPolicy):
    """One lambda per (corruption, severity) cell: the oracle of the tuning split."""

    rule = "grid"

    def __init__(self, cells: Mapping[tuple[str, int], float], meta: Mapping[str, Any], calibration: list | None = None) -> None:
        super().__init__(meta)
        if not cells:
            raise RobustCSCError("a cell lambda policy needs at least one cell; tune at least one cell")
        self.cells = {_cell(c, s): _number(v, f"lambda of {c} {s}") for (c, s), v in cells.items()}
        for value in self.cells.values():
            setting_for(self.layers, value)  # a value the layers cannot take fails here, not at use
        self.calibration = _calibration(calibration)

    def _body(self) -> dict[str, Any]:
        cells = [{"corruption": c, "severity": s, "lambda": v} for (c, s), v in sorted(self.cells.items())]
        return {"cells": cells, "calibration": self.calibration}

    def value_for(self, corruption: str = "none", severity: int = 0) -> float:
        key = (str(corruption), int(severity))
        if key not in self.cells:
            raise RobustCSCError(
                f"lambda policy {self.name} has no lambda for cell ({corruption}, {severity}); "
                f"tune that cell with tune-lambda or use a recon-rule policy (--rule recon)"
            )
        return self.cells[key]

    @contextlib.contextmanager
    def applied(self, model: nn.Module, corruption: str = "none", severity: int = 0) -> Iterator[nn.Module]:
        """The model with the cell's lambda set on the policy's layers; restored on exit."""
        value = self.value_for(corruption, severity)
        self._check_model(model)
        with setting_for(self.layers, value).applied(model) as run:
            yield run

    def cell_extra(self, corruption: str, severity: int, run: nn.Module) -> dict[str, Any]:
        """What the store's extra records for a cell evaluated under this policy."""
        return {"lambda": self.value_for(corruption, severity), "rule": self.rule, "layers": self.layers}


class ReconPolicy(LambdaPolicy):
    """Lambda = clip(slope * e + intercept) from the stem's reconstruction error e at the reference lambda."""

    rule = "recon"

    def __init__(
        self,
        *,
        slope: float,
        intercept: float,
        clip: tuple[float, float],
        per: str,
        meta: Mapping[str, Any],
        calibration: list | None = None,
    ) -> None:
        super().__init__(meta)
        if per not in PER:
            raise RobustCSCError(f"unknown per {per!r} in the lambda policy; use 'sample' or 'batch'")
        self.slope, self.intercept = _number(slope, "slope"), _number(intercept, "intercept")
        if len(clip) != 2:
            raise RobustCSCError("lambda policy field clip must be two numbers [low, high]; re-run tune-lambda")
        self.clip = (_lambda(clip[0], "clip"), _lambda(clip[1], "clip"))
        if self.clip[0] > self.clip[1]:
            raise RobustCSCError(
                f"lambda policy clip range {self.clip[0]:g} to {self.clip[1]:g} runs backwards; re-run tune-lambda"
            )
        self.per = per
        self.calibration = _calibration(calibration)

    def _body(self) -> dict[str, Any]:
        fit = {"slope": self.slope, "intercept": self.intercept, "clip": list(self.clip), "per": self.per,
               "feature": "stem reconstruction error at reference_lambda"}
        return {"fit": fit, "calibration": self.calibration}

    # The choice depends on the input: attacks must also adapt to it (robust_csc.attacks.adaptive).
    input_adaptive = True

    def wrap(self, model: nn.Module, mode: str = "full", anchors=None) -> ReconLambdaModel:
        """The rule around model; mode "repick" / "fixed" (with the clean anchor images) are the
        adaptive attacks' surrogates (robust_csc.tuning.rule)."""
        return ReconLambdaModel(
            model, slope=self.slope, intercept=self.intercept, clip=self.clip,
            reference=self.meta["reference_lambda"], layers=self.layers, per=self.per, mode=mode, anchors=anchors,
        )

    @contextlib.contextmanager
    def applied(self, model: nn.Module, corruption: str = "none", severity: int = 0) -> Iterator[nn.Module]:
        """The label-free wrapper (the cell is ignored: the rule never needs it); lambdas restored on exit."""
        self._check_model(model)
        yield self.wrap(model)  # the wrapper restores the lambdas after every forward pass

    def cell_extra(self, corruption: str, severity: int, run: nn.Module) -> dict[str, Any]:
        mean = run.mean_lambda() if isinstance(run, ReconLambdaModel) else None
        return {"mean_lambda": mean, "rule": self.rule, "layers": self.layers, "per": self.per}


def policy_from_dict(data: Mapping[str, Any], source: str = "the lambda policy") -> LambdaPolicy:
    """Rebuild a policy from its JSON content."""
    if not isinstance(data, Mapping) or data.get("format") != POLICY_FORMAT:
        raise RobustCSCError(f"{source} is not a robust-csc lambda policy; pass a file written by tune-lambda")
    if data.get("version") == 1:
        raise RobustCSCError(
            f"{source} was written by robust-csc 0.1, which did not record the images it was tuned on, so it cannot be "
            "scored without risking them; re-run tune-lambda"
        )
    if data.get("version") != POLICY_VERSION:
        raise RobustCSCError(f"{source} has policy version {data.get('version')!r}, this robust-csc reads {POLICY_VERSION}; re-run tune-lambda")
    rule = data.get("rule")
    try:
        if rule == "grid":
            cells = {(c["corruption"], c["severity"]): c["lambda"] for c in data["cells"]}
            return CellPolicy(cells, data, data.get("calibration"))
        if rule == "recon":
            fit = data["fit"]
            return ReconPolicy(slope=fit["slope"], intercept=fit["intercept"], clip=tuple(fit["clip"]),
                               per=fit["per"], meta=data, calibration=data.get("calibration"))
    except (KeyError, TypeError, IndexError, ValueError, AttributeError) as err:
        raise RobustCSCError(f"{source} is incomplete ({str(err)[:60]!r} is missing or malformed); re-run tune-lambda") from None
    raise RobustCSCError(f"{source} has unknown rule {rule!r}; use a policy with rule 'grid' or 'recon'")


def load_policy(path: str | Path, checkpoint_sha256: str | None = None) -> LambdaPolicy:
    """Read a policy file; with checkpoint_sha256, refuse a policy tuned for another checkpoint."""
    path = regular_file(path, "lambda policy", "pass a file written by tune-lambda --out")
    fix = "pass a file written by tune-lambda"
    if path.stat().st_size > MAX_POLICY_BYTES:
        raise RobustCSCError(f"{path} is larger than the {MAX_POLICY_BYTES:,} bytes a lambda policy takes; {fix}")
    try:
        text = path.read_bytes()
    except OSError as err:
        raise RobustCSCError(f"{path} is not readable ({err.strerror or err}); {fix}") from None
    data = parse_json(text, what=str(path), fix=fix, max_bytes=MAX_POLICY_BYTES)
    policy = policy_from_dict(data, str(path))
    if checkpoint_sha256 is not None and policy.checkpoint_sha256 != checkpoint_sha256:
        raise RobustCSCError(
            f"lambda policy {path} was tuned for checkpoint {policy.checkpoint_sha256} but this checkpoint is "
            f"{checkpoint_sha256}; tune a policy for this checkpoint with tune-lambda"
        )
    return policy


__all__ = [
    "CellPolicy", "LambdaPolicy", "POLICY_FORMAT", "RULES", "ReconPolicy", "canonical_json", "load_policy", "policy_from_dict",
]
