"""The store's cells sorted into what a report shows: series, corruption, attack, grid and policy cells.

A series is (model, checkpoint_sha256, dataset, split, lambda_setting): one
run of one checkpoint on one data set and split at one lambda setting. Every
table and plot is labelled by its series, so two checkpoints or two splits
never mix.

Cell kinds (store conventions of the harness, the attacks and the tuner):
- corruption cells: attack "none" on an ordinary split (clean = ("none", 0));
- grid cells: attack "none" on a tuning split f"{base}:tune:s{seed}";
- policy cells: lambda_setting "policy:<hex>" on a reporting split
  f"{base}:report:s{seed}" (their "trained" twins sit on the same split);
- attack cells: attack f"{id}:{norm}", and f"worst-case:{norm}" for the
  pointwise worst case over the attacks run at one (norm, epsilon);
- noise-curve cells: corruption f"{kind}_noise@{level}" with severity 0.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass

import pandas as pd

from robust_csc.corruptions.names import ALL
from robust_csc.errors import RobustCSCError
from robust_csc.evaluation.noise_curve import LEVEL_MARK  # a noise curve's cell: corruption "gaussian_noise@0.1"
from robust_csc.lambdas import LambdaSetting

SERIES_COLUMNS = ("model", "checkpoint_sha256", "dataset", "split", "lambda_setting")
CLEAN = "none"
TRAINED = "trained"
POLICY_PREFIX = "policy:"
WORST_CASE = "worst-case"

_TUNE = re.compile(r"^(?P<base>.*):tune:s(?P<seed>\d+)$")
_REPORT = re.compile(r"^(?P<base>.*):report:s(?P<seed>\d+)$")
_SUITE_SEED = re.compile(r"seed=(\d+)")
_SUITE_PROFILE = re.compile(r"-c\[(cifar|imagenet)")


@dataclass(frozen=True, order=True)
class Series:
    """One (model, checkpoint, data set, split, lambda setting) and its short name in tables and legends."""

    model: str
    checkpoint_sha256: str
    dataset: str
    split: str
    lambda_setting: str

    @property
    def short_sha(self) -> str:
        return self.checkpoint_sha256[:8]

    @property
    def data(self) -> str:
        return f"{self.dataset} {self.split}"

    def title(self) -> str:
        """Everything that identifies the series, for headings (the setting by its readable name)."""
        from robust_csc.reports.names import setting_label

        return f"{self.model} (checkpoint {self.short_sha}), {self.dataset}, split {self.split}, {setting_label(self.lambda_setting)}"

    def slug(self) -> str:
        """A file-name stem: letters, digits, '.', '-' and '_' only."""
        parts = (self.model, self.short_sha, self.dataset, self.split, self.lambda_setting)
        return re.sub(r"[^A-Za-z0-9._-]+", "_", "__".join(parts)).strip("_")

    def rows(self, frame: pd.DataFrame) -> pd.DataFrame:
        mask = pd.Series(True, index=frame.index)
        for column in SERIES_COLUMNS:
            mask &= frame[column] == getattr(self, column)
        return frame[mask]


def known_setting(name: str) -> LambdaSetting | None:
    """The fixed lambda setting a store name stands for; None for a policy or a name some other tool wrote."""
    try:
        return LambdaSetting.parse(name)
    except RobustCSCError:
        return None


def lambda_order(name: str) -> tuple:
    """trained first, then fixed settings by kind and value, then policies by name."""
    if name == TRAINED:
        return (0, "", 0.0, name)
    if name.startswith(POLICY_PREFIX):
        return (2, "", 0.0, name)
    setting = known_setting(name)
    if setting is None:  # keep it, after the known ones
        return (3, "", 0.0, name)
    return (1, setting.kind, float(setting.value), name)


def series_sort_key(series: Series) -> tuple:
    return (series.model, series.checkpoint_sha256, series.dataset, series.split, lambda_order(series.lambda_setting))


def series_of(frame: pd.DataFrame) -> list[Series]:
    """The distinct series in frame, in a fixed order (independent of insertion order)."""
    if frame.empty:
        return []
    keys = frame[list(SERIES_COLUMNS)].drop_duplicates().itertuples(index=False, name=None)
    return sorted((Series(*key) for key in keys), key=series_sort_key)


def labels(series: list[Series]) -> dict[Series, str]:
    """Short unique legend names: the model, then only the parts that vary among the series shown, then the
    setting's readable name (robust_csc.reports.names)."""
    from robust_csc.reports.names import setting_label

    shas = {}
    for s in series:
        shas.setdefault(s.model, set()).add(s.checkpoint_sha256)
    datas = {(s.dataset, s.split) for s in series}
    out = {}
    for s in series:
        text = s.model
        if len(shas[s.model]) > 1:
            text += f" @{s.short_sha}"
        if len(datas) > 1:
            text += f" [{s.data}]"
        out[s] = f"{text}, {setting_label(s.lambda_setting)}"
    return out


