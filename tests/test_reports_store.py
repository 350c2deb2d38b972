"""Stores for the report tests, written cell by cell with ResultsStore.add as the harness, attacks and tuner write them.

Also tests how the report sorts those cells into kinds and series.
"""

import math

import numpy as np

from robust_csc.evaluation.outcomes import Outcomes
from robust_csc.evaluation.store import CellKey, ResultsStore
from robust_csc.lambdas import LambdaSetting
from robust_csc.reports.cells import Cells, Series, format_epsilon, labels, report_split, series_of, tune_split

SDNET_SHA = "a1" * 32
RESNET_SHA = "b2" * 32
SUITE = "digits-c[cifar]"
SPLIT = "test[:200]"
N = 200
CORRUPTIONS = (  # the demo's ten
    "gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise", "defocus_blur",
    "motion_blur", "fog", "contrast", "pixelate", "jpeg_compression",
)
NOISE = ("gaussian_noise", "shot_noise")
GRID = tuple(float(v) for v in np.linspace(0.1, 1.4, 14))
EPSILONS = (1 / 255, 2 / 255, 4 / 255, 8 / 255)
POLICY = "policy:0123456789ab"
TUNE_SPLIT = f"{SPLIT}:tune:s0"
REPORT_SPLIT = f"{SPLIT}:report:s0"


def accuracy(model, corruption, severity, lam="trained"):
    """A made-up but plausible accuracy: falls with severity, differs per corruption and model."""
    base = 0.97 if model == "sdnet18" else 0.96
    if corruption == "none":
        return base
    hardness = 0.02 + 0.01 * (sum(map(ord, corruption)) % 7)
    bonus = 0.03 if (model == "sdnet18" and corruption in NOISE and lam != "trained") else 0.0
    return max(0.05, base - hardness * severity * (1.6 if model == "resnet18" else 1.0) + bonus)


def grid_accuracy(corruption, severity, lam):
    """Peaked at a lambda that grows with the noise level (what tuning should find)."""
    slope = {"none": 0.0, "gaussian_noise": 0.2}.get(corruption, 0.15)
    best = 0.1 + slope * severity
    return max(0.05, 0.95 - 0.05 * severity - 0.3 * (lam - best) ** 2)


def correct_of(acc, n):
    return int(round(acc * n))


def outcomes(correct, n, *key):
    """Per-example outcomes with `correct` right answers at positions fixed by key (the same key, the same order)."""
    seed = int.from_bytes(repr(key).encode()[:8].ljust(8, b"0"), "little") ^ sum(map(ord, repr(key)))
    order = np.random.default_rng(seed).permutation(n)
    flags = np.zeros(n, dtype=bool)
    flags[order[:correct]] = True
    return Outcomes.first(flags)


def add_corruption_cells(store, model, sha, lam="trained", corruptions=CORRUPTIONS, split=SPLIT, dataset=SUITE, n=N,
                         severities=(1, 2, 3, 4, 5)):
    has_csc = model.startswith("sdnet")
    for corruption, severity in [("none", 0)] + [(c, s) for c in corruptions for s in severities]:
        acc = accuracy(model, corruption, severity, lam)
        store.add(
            CellKey(model, sha, dataset, split, corruption, severity, lambda_setting=lam),
            {
                "n": n,
                "correct": correct_of(acc, n),
                "outcomes": outcomes(correct_of(acc, n), n, model, corruption, severity, lam, split),
                "seconds": 0.5,
                "mean_recon_error": 10.0 + severity if has_csc else None,
                "mean_code_density": 0.3 - 0.02 * severity if has_csc else None,
                "extra": {"suite": dataset, "batch_size": 256},
            },
        )


def robust_fraction(model, attack, epsilon):
    strength = {"fgsm": 0.7, "pgd": 1.0, "worst-case": 1.1}[attack]
    scale = 6.0 if model == "sdnet18" else 8.0
    return max(0.0, 0.95 * math.exp(-strength * scale * epsilon * 255 / 8))


def add_attack_cells(store, model, sha, n=100, lam="trained", checks_fail=False):
    for epsilon in EPSILONS:
        for attack in ("fgsm", "pgd", "worst-case"):
            acc = robust_fraction(model, attack, epsilon)
            correct = correct_of(acc, n)
            extra = {"seed": 0, "clean_correct": correct_of(0.95, n)}  # as the attack runner records it
            if attack == "worst-case":
                extra.update(
                    attacks=["fgsm:Linf", "pgd:Linf"],
                    grade="upper bound: fgsm, pgd only, not comparable with AutoAttack figures",
                    checks={
                        "monotone_in_epsilon": {"passed": True, "detail": "robust accuracy falls with epsilon"},
                        "gradients": {"passed": not checks_fail, "detail": "input gradients finite and non-zero"},
                    },
                )
            # Nested robust sets (the worst case inside PGD inside FGSM), as the pointwise worst case is.
            store.add(
                CellKey(model, sha, "digits", "test[:100]", attack=f"{attack}:Linf", epsilon=epsilon, lambda_setting=lam),
                {"n": n, "correct": correct, "seconds": 2.0, "extra": extra,
                 "outcomes": outcomes(correct, n, model, epsilon, lam)},
            )


