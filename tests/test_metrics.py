"""Corruption metrics against numbers worked out by hand from small fixed tables."""

import math

import pandas as pd
import pytest

from robust_csc.errors import RobustCSCError
from robust_csc.evaluation.metrics import (
    COMMON_CORRUPTIONS,
    accuracy_table,
    corruption_errors,
    imagenet_mce,
    summary,
)
from robust_csc.evaluation.store import CellKey, ResultsStore

# Hendrycks' order, typed out here rather than taken from the code under test.
COMMON = [
    "gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur",
    "motion_blur", "zoom_blur", "snow", "frost", "fog",
    "brightness", "contrast", "elastic_transform", "pixelate", "jpeg_compression",
]
# AlexNet's errors summed over severities / 5, copied from the reference facts.
ALEXNET = [
    .886428, .894468, .922640, .819880, .826268, .785948, .798360, .866816, .826572,
    .819324, .564592, .853204, .646056, .717840, .606500,
]

# Correct counts out of n = 100 for severities 1..5 (clean: severity 0).
SMALL = {
    "resnet18": {
        "clean": 90,                          # error .10
        "gaussian_noise": [80, 70, 60, 50, 40],  # errors .2 .3 .4 .5 .6, sum 2.0
        "fog": [85, 80, 75, 70, 65],             # errors .15 .2 .25 .3 .35, sum 1.25
        "speckle_noise": [88, 84, 80, 76, 72],   # errors .12 .16 .20 .24 .28, sum 1.0
    },
    "sdnet18": {
        "clean": 92,                          # error .08
        "gaussian_noise": [85, 80, 75, 70, 65],  # errors sum 1.25
        "fog": [90, 85, 80, 75, 70],             # errors sum 1.0
        "speckle_noise": [90, 88, 86, 84, 82],   # errors sum 0.7
    },
}


def frame_of(counts, n=100):
    rows = []
    for model, table in counts.items():
        for corruption, correct in table.items():
            if corruption == "clean":
                rows.append(dict(model=model, corruption="none", severity=0, n=n, correct=correct))
                continue
            for severity, c in enumerate(correct, start=1):
                if c is not None:
                    rows.append(dict(model=model, corruption=corruption, severity=severity, n=n, correct=c))
    df = pd.DataFrame(rows)
    df["attack"] = "none"
    df["accuracy"] = df["correct"] / df["n"]
    return df


def full_counts():
    """SMALL plus the 13 other common corruptions: baseline 50/100 everywhere, sdnet18 60/100."""
    counts = {model: dict(table) for model, table in SMALL.items()}
    for c in COMMON:
        if c not in counts["resnet18"]:
            counts["resnet18"][c] = [50] * 5
            counts["sdnet18"][c] = [60] * 5
    return counts


def test_common_corruptions_are_hendrycks_order():
    assert list(COMMON_CORRUPTIONS) == COMMON


def test_accuracy_table_small():
    table = accuracy_table(frame_of(SMALL), "sdnet18")
    # rows in Hendrycks' order, then the extras; clean is not a row
    assert list(table.index) == ["gaussian_noise", "fog", "speckle_noise"]
    assert list(table.columns) == [1, 2, 3, 4, 5, "mean"]
    assert table.loc["gaussian_noise", 1] == pytest.approx(0.85)
    assert table.loc["fog", 5] == pytest.approx(0.70)
    assert table.loc["gaussian_noise", "mean"] == pytest.approx((0.85 + 0.80 + 0.75 + 0.70 + 0.65) / 5)
    assert table.loc["fog", "mean"] == pytest.approx(0.80)
    assert table.loc["speckle_noise", "mean"] == pytest.approx(0.86)


def test_accuracy_table_with_a_missing_cell():
    counts = {"m": {"fog": [90, 85, None, 75, 70]}}
    table = accuracy_table(frame_of(counts), "m")
    assert math.isnan(table.loc["fog", 3]) and math.isnan(table.loc["fog", "mean"])
    assert table.loc["fog", 4] == pytest.approx(0.75)


def test_summary_full():
    s = summary(frame_of(full_counts()), "sdnet18")
    assert s["clean_accuracy"] == pytest.approx(0.92)
    # 75 cells: gaussian sums to 3.75, fog to 4.0, 13 others 5 x 0.6 = 3.0 each
    assert s["mean_accuracy_75"] == pytest.approx((3.75 + 4.0 + 13 * 3.0) / 75)
    assert s["mean_accuracy_75"] == pytest.approx(0.6233333333)
    assert s["missing_75"] == 0 and s["missing_cells"] == []
    # severity 5: gaussian .65, fog .70, 13 others .6
    assert s["severity5_accuracy"] == pytest.approx((0.65 + 0.70 + 13 * 0.6) / 15)
    assert s["severity5_accuracy"] == pytest.approx(0.61)
    assert s["missing_severity5"] == 0
    assert s["per_corruption"]["gaussian_noise"] == pytest.approx(0.75)
    assert s["per_corruption"]["speckle_noise"] == pytest.approx(0.86)  # extras are listed, not in the 75
    assert s["per_corruption"]["snow"] == pytest.approx(0.6)
    assert len(s["per_corruption"]) == 16