def corruption_order(names) -> list[str]:
    """Hendrycks' order, then the extras, then anything unknown alphabetically; clean ("none") first."""
    names = set(names)
    known = [c for c in ALL if c in names]
    head = [CLEAN] if CLEAN in names else []
    return head + known + sorted(names - set(ALL) - {CLEAN})


def tune_split(split: str):
    """(base, seed) of a tuning split, else None."""
    found = _TUNE.match(split)
    return (found["base"], int(found["seed"])) if found else None


def report_split(split: str):
    """(base, seed) of a reporting split, else None."""
    found = _REPORT.match(split)
    return (found["base"], int(found["seed"])) if found else None


def suite_profile(dataset: str) -> str | None:
    """The corruption profile a generated suite's name records ("digits-c[cifar]" -> "cifar")."""
    found = _SUITE_PROFILE.search(dataset)
    return found[1] if found else None


def suite_seed(dataset: str) -> int:
    """The seed a generated suite's name records (absent = 0)."""
    found = _SUITE_SEED.search(dataset)
    return int(found[1]) if found else 0


def parse_extra(text: object) -> dict:
    if isinstance(text, dict):
        return text
    try:
        value = json.loads(text) if isinstance(text, str) and text else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def attack_norm(attack: str) -> tuple[str, str]:
    """("pgd", "Linf") from "pgd:Linf"; a name without a norm gets ""."""
    name, _, norm = attack.rpartition(":")
    return (name, norm) if name else (attack, "")


def attack_order(attack: str) -> tuple:
    name, norm = attack_norm(attack)
    return (norm, name == WORST_CASE, name)


def format_epsilon(epsilon: float, norm: str) -> str:
    """8/255 for Linf budgets on the 1/255 grid, else the plain number."""
    if norm.lower() == "linf" and 0 < epsilon < 1:
        steps = epsilon * 255
        if abs(steps - round(steps)) < 1e-6:
            return f"{round(steps)}/255"
    return f"{epsilon:g}"


@dataclass
class Cells:
    """The frame of a store split into the kinds of cells a report shows."""

    frame: pd.DataFrame  # every cell, with an "extras" column of decoded dicts

    @classmethod
    def from_frame(cls, frame: pd.DataFrame) -> "Cells":
        frame = frame.copy()
        frame["extras"] = [parse_extra(text) for text in frame["extra"]]
        return cls(frame)

    def _unattacked(self) -> pd.DataFrame:
        """Unattacked cells of the suites (a noise curve's cells, "gaussian_noise@0.1", are not among them)."""
        rows = self.frame[self.frame["attack"] == "none"]
        return rows[~rows["corruption"].str.contains(LEVEL_MARK, regex=False)]

    @property
    def curve(self) -> pd.DataFrame:
        """Noise-curve cells (robust_csc.evaluation.noise_curve.store_curve): a continuous level per cell."""
        rows = self.frame[self.frame["attack"] == "none"]
        return rows[rows["corruption"].str.contains(LEVEL_MARK, regex=False)]

    @property
    def corruption(self) -> pd.DataFrame:
        """Unattacked cells off the tuning splits: the harness's cells and the tuner's reporting cells."""
        rows = self._unattacked()
        return rows[rows["split"].map(lambda s: tune_split(s) is None).astype(bool)]

    @property
    def grid(self) -> pd.DataFrame:
        """Unattacked cells on tuning splits: the tuner's lambda sweep."""
        rows = self._unattacked()
        return rows[rows["split"].map(lambda s: tune_split(s) is not None).astype(bool)]

    @property
    def policy(self) -> pd.DataFrame:
        rows = self.corruption
        return rows[rows["lambda_setting"].str.startswith(POLICY_PREFIX)]

    @property
    def attack(self) -> pd.DataFrame:
        return self.frame[self.frame["attack"] != "none"]


def chosen_lambda(extras: dict) -> float:
    """The lambda a policy cell records: "lambda" (cell policies) or "mean_lambda" (the recon rule); NaN if neither."""
    for key in ("lambda", "mean_lambda"):
        value = extras.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
    return math.nan
