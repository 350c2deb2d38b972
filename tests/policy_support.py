"""A valid lambda-policy metadata record for tests that build policies by hand."""

from robust_csc.evaluation.outcomes import encode_index
from robust_csc.tuning.splits import split_positions


def policy_meta(n=12, seed=0, base=None, suite_name="digits-c[cifar]", options=None, **overrides):
    """The metadata tune() writes, for a suite of n images per cell halved with seed."""
    base = base or f"test[:{n}]"
    tune, _ = split_positions(n, seed)
    meta = {
        "layers": "stem", "grid": [0.1, 0.5], "seed": seed,
        "splits": {"tune": f"{base}:tune:s{seed}", "report": f"{base}:report:s{seed}"},
        "arch": "sdnet18", "checkpoint_sha256": "ab" * 32, "dataset": suite_name, "reference_lambda": 0.1,
        "suite": {"name": suite_name, "corruptions": ["gaussian_noise"], "severities": [1, 2, 3, 4, 5],
                  "images_per_cell": n, "clean": True,
                  "options": options if options is not None else
                  {"suite": "generated", "dataset": "digits", "profile": "cifar", "seed": 0, "n_examples": n}},
        "tune_index": {"n": int(tune.size), "index": encode_index(tune)},
    }
    meta.update(overrides)
    return meta
