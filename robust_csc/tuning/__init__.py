"""Lambda per noise type and level: grid sweep, per-cell choice, the label-free recon rule, policy files.

    from robust_csc.tuning import tune_checkpoint, load_policy
    result = tune_checkpoint(ckpt, suite, store="results.sqlite", clean=clean, out="policy.json")
    policy = load_policy("policy.json", checkpoint_sha256=checkpoint_hash(ckpt))
"""

from robust_csc.tuning.grid import DEFAULT_GRIDS, LAYERS, check_grid, default_grid, parse_grid
from robust_csc.tuning.policy import CellPolicy, LambdaPolicy, ReconPolicy, load_policy
from robust_csc.tuning.rule import ReconLambdaModel, fit_line
from robust_csc.tuning.splits import TuningSplit, split_names, split_positions
from robust_csc.tuning.sweep import SweepCell, sweep_cell
from robust_csc.tuning.tuner import TuneResult, choose, tune, tune_checkpoint

__all__ = [
    "CellPolicy", "DEFAULT_GRIDS", "LAYERS", "LambdaPolicy", "ReconLambdaModel", "ReconPolicy", "SweepCell",
    "TuneResult", "TuningSplit", "check_grid", "choose", "default_grid", "fit_line", "load_policy", "parse_grid",
    "split_names", "split_positions", "sweep_cell", "tune", "tune_checkpoint",
]
