"""How a search reads the task's metric and the gate: one place, so a change of the metric contract touches only this.

Records with a ``metric`` object (DESIGN §6: ``{"name", "value", "higher_is_better"}``) are read from it; older
records (top-1 only) from ``accuracy``. The gate's allowed drop is ``max_metric_drop`` where the recipe has it, else
``max_accuracy_drop``.
"""

from __future__ import annotations

from typing import Any

FRACTION_METRICS = ("accuracy", "top1", "top5", "map50", "map50_95")


def metric_value(rec: dict[str, Any]) -> tuple[float | None, bool]:
    """(value, higher_is_better) of a baseline, stage or artifact record: the one place a search reads the metric.

    A record with a ``metric`` object (DESIGN §6, non-top-1 tasks) is read from it; otherwise top-1 ``accuracy``."""
    m = rec.get("metric")
    if isinstance(m, dict) and isinstance(m.get("value"), (int, float)):
        return float(m["value"]), bool(m.get("higher_is_better", True))
    acc = rec.get("accuracy")
    return (float(acc) if isinstance(acc, (int, float)) else None), True


def metric_drop(baseline: dict[str, Any], rec: dict[str, Any]) -> float | None:
    """How far below the original model a record is, in the gate's units (points x100 for fraction metrics)."""
    base, higher = metric_value(baseline)
    value, _ = metric_value(rec)
    if base is None or value is None:
        return None
    m = baseline.get("metric") or {}
    fraction = m.get("unit") == "fraction" if "unit" in m else m.get("name", "accuracy") in FRACTION_METRICS
    scale = 100.0 if fraction else 1.0
    return (base - value) * scale if higher else (value - base) * scale


def max_drop(gate: Any) -> float | None:
    """The gate's allowed metric drop (``max_metric_drop`` where the recipe has it, else ``max_accuracy_drop``)."""
    for key in ("max_metric_drop", "max_accuracy_drop"):
        value = getattr(gate, key, None)
        if isinstance(value, (int, float)):
            return float(value)
    return None
