"""netllm.evaluation's statistics on the edge cases: one value has no interval, NaN is no tie."""

from __future__ import annotations

import math

import pytest

from netllm.evaluation import mean_ci95, paired_difference


def test_a_single_value_has_a_mean_but_no_interval() -> None:
    mean, low, high = mean_ci95([0.7])
    assert mean == 0.7 and math.isnan(low) and math.isnan(high)
    assert all(math.isnan(v) for v in mean_ci95([]))
    mean, low, high = mean_ci95([1.0, 2.0, 3.0])
    assert low < mean == 2.0 < high


def test_a_single_pair_has_a_difference_but_no_interval() -> None:
    diff = paired_difference([1.5], [1.0])
    assert (diff.pairs, diff.mean_diff, diff.wins) == (1, 0.5, 1)
    assert math.isnan(diff.ci95_low) and math.isnan(diff.ci95_high)


@pytest.mark.parametrize("values, reference", [
    ([1.0, math.nan, 2.0], [1.0, 1.0, 1.0]),
    ([1.0, 2.0], [math.inf, 1.0]),
    ([float("-inf")], [0.0]),
])
def test_non_finite_values_are_refused_not_counted_as_ties(values, reference) -> None:
    with pytest.raises(ValueError, match="finite"):
        paired_difference(values, reference)
