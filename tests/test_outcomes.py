"""Per-example outcomes: compact encodings read back exactly; alignment and the pointwise worst case."""

import json

import numpy as np
import pytest

from robust_csc.errors import RobustCSCError
from robust_csc.evaluation.outcomes import Outcomes, combine_worst


@pytest.mark.parametrize(
    "index, kind",
    [
        (np.arange(10_000), "start"),  # the first n test images
        (np.arange(37, 1037), "start"),
        (np.sort(np.random.default_rng(0).permutation(10_000)[:5000]), "mask"),  # a tuning or reporting half
        (np.random.default_rng(1).permutation(5000)[:300], "int64"),  # any order
        (np.array([3, 10**9]), "int64"),  # sparse: a mask would be huge
        (np.zeros(0, dtype=np.int64), "start"),
    ],
)
def test_round_trip_of_every_index_encoding(index, kind):
    rng = np.random.default_rng(2)
    correct = rng.random(index.size) < 0.7
    outcomes = Outcomes(index, correct)
    text = outcomes.to_json()
    assert kind in json.loads(text)["index"]
    back = Outcomes.from_json(text)
    assert np.array_equal(back.index, index) and np.array_equal(back.correct, correct)
    assert back.n == index.size and back.count == int(correct.sum())


def test_ten_thousand_examples_take_under_two_kilobytes():
    outcomes = Outcomes.first(np.random.default_rng(0).random(10_000) < 0.5)
    assert len(outcomes.to_json()) < 2000


@pytest.mark.parametrize("text", ["{", "[]", '{"n": 3, "bits": "!!", "index": {"start": 0, "stop": 3}}',
                                  '{"n": 3, "bits": "AA==", "index": {"start": 0, "stop": 4}}'])
def test_damaged_records_are_one_clear_error(text):
    with pytest.raises(RobustCSCError, match="unreadable per-example outcomes"):
        Outcomes.from_json(text)


def test_bad_arrays_are_refused():
    with pytest.raises(RobustCSCError, match="repeat"):
        Outcomes([1, 1], [True, False])
    with pytest.raises(RobustCSCError, match="one flag per example"):
        Outcomes([0, 1], [True])


def test_alignment_reorders_and_refuses_other_examples():
    a = Outcomes([0, 1, 2, 3], [True, False, True, False])
    b = Outcomes([3, 2, 1, 0], [True, True, False, False])
    first, second = a.aligned(b)
    assert first.tolist() == [True, False, True, False]
    assert second.tolist() == [False, False, True, True]  # b's flags of examples 0, 1, 2, 3
    with pytest.raises(RobustCSCError, match="different examples"):
        a.aligned(Outcomes([0, 1, 2, 4], [True] * 4))


def test_the_worst_case_is_the_pointwise_and():
    a = Outcomes([0, 1, 2, 3], [True, True, False, True])
    b = Outcomes([3, 2, 1, 0], [False, True, True, True])
    worst = combine_worst([a, b])
    assert worst.index.tolist() == [0, 1, 2, 3] and worst.correct.tolist() == [True, True, False, False]
