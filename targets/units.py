"""The one rule that turns a metric difference into gate units, and the one reading of the gate's allowed drop.

Fraction metrics (top-1/5, mAP: values in [0, 1]) are compared in points (x100); every other metric (cosine, MSE,
a user metric) in its raw units; "worse" follows the metric's direction. The gate, the search, the INT8 check and the
mixed-precision search all call these, so a change of the rule is one change.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

#: Built-in metrics whose values are fractions; a metric record's own ``unit`` wins where it has one.
FRACTION_METRICS = ("accuracy", "top1", "top5", "map50", "map50_95")


def is_fraction(metric: Mapping[str, Any]) -> bool:
    if "unit" in metric:
        return metric.get("unit") == "fraction"
    return metric.get("name", "accuracy") in FRACTION_METRICS


def scale(metric: Mapping[str, Any]) -> float:
    return 100.0 if is_fraction(metric) else 1.0


def drop(parent: float, child: float, metric: Mapping[str, Any]) -> float:
    """How much worse ``child`` is than ``parent`` in gate units (negative: better). Non-finite in, NaN out, which
    no ``drop <= limit`` comparison passes."""
    if not (math.isfinite(parent) and math.isfinite(child)):
        return math.nan
    diff = parent - child if metric.get("higher_is_better", True) else child - parent
    return diff * scale(metric)


def points(value: float, metric: Mapping[str, Any]) -> float:
    """``value`` in gate units where higher is better (negated for lower-is-better metrics): what the
    mixed-precision search maximises."""
    v = value * scale(metric)
    return v if metric.get("higher_is_better", True) else -v


def max_metric_drop(limits: Any) -> float | None:
    """The allowed drop of a gate given as the recipe's ``Gate``, a stored mapping, or None: ``max_metric_drop``,
    else its classification alias ``max_accuracy_drop``. The one alias rule."""
    if limits is None:
        return None
    get = limits.get if isinstance(limits, Mapping) else (lambda k: getattr(limits, k, None))
    for key in ("max_metric_drop", "max_accuracy_drop"):
        value = get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    return None


def within(drop_value: float | None, limit: float | None, eps: float = 1e-9) -> bool:
    """A drop meets a limit (exactly at the limit passes; no limit always passes; a NaN drop never does)."""
    if limit is None:
        return True
    return drop_value is not None and drop_value <= limit + eps
