"""The console table of one device's summary: stages, artifacts, the INT8 guard's flags, the gate in the metric's
units. Split from the orchestrator: it reads only a summary record."""

from __future__ import annotations

from typing import Any


def format_table(summary: dict[str, Any]) -> str:
    """The table, ending with the headline (the shipped artifact against the original), the line to read first."""
    from pipeline.results.headline import headline
    from pipeline.results.rundir import metric_label, metric_value

    base = summary["baseline"]
    name = metric_label(summary)
    lines = [f"{summary['recipe']} on {summary['device']}  (original: {name} {metric_value(base):.4f}, "
             f"{base['params']:,} params, {base['macs']:,} MACs)"]
    for st in summary["stages"]:
        value = metric_value(st)
        lines.append(f"  stage {st['name']:<9} {name} {float('nan') if value is None else value:.4f}  "
                     f"params {st.get('params', 0):>9,}  MACs {st.get('macs', 0):>11,}  {st.get('seconds', 0):.1f}s"
                     + (" (cached)" if st.get("cached") else ""))
    header = f"  {'artifact':<15} {name[:8]:>8} {'p50 ms':>8} {'p90 ms':>8} {'n':>6} {'size':>10}  valid"
    lines += [header, "  " + "-" * (len(header) - 2)]
    for r in summary["artifacts"]:
        lat = r.get("latency_ms") or {}
        acc = metric_value(r)
        size = r.get("bytes")
        lines.append(f"  {r['name']:<15} {'-' if acc is None else f'{acc:.4f}':>8} "
                     f"{lat.get('p50', '-'):>8} {lat.get('p90', '-'):>8} {lat.get('n', '-'):>6} "
                     f"{'-' if size is None else f'{size / 1024:.1f} KiB':>10}  "
                     f"{'yes' if r.get('valid') else 'NO: ' + '; '.join(r.get('invalid_reasons', []))[:80]}")
    for r in summary["artifacts"]:
        lines += _notes(r)
    original = summary.get("original") or {}
    if original.get("latency_ms"):
        lat = original["latency_ms"]
        lines.append(f"  original (FP32 ONNX of the untouched model): {name} {metric_value(original) or 0:.4f}, "
                     f"p50 {lat.get('p50')} ms, p90 {lat.get('p90')} ms, "
                     f"{(original.get('bytes') or 0) / 1024:.1f} KiB")
    gate = summary["gate"]
    if not any(r.get("latency_ms") for r in summary["artifacts"]):  # a verdict on figures that do not exist
        lines.append(f"  gate: not measured (no artifact was benchmarked on {summary['device']})")
    else:
        lines.append(f"  gate: {'passed' if gate['passed'] else 'FAILED'} (max {name} drop "
                     f"{gate.get('max_metric_drop', gate.get('max_accuracy_drop'))}"
                     f"{' points' if (base.get('metric') or {}).get('unit', 'fraction') == 'fraction' else ''})")
    lines.append(headline(summary)["text"])
    return "\n".join(lines)


def _notes(rec: dict[str, Any]) -> list[str]:
    """Lines under the table for one artifact: the INT8 guard's flag and the layers mixed precision kept float."""
    out = []
    guard = rec.get("int8_guard") or {}
    if guard.get("flagged"):
        out.append(f"  ! {guard['message']}")
    elif guard.get("note"):   # inside the noise: plain text, not a warning
        out.append(f"  {guard['note']}")
    mp = (rec.get("metadata") or {}).get("mixed_precision")
    if mp:
        out.append(f"  {rec['name']}: kept in float by auto_keep_float: {', '.join(mp.get('reverted') or []) or 'none'}"
                   f" ({mp['metric']} drop {mp.get('drop', float('nan')):.2f} pt vs FP32 parent, limit "
                   f"{mp['max_drop']:g})")
    return out
