"""targets/noise.py: a p50 is slower than another only when their 95% intervals do not overlap."""

from __future__ import annotations

import math

import pytest

from targets.noise import clearly_faster, clearly_slower, p50_interval


def test_p50_interval_without_a_min_is_the_normal_approximation_of_the_median() -> None:
    low, high = p50_interval({"p50": 1.0, "std": 0.2, "n": 400})
    half = 1.96 * 1.2533 * 0.2 / math.sqrt(400)
    assert (low, high) == (pytest.approx(1.0 - half), pytest.approx(1.0 + half))


def test_p50_interval_reads_the_lower_half_so_preemption_tails_do_not_hide_a_real_speedup() -> None:
    """The demo's original on 2 contended cores (load 6): p99 30x its p50, std 7x. The std-based interval (±0.38
    ms) would call the 4.5x faster artifact "no faster"; the lower half's spread keeps the medians apart."""
    original = {"p50": 0.5514, "p90": 8.7831, "p99": 16.2331, "std": 4.0799, "min": 0.4608, "n": 450}
    shipped = {"p50": 0.1221, "p90": 0.2005, "p99": 13.4702, "std": 2.3956, "min": 0.0942, "n": 1703}
    lo, hi = p50_interval(original)
    assert (lo, hi) == (pytest.approx(0.5514 - 1.96 * 0.0906 / math.sqrt(450), abs=1e-6),
                        pytest.approx(0.5514 + 1.96 * 0.0906 / math.sqrt(450), abs=1e-6))
    assert clearly_faster(p50_interval(shipped), (lo, hi))
    std_only = {k: v for k, v in original.items() if k != "min"}
    assert not clearly_faster(p50_interval({k: v for k, v in shipped.items() if k != "min"}), p50_interval(std_only))


def test_two_medians_a_hair_apart_overlap_on_a_noisy_host() -> None:
    """onnx-int8 vs onnx-fp32 of the same run: 0.1221 vs 0.1230 ms is inside either interval."""
    int8 = {"p50": 0.1221, "min": 0.0942, "n": 1703}
    fp32 = {"p50": 0.1230, "min": 0.1146, "n": 1633}
    assert not clearly_slower(p50_interval(fp32), p50_interval(int8))
    assert not clearly_faster(p50_interval(int8), p50_interval(fp32))


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