def add_tuning_cells(store, model="sdnet18", sha=SDNET_SHA, n=100):
    """A stem-lambda sweep on the tuning split, then trained and policy cells on the reporting split."""
    cells = [("none", 0)] + [(c, s) for c in NOISE for s in (1, 2, 3, 4, 5)]
    chosen = {}
    for corruption, severity in cells:
        accs = {}
        for lam in GRID:
            acc = grid_accuracy(corruption, severity, lam)
            correct = correct_of(acc, n)
            accs[lam] = correct
            store.add(
                CellKey(model, sha, SUITE, TUNE_SPLIT, corruption, severity, lambda_setting=LambdaSetting("stem", lam).name),
                {"n": n, "correct": correct, "seconds": 0.1, "mean_recon_error": 20.0 / (1 + lam) + severity,
                 "mean_code_density": 0.4 / (1 + 3 * lam) + 0.01 * severity, "extra": {"suite": SUITE, "seed": 0},
                 "outcomes": outcomes(correct, n, "grid", corruption, severity, lam)},
            )
        best = max(accs.values())
        chosen[(corruption, severity)] = min(lam for lam, c in accs.items() if c == best)
    for corruption, severity in cells:
        trained = accuracy(model, corruption, severity)
        store.add(CellKey(model, sha, SUITE, REPORT_SPLIT, corruption, severity),
                  {"n": n, "correct": correct_of(trained, n), "seconds": 0.1, "extra": {"suite": SUITE, "seed": 0},
                   "outcomes": outcomes(correct_of(trained, n), n, "report", corruption, severity)})
        tuned = correct_of(min(1.0, trained + 0.01 * severity), n)
        store.add(
            CellKey(model, sha, SUITE, REPORT_SPLIT, corruption, severity, lambda_setting=POLICY),
            {"n": n, "correct": tuned, "seconds": 0.1,
             "extra": {"lambda": chosen[(corruption, severity)], "rule": "grid", "layers": "stem", "seed": 0},
             "outcomes": outcomes(tuned, n, "report", corruption, severity)},
        )
    return chosen


def demo_store(path, sdnet_sha=SDNET_SHA, resnet_sha=RESNET_SHA):
    """2 models x 10 corruptions x 5 severities, a fixed-lambda run, attacks, and a tuning run."""
    with ResultsStore(path) as store:
        add_corruption_cells(store, "sdnet18", sdnet_sha)
        add_corruption_cells(store, "sdnet18", sdnet_sha, lam="0.3")
        add_corruption_cells(store, "resnet18", resnet_sha)
        add_attack_cells(store, "sdnet18", sdnet_sha)
        add_attack_cells(store, "resnet18", resnet_sha)
        chosen = add_tuning_cells(store, sha=sdnet_sha)
    return chosen


# ---------------------------------------------------------------- tests of the cell kinds


def test_cells_are_sorted_into_kinds_and_series(tmp_path):
    demo_store(tmp_path / "r.sqlite")
    with ResultsStore(tmp_path / "r.sqlite") as store:
        cells = Cells.from_frame(store.to_frame())
    grid = cells.grid
    assert set(grid["split"]) == {TUNE_SPLIT} and len(grid) == 11 * len(GRID)
    assert set(cells.policy["lambda_setting"]) == {POLICY} and len(cells.policy) == 11
    assert set(cells.attack["attack"]) == {"fgsm:Linf", "pgd:Linf", "worst-case:Linf"}
    assert not (cells.corruption["split"] == TUNE_SPLIT).any() and (cells.corruption["attack"] == "none").all()
    series = series_of(cells.corruption)
    # trained before fixed settings before policies; models alphabetically
    assert [(s.model, s.split, s.lambda_setting) for s in series] == [
        ("resnet18", SPLIT, "trained"),
        ("sdnet18", SPLIT, "trained"),
        ("sdnet18", SPLIT, "0.3"),
        ("sdnet18", REPORT_SPLIT, "trained"),
        ("sdnet18", REPORT_SPLIT, POLICY),
    ]
    names = labels(series)
    assert len(set(names.values())) == len(series)  # two splits of one model never share a legend name
    assert names[series[0]] == f"resnet18 [{SUITE} {SPLIT}], trained λ"


def test_split_names_and_epsilons():
    assert tune_split("test[:200]:tune:s3") == ("test[:200]", 3) and tune_split("test") is None
    assert report_split("test:report:s0") == ("test", 0) and report_split("test:tune:s0") is None
    assert format_epsilon(8 / 255, "Linf") == "8/255" and format_epsilon(0.5, "L2") == "0.5"
    assert format_epsilon(0.01, "Linf") == "0.01"
    s = Series("sdnet18", "ab" * 32, "digits-c[cifar]", "test[:200]", "stem=0.5")
    assert s.slug() == "sdnet18__abababab__digits-c_cifar___test_200___stem_0.5"