def test_summary_reports_missing_cells_instead_of_a_75_cell_mean():
    counts = full_counts()
    counts["sdnet18"]["fog"] = [90, 85, 80, 75, None]
    counts["sdnet18"]["snow"] = [None, 60, 60, 60, 60]
    s = summary(frame_of(counts), "sdnet18")
    assert math.isnan(s["mean_accuracy_75"])
    assert s["missing_75"] == 2
    assert sorted(s["missing_cells"]) == [("fog", 5), ("snow", 1)]
    assert math.isnan(s["severity5_accuracy"]) and s["missing_severity5"] == 1
    assert math.isnan(s["per_corruption"]["fog"])
    assert s["per_corruption"]["gaussian_noise"] == pytest.approx(0.75)

    small = summary(frame_of(SMALL), "sdnet18")
    assert math.isnan(small["mean_accuracy_75"]) and small["missing_75"] == 75 - 10


def test_corruption_errors_small_by_hand():
    ce = corruption_errors(frame_of(SMALL), "sdnet18", baseline="resnet18")
    # CE_c = sum_s E_model / sum_s E_baseline
    assert ce.ce["gaussian_noise"] == pytest.approx(1.25 / 2.0)   # 0.625
    assert ce.ce["fog"] == pytest.approx(1.0 / 1.25)              # 0.8
    assert ce.ce["speckle_noise"] == pytest.approx(0.7 / 1.0)     # 0.7
    # relative: subtract each model's clean error (.08 and .10) from each of its 5 errors
    assert ce.relative_ce["gaussian_noise"] == pytest.approx((1.25 - 5 * 0.08) / (2.0 - 5 * 0.10))  # 0.5667
    assert ce.relative_ce["fog"] == pytest.approx((1.0 - 0.4) / (1.25 - 0.5))                       # 0.8
    assert ce.relative_ce["speckle_noise"] == pytest.approx((0.7 - 0.4) / (1.0 - 0.5))              # 0.6
    # 13 of the 15 common corruptions are missing: no mCE
    assert math.isnan(ce.mce) and math.isnan(ce.relative_mce)
    assert len(ce.missing_cells) == 65
    # not the mean of per-severity ratios
    assert ce.ce["gaussian_noise"] != pytest.approx(sum(e / b for e, b in zip(
        [.15, .2, .25, .3, .35], [.2, .3, .4, .5, .6])) / 5)


def test_mce_full_by_hand():
    result = corruption_errors(frame_of(full_counts()), "sdnet18", baseline="resnet18")
    # the 13 constant corruptions: CE = (5 x .4) / (5 x .5) = .8; relative (5 x .32) / (5 x .4) = .8
    assert result.ce["snow"] == pytest.approx(0.8)
    assert result.relative_ce["snow"] == pytest.approx(0.8)
    # mCE over the 15 common only (speckle_noise's 0.7 left out)
    assert result.mce == pytest.approx((0.625 + 0.8 + 13 * 0.8) / 15)  # 0.78833
    assert result.mce == pytest.approx(0.7883333333)
    assert result.relative_mce == pytest.approx((0.85 / 1.5 + 0.8 + 13 * 0.8) / 15)  # 0.78444
    assert result.relative_mce == pytest.approx(0.7844444444)
    assert result.missing_cells == []
    table = result.table()
    assert table.loc["mCE", "ce"] == pytest.approx(result.mce)
    assert list(table.index[:2]) == ["gaussian_noise", "shot_noise"]
    # the baseline against itself: every CE is 1
    own = corruption_errors(frame_of(full_counts()), "resnet18", baseline="resnet18")
    assert own.mce == pytest.approx(1.0) and own.relative_mce == pytest.approx(1.0)


