"""Intervals and paired tests against independent references: scipy, brute-force sums, simulation."""

import math
from fractions import Fraction

import numpy as np
import pytest
from scipy.stats import binomtest

from robust_csc.errors import RobustCSCError
from robust_csc.evaluation.stats import (
    bootstrap_differences,
    bootstrap_statistic,
    compare,
    format_accuracy,
    format_difference,
    mcnemar,
    percentile_interval,
    stratified_differences,
    wilson_columns,
    wilson_interval,
)


@pytest.mark.parametrize("correct, n", [(0, 2), (1, 2), (0, 10), (10, 10), (37, 100), (8123, 10000), (3, 1000), (999, 1000)])
@pytest.mark.parametrize("confidence", [0.95, 0.8])
def test_wilson_matches_scipy(correct, n, confidence):
    expected = binomtest(correct, n).proportion_ci(confidence_level=confidence, method="wilson")
    low, high = wilson_interval(correct, n, confidence)
    assert low == pytest.approx(expected.low, abs=1e-12)
    assert high == pytest.approx(expected.high, abs=1e-12)


def test_wilson_refuses_fewer_than_two_examples_and_bad_counts():
    with pytest.raises(RobustCSCError, match="at least 2 examples"):
        wilson_interval(1, 1)
    with pytest.raises(RobustCSCError, match="exceeds n"):
        wilson_interval(5, 4)
    low, high = wilson_columns([1, 5, None], [1, 10, 10])
    assert math.isnan(low[0]) and math.isnan(high[2]) and 0 < low[1] < 0.5 < high[1] < 1


def _brute_mcnemar(a_only, b_only):
    """Two-sided exact McNemar p from the binomial sum, in exact fractions."""
    m = a_only + b_only
    if m == 0:
        return 1.0
    tail = sum(Fraction(math.comb(m, i), 2**m) for i in range(min(a_only, b_only) + 1))
    return float(min(Fraction(1), 2 * tail))


@pytest.mark.parametrize("a_only, b_only, both, neither", [(0, 0, 5, 5), (3, 0, 10, 2), (7, 2, 40, 1), (15, 15, 3, 3), (0, 9, 0, 0), (40, 61, 500, 20)])
def test_mcnemar_matches_the_brute_force_binomial_sum(a_only, b_only, both, neither):
    a = np.array([True] * a_only + [False] * b_only + [True] * both + [False] * neither)
    b = np.array([False] * a_only + [True] * b_only + [True] * both + [False] * neither)
    order = np.random.default_rng(0).permutation(a.size)
    result = mcnemar(a[order], b[order])
    assert (result.a_only, result.b_only) == (a_only, b_only)
    assert result.p_value == pytest.approx(_brute_mcnemar(a_only, b_only), rel=1e-12)


def test_bootstrap_coverage_by_simulation():
    """The 95% paired interval of a difference of accuracies covers the true difference about 95% of the time."""
    rng = np.random.default_rng(123)
    n, trials = 300, 300
    p_a, p_b = 0.62, 0.55  # correlated outcomes: b is a's outcome with some flips
    covered = 0
    for t in range(trials):
        a = rng.random(n) < p_a
        b = np.where(rng.random(n) < 0.7, a, rng.random(n) < p_b)
        true = p_a - (0.7 * p_a + 0.3 * p_b)
        _, draws = bootstrap_differences(a, b, n_boot=400, seed=t)
        low, high = percentile_interval(draws)
        covered += low <= true <= high
    coverage = covered / trials
    # A binomial(300, 0.95) lies in [0.91, 0.98] with probability above 0.99.
    assert 0.91 <= coverage <= 0.98, coverage


def test_bootstrap_over_cells_uses_one_draw_of_examples_for_every_cell():
    rng = np.random.default_rng(0)
    a = rng.random((3, 200)) < 0.6
    b = rng.random((3, 200)) < 0.5
    observed, draws = bootstrap_differences(a, b, n_boot=500, seed=1)
    assert observed == pytest.approx(a.mean() - b.mean())
    # The same draws computed the long way: resample example indices, mean over cells of per-cell accuracies.
    generator = np.random.default_rng(1)
    index = generator.integers(0, 200, size=(500, 200))
    slow = np.array([(a[:, i].mean(axis=1) - b[:, i].mean(axis=1)).mean() for i in index])
    assert np.allclose(draws, slow)


def test_stratified_bootstrap_mean_over_cells():
    rng = np.random.default_rng(0)
    cells = [(rng.random(n) < 0.7, rng.random(n) < 0.6) for n in (50, 80, 120)]
    observed, draws = stratified_differences(cells, n_boot=300, seed=2)
    assert observed == pytest.approx(np.mean([a.mean() - b.mean() for a, b in cells]))
    assert draws.shape == (300,) and abs(draws.mean() - observed) < 0.02


def test_bootstrap_statistic_of_mce_against_a_loop():
    """A ratio statistic (mCE over 2 corruptions x 2 severities) resampled jointly over examples."""
    rng = np.random.default_rng(3)
    model = rng.random((4, 150)) < 0.7
    base = rng.random((4, 150)) < 0.5

    def mce(acc_model, acc_base):
        err_m, err_b = 1 - acc_model, 1 - acc_base
        ce = (err_m[:, :2].sum(1) / err_b[:, :2].sum(1) + err_m[:, 2:].sum(1) / err_b[:, 2:].sum(1)) / 2
        return ce

    observed, draws = bootstrap_statistic(mce, model, base, n_boot=200, seed=4)
    assert observed == pytest.approx(float(mce(model.mean(1)[None], base.mean(1)[None])[0]))
    generator = np.random.default_rng(4)
    index = generator.integers(0, 150, size=(200, 150))
    slow = np.array([mce(model[:, i].mean(1)[None], base[:, i].mean(1)[None])[0] for i in index])
    assert np.allclose(draws, slow, atol=1e-6)


def test_compare_one_cell_and_many():
    rng = np.random.default_rng(5)
    a = rng.random(400) < 0.8
    b = np.where(rng.random(400) < 0.5, a, rng.random(400) < 0.5)
    one = compare(a, b)
    assert one.test == "mcnemar" and one.p_value == pytest.approx(mcnemar(a, b).p_value)
    assert one.low <= one.difference <= one.high and one.significant == (one.p_value < 0.05)
    same = compare(a, a)
    assert same.difference == 0 and same.p_value == 1 and not same.significant
    many = compare(np.stack([a, a]), np.stack([b, b]))
    assert many.test == "bootstrap" and many.cells == 2 and many.n == 400
    with pytest.raises(RobustCSCError, match="same shape"):
        compare(a, b[:10])


def test_text():
    assert format_accuracy(50, 100) == "50.0% [40.4, 59.6] (n=100)"
    assert format_difference(0.02, -0.011, 0.05, 0.21) == "+2.0 pts [-1.1, +5.0], p = 0.21, not significant"
    assert format_difference(-0.1, -0.15, -0.05, 0.0004).endswith("p < 0.001, significant")
