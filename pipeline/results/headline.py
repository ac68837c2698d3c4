"""The headline: the shipped artifact against the original model as the user had it, on the same device.

"3.4x faster, 4.1x smaller, top-1 -0.3 pt" is the one sentence a user wants first, so it is computed here once and
every place that shows it -- the console table, the report's overview, ``summary.json`` (``headline``), the release
line and the model card -- reads it from this module. The original is the recipe's untouched model exported to FP32
ONNX and measured on the device by the same runner (summary.json ``original``, pipeline/phases/original.py); the
shipped artifact is whatever the release picks on that device (``rundir.pick_best``, called, not copied).
"""

from __future__ import annotations

from typing import Any

from pipeline.results.rundir import artifact_name, latency, metric_label, metric_value, pick_best
from targets import units
from targets.noise import clearly_faster, clearly_slower, record_interval


def headline(summary: dict[str, Any], chosen: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``headline`` object of one device's summary: original vs chosen artifact, speed-up (original p50 / chosen
    p50), size ratio (original bytes / chosen bytes), metric drop in the gate's units (targets/units.py; negative:
    better) and ``text``, the sentence itself. ``chosen`` defaults to the release's pick; without an original or a
    pick, ``text`` says why and the figures are absent."""
    device = str(summary.get("device", "?"))
    original = summary.get("original") or {}
    chosen = chosen if chosen is not None else pick_best(summary.get("artifacts") or [])
    out: dict[str, Any] = {"device": device}
    if not original or latency(original, "p50") is None or original.get("error"):
        why = original.get("error") or "the original model was not measured on this device"
        out["text"] = f"no headline on {device}: {why}"
        return out
    if chosen is None:
        out["text"] = f"no headline on {device}: no valid, measured artifact to ship"
        return out
    o_p50, c_p50 = latency(original, "p50"), latency(chosen, "p50")
    out["original"] = _side(original, "original")
    out["chosen"] = _side(chosen, artifact_name(chosen))
    out["speedup"] = round(o_p50 / c_p50, 3) if o_p50 and c_p50 else None
    # faster beyond the measured spread of both figures (targets/noise.py), not just a ratio above 1
    mine, theirs = record_interval(chosen), record_interval(original)
    out["faster"], out["slower"] = clearly_faster(mine, theirs), clearly_slower(mine, theirs)
    o_bytes, c_bytes = original.get("bytes"), chosen.get("bytes")
    out["size_ratio"] = round(o_bytes / c_bytes, 3) if isinstance(o_bytes, int) and isinstance(c_bytes, int) \
        and c_bytes else None
    metric = original.get("metric") or (summary.get("baseline") or {}).get("metric") or {"name": "accuracy"}
    o_val, c_val = metric_value(original), metric_value(chosen)
    out["metric"] = metric.get("name", "accuracy")
    limit = units.max_metric_drop(summary.get("gate"))   # a relative gate ("5%") counts the drop in percent
    out["metric_drop"] = round(units.drop(o_val, c_val, metric, limit), 4) if o_val is not None \
        and c_val is not None else None
    out["metric_unit"] = "percent" if units.is_relative(limit) else "points" if units.is_fraction(metric) else "raw"
    out["text"] = _sentence(out, metric_label(summary))
    if (chosen.get("gate") or {}).get("passed") is False:   # nothing passed: the pick fell back to the best metric
        out["text"] = (f"no artifact meets the gate on {device}; the best, "
                       + out["text"].removeprefix("shipped "))
    return out


def _side(rec: dict[str, Any], name: str) -> dict[str, Any]:
    return {"name": name, "backend": rec.get("backend"), "precision": rec.get("precision"),
            "p50_ms": latency(rec, "p50"), "bytes": rec.get("bytes"), "metric": metric_value(rec)}


def _sentence(h: dict[str, Any], label: str) -> str:
    """``shipped tflite-int8: 3.4x faster, 4.1x smaller than the original, top-1 -0.3 pt (local)``."""
    speed = h.get("speedup")
    if speed is None:
        fast = "speed not measured"
    elif h.get("faster"):
        fast = f"{speed:.1f}× faster"
    elif h.get("slower"):
        fast = f"{1 / speed:.1f}× SLOWER"
    else:
        fast = f"no faster ({speed:.2f}×)"
    size = h.get("size_ratio")
    if size is None:
        small = "size unknown"
    elif 0.995 <= size <= 1.005:
        small = "the same size"
    else:
        small = f"{size:.1f}× smaller" if size > 1 else f"{1 / size:.1f}× bigger"
    against = "as the original" if small == "the same size" else "than the original"
    drop = h.get("metric_drop")
    if drop is None:
        change = f"{label} not measured"
    else:
        points = h.get("metric_unit") == "points"   # the value's change as printed: top-1 -0.3 pt, mse +0.002
        delta = (h["chosen"]["metric"] - h["original"]["metric"]) * (100.0 if points else 1.0)
        change = f"{label} {_signed(delta, points)}{' pt' if points else ''}"
    return f"shipped {h['chosen']['name']}: {fast}, {small} {against}, {change} ({h['device']})"


def _signed(value: float, points: bool = True) -> str:
    """-0.3 with a real minus sign, +0.2, and ±0.0 for a change that rounds to nothing (points: one decimal; raw
    units such as cosine or MSE: four significant digits)."""
    if points and abs(value) < 0.05 or value == 0:
        return "±0.0"
    return f"{'+' if value > 0 else '−'}" + (f"{abs(value):.1f}" if points else f"{abs(value):.4g}")
