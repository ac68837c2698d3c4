"""targets/noise.py: a p50 is slower than another only when their 95% intervals do not overlap."""

from __future__ import annotations

import math

import pytest

from targets.noise import clearly_faster, clearly_slower, p50_interval


def test_p50_interval_is_the_normal_approximation_of_the_median() -> None:
    low, high = p50_interval({"p50": 1.0, "std": 0.2, "n": 400})
    half = 1.96 * 1.2533 * 0.2 / math.sqrt(400)
    assert (low, high) == (pytest.approx(1.0 - half), pytest.approx(1.0 + half))


def test_p50_interval_is_a_point_without_spread_and_none_without_a_p50() -> None:
    assert p50_interval({"p50": 0.5}) == (0.5, 0.5)
    assert p50_interval({"p50": 0.5, "std": 0.1, "n": 1}) == (0.5, 0.5)
    assert p50_interval({}) is None and p50_interval({"p50": float("nan")}) is None


@pytest.mark.parametrize(("mine", "theirs", "slower", "faster"), [
    ((1.2, 1.3), (1.0, 1.1), True, False),      # disjoint, above
    ((1.05, 1.3), (1.0, 1.1), False, False),    # overlapping: neither
    ((0.8, 0.9), (1.0, 1.1), False, True),      # disjoint, below
    (None, (1.0, 1.1), False, False),           # not measured: no verdict
])
def test_clearly_slower_and_faster_need_disjoint_intervals(mine, theirs, slower: bool, faster: bool) -> None:
    assert clearly_slower(mine, theirs) is slower
    assert clearly_faster(mine, theirs) is faster
