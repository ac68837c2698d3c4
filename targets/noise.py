"""When one latency figure is *measurably* slower than another: the one noise rule of the INT8 guard and the prune
stage's latency guard.

A p50 of 0.052 ms against 0.050 ms on a shared host is not "slower", it is the scheduler. A figure counts as slower
only when its p50's 95% interval lies entirely above the other's.

The interval of a median is distribution-free: the order statistics at ranks n/2 ± 0.98·√n, i.e. the quantiles
0.5 ± 0.98/√n. The runner keeps no samples, only quantiles (min, p50, p90, p99), so the quantile function near the
median is read off the lower half -- linear between min (q=0) and p50 (q=0.5) -- and mirrored to the upper side:
half-width = 1.96 · (p50 − min) / √n. The lower half because the upper tail of a latency distribution on a shared
host is the scheduler's preemptions (p99 a hundred times p50 on 2 contended cores), which inflate std and p90 but
not the median; the normal approximation p50 ± 1.96 · 1.2533 · std / √n that std allows is used only for records
without a min, and it called a 4.5x speed-up "no faster" on such a host. Where the record holds repeats
(``repeat.p50``, ``edgepipe bench --repeat``), the interval is widened to the spread of the repeat medians: runs that
disagree with each other are the better measure of the noise on that device.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

Z95 = 1.96
MEDIAN_SE = 1.2533   # sqrt(pi / 2): standard error of the median / standard error of the mean, normal samples


def p50_interval(stats: Mapping[str, Any], repeat_p50s: list[float] | None = None) -> tuple[float, float] | None:
    """(low, high) 95% interval of a p50 in ms from a latency record ``{p50, min, n}`` (or ``{p50, std, n}``); None
    without a p50.

    A record with neither ``min`` nor ``std``, or no ``n`` (older summaries), gets a zero-width interval at its p50,
    so the rule falls back to the plain comparison it replaced rather than hiding a difference."""
    p50 = stats.get("p50")
    if not isinstance(p50, (int, float)) or not math.isfinite(p50):
        return None
    std, n, low_end = stats.get("std"), stats.get("n"), stats.get("min")
    half = 0.0
    if isinstance(n, int) and n > 1:
        if isinstance(low_end, (int, float)) and math.isfinite(low_end) and low_end <= p50:
            half = Z95 * (float(p50) - float(low_end)) / math.sqrt(n)
        elif isinstance(std, (int, float)) and math.isfinite(std):
            half = Z95 * MEDIAN_SE * float(std) / math.sqrt(n)
    low, high = float(p50) - half, float(p50) + half
    p50s = [float(p) for p in (repeat_p50s or []) if isinstance(p, (int, float))]
    if len(p50s) > 1:
        low, high = min(low, *p50s), max(high, *p50s)
    return round(low, 6), round(high, 6)


def clearly_slower(mine: tuple[float, float] | None, theirs: tuple[float, float] | None) -> bool:
    """Slower beyond the measured spread: my whole interval lies above theirs."""
    return mine is not None and theirs is not None and mine[0] > theirs[1]


def clearly_faster(mine: tuple[float, float] | None, theirs: tuple[float, float] | None) -> bool:
    return clearly_slower(theirs, mine)


def record_interval(rec: Mapping[str, Any]) -> tuple[float, float] | None:
    """The p50 interval of a summary/bench artifact record: its ``latency_ms`` and, where present, its repeats."""
    bench = rec.get("bench") if isinstance(rec.get("bench"), Mapping) else {}
    repeat = rec.get("repeat") or (bench or {}).get("repeat") or {}
    stats = rec.get("latency_ms") or {}
    return p50_interval(stats, repeat.get("p50") if isinstance(repeat, Mapping) else None)