def test_baseline_missing_cells_are_named():
    counts = {model: dict(table) for model, table in SMALL.items()}
    counts["resnet18"]["fog"] = [85, 80, None, 70, 65]
    with pytest.raises(RobustCSCError, match="baseline 'resnet18' lacks the cells fog severity 3;") as info:
        corruption_errors(frame_of(counts), "sdnet18", baseline="resnet18")
    assert "\n" not in str(info.value)
    counts["resnet18"]["fog"] = SMALL["resnet18"]["fog"]
    del counts["resnet18"]["clean"]
    with pytest.raises(RobustCSCError, match="lacks the cells clean"):
        corruption_errors(frame_of(counts), "sdnet18", baseline="resnet18")


def test_unknown_model_lists_the_models_present():
    df = frame_of(SMALL)
    for call in (
        lambda: accuracy_table(df, "sdnet34"),
        lambda: summary(df, "sdnet34"),
        lambda: corruption_errors(df, "sdnet34", "resnet18"),
        lambda: corruption_errors(df, "sdnet18", "alexnet"),
        lambda: imagenet_mce(df, "sdnet34"),
    ):
        with pytest.raises(RobustCSCError, match=r"\(models present: resnet18, sdnet18\)"):
            call()


def test_imagenet_mce_against_alexnet_by_hand():
    # every common corruption: errors .3 .4 .5 .6 .7 (sum 2.5) on n = 1000; clean error .2
    counts = {"r50": {"clean": 800, **{c: [700, 600, 500, 400, 300] for c in COMMON}}}
    result = imagenet_mce(frame_of(counts, n=1000), "r50")
    expected_ce = [2.5 / (5 * a) for a in ALEXNET]
    expected_rel = [(2.5 - 5 * 0.2) / (5 * (a - 0.435)) for a in ALEXNET]
    assert list(result.ce.index) == COMMON
    assert list(result.ce) == pytest.approx(expected_ce)
    assert result.ce["gaussian_noise"] == pytest.approx(0.5 / 0.886428)
    assert result.mce == pytest.approx(sum(expected_ce) / 15)
    assert result.relative_mce == pytest.approx(sum(expected_rel) / 15)
    assert result.relative_ce["brightness"] == pytest.approx(0.3 / (0.564592 - 0.435))


def test_imagenet_mce_of_alexnet_itself_is_one():
    n = 1_000_000  # the published values have 6 decimals: exact counts
    counts = {"alexnet": {"clean": 565_000, **{c: [round((1 - a) * n)] * 5 for c, a in zip(COMMON, ALEXNET)}}}
    result = imagenet_mce(frame_of(counts, n=n), "alexnet")
    assert result.mce == pytest.approx(1.0)
    assert result.relative_mce == pytest.approx(1.0)


def test_imagenet_mce_without_all_cells_is_nan_with_the_missing_named():
    counts = {"m": {c: [700, 600, 500, 400, 300] for c in COMMON[:14]}}
    result = imagenet_mce(frame_of(counts, n=1000), "m")
    assert math.isnan(result.mce) and math.isnan(result.relative_mce)
    assert math.isnan(result.ce["jpeg_compression"])
    assert result.ce["pixelate"] == pytest.approx(0.5 / 0.717840)
    assert math.isnan(result.relative_ce["pixelate"])  # no clean cell
    assert ("none", 0) in result.missing_cells and ("jpeg_compression", 3) in result.missing_cells


def test_attacked_cells_are_ignored_and_duplicates_refused():
    df = frame_of(SMALL)
    attacked = df[df["corruption"] == "none"].assign(attack="pgd", correct=3)
    with_attack = pd.concat([df, attacked], ignore_index=True)
    assert summary(with_attack, "sdnet18")["clean_accuracy"] == pytest.approx(0.92)
    doubled = pd.concat([df, df.iloc[:1]], ignore_index=True)
    with pytest.raises(RobustCSCError, match="several cells for clean"):
        summary(doubled, "resnet18")
    with pytest.raises(RobustCSCError, match="lacks the columns correct"):
        summary(df.drop(columns=["correct"]), "sdnet18")


def test_metrics_read_the_frame_the_store_returns(tmp_path):
    with ResultsStore(tmp_path / "r.sqlite") as store:
        for model, table in SMALL.items():
            for corruption, correct in table.items():
                if corruption == "clean":
                    store.add(CellKey(model, "00" * 32, "cifar10", "test"), {"n": 100, "correct": correct, "seconds": 1})
                    continue
                for severity, c in enumerate(correct, start=1):
                    k = CellKey(model, "00" * 32, "cifar10", "test", corruption, severity)
                    store.add(k, {"n": 100, "correct": c, "seconds": 1})
        df = store.to_frame()
    assert accuracy_table(df, "sdnet18").loc["fog", "mean"] == pytest.approx(0.8)
    assert corruption_errors(df, "sdnet18", "resnet18").ce["gaussian_noise"] == pytest.approx(0.625)
