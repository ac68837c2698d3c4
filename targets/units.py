"""The one rule that turns a metric difference into gate units, and the one reading of the gate's allowed drop.

Fraction metrics (top-1/5, mAP: values in [0, 1]) are compared in points (x100); every other metric (cosine, MSE,
perplexity, a user metric) in its raw units; "worse" follows the metric's direction. A limit written with a percent
sign (``max_metric_drop: "5%"``) is relative instead: the drop is then how much worse the child is in percent of
the parent's value (perplexity 20.0 -> 20.6 is a 3 % drop), whatever the metric's units. The gate, the search, the
INT8 check and the mixed-precision search all call these, so a change of the rule is one change.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

PERCENT = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*%\s*$")


class Relative(float):
    """An allowed drop in percent of the parent's value (``"5%"``): a float (every ``drop <= limit`` comparison and
    ``:g`` format works) that prints and stores as ``"5%"`` (``as_written``)."""

    def __format__(self, spec: str) -> str:
        return format(float(self), spec) + "%"

    def __str__(self) -> str:
        return f"{float(self):g}%"

    __repr__ = __str__

    @property
    def as_written(self) -> str:
        return str(self)


def parse_limit(value: Any) -> float | None:
    """A gate limit as given: a number (gate units), ``"N%"`` (Relative), or None; anything else is None."""
    if isinstance(value, Relative):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        m = PERCENT.match(value)
        if m:
            return Relative(float(m.group(1)))
    return None


def is_relative(limit: Any) -> bool:
    return isinstance(limit, Relative)


def as_written(limit: Any) -> Any:
    """What a summary or a cache key stores for a limit: ``"5%"`` for a relative one (JSON would write a float
    subclass as a bare 5.0 and lose its meaning), the number otherwise."""
    return limit.as_written if isinstance(limit, Relative) else limit

#: Built-in metrics whose values are fractions; a metric record's own ``unit`` wins where it has one.
FRACTION_METRICS = ("accuracy", "top1", "top5", "map50", "map50_95")


def is_fraction(metric: Mapping[str, Any]) -> bool:
    if "unit" in metric:
        return metric.get("unit") == "fraction"
    return metric.get("name", "accuracy") in FRACTION_METRICS


def scale(metric: Mapping[str, Any]) -> float:
    return 100.0 if is_fraction(metric) else 1.0


def drop(parent: float, child: float, metric: Mapping[str, Any], limit: Any = None) -> float:
    """How much worse ``child`` is than ``parent`` in gate units (negative: better); in percent of ``|parent|``
    when ``limit`` is a relative one (``"5%"``), so the figure compares with that limit. Non-finite in, NaN out,
    which no ``drop <= limit`` comparison passes; a relative drop from a parent of 0 is NaN too (no scale)."""
    if not (math.isfinite(parent) and math.isfinite(child)):
        return math.nan
    diff = parent - child if metric.get("higher_is_better", True) else child - parent
    if is_relative(limit) or is_relative(parse_limit(limit)):
        return diff / abs(parent) * 100.0 if parent != 0 else math.nan
    return diff * scale(metric)


def unit_word(metric: Mapping[str, Any], limit: Any = None) -> str:
    """How a drop is written after its number: "%" (relative limit), " points" (fraction metric) or ""."""
    if is_relative(limit) or is_relative(parse_limit(limit)):
        return "%"
    return " points" if is_fraction(metric) else ""


def points(value: float, metric: Mapping[str, Any]) -> float:
    """``value`` in gate units where higher is better (negated for lower-is-better metrics): what the
    mixed-precision search maximises."""
    v = value * scale(metric)
    return v if metric.get("higher_is_better", True) else -v


def max_metric_drop(limits: Any) -> float | None:
    """The allowed drop of a gate given as the recipe's ``Gate``, a stored mapping, or None: ``max_metric_drop``,
    else its classification alias ``max_accuracy_drop``. The one alias rule. A ``"N%"`` string comes back as a
    ``Relative`` limit (pass it to ``drop`` so the drop is relative too)."""
    if limits is None:
        return None
    get = limits.get if isinstance(limits, Mapping) else (lambda k: getattr(limits, k, None))
    for key in ("max_metric_drop", "max_accuracy_drop"):
        value = parse_limit(get(key))
        if value is not None:
            return value
    return None


def within(drop_value: float | None, limit: float | None, eps: float = 1e-9) -> bool:
    """A drop meets a limit (exactly at the limit passes; no limit always passes; a NaN drop never does)."""
    if limit is None:
        return True
    return drop_value is not None and drop_value <= limit + eps
