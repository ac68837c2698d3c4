"""``edgepipe history``: past runs from the results store with their headline figures, newest first."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from pipeline.results.rundir import artifact_name, is_usable, metric_info, metric_label, metric_value, pick_best

if TYPE_CHECKING:
    from pipeline.results.store import Store


def history(store: Store, device: str | None = None, recipe: str | None = None, limit: int = 20) -> list[dict]:
    """Past runs, newest first, with their headline figures (best valid artifact, gate, baseline)."""
    from sqlalchemy import select

    from pipeline.results.store_schema import runs

    query = select(runs.c.run_id, runs.c.recipe, runs.c.device, runs.c.status, runs.c.started, runs.c.finished,
                   runs.c.baseline_accuracy, runs.c.gate_passed, runs.c.summary_json)
    if device:
        query = query.where(runs.c.device == device)
    if recipe:
        query = query.where(runs.c.recipe == recipe)
    query = query.order_by(runs.c.started.desc(), runs.c.id.desc()).limit(max(1, int(limit)))
    rows = []
    with store.engine.connect() as conn:
        for r in conn.execute(query).mappings():
            summary = json.loads(r["summary_json"]) if r["summary_json"] else {}
            arts = summary.get("artifacts") or []
            best = _worth_naming(pick_best(arts), arts, summary)
            baseline = metric_value(summary.get("baseline") or {}) if summary else None
            rows.append({
                "run_id": r["run_id"], "recipe": r["recipe"], "device": r["device"], "status": r["status"],
                "started": r["started"], "finished": r["finished"], "baseline_accuracy": r["baseline_accuracy"],
                "baseline_metric": baseline if baseline is not None else r["baseline_accuracy"],
                "gate_passed": r["gate_passed"], "artifacts": len(arts),
                "valid": sum(1 for a in arts if is_usable(a)),
                "best": artifact_name(best) if best else None,
                "best_accuracy": metric_value(best) if best else None,
                "metric": metric_label(summary) if summary else None,
                "best_p50_ms": (best.get("latency_ms") or {}).get("p50") if best else None,
                "best_p90_ms": (best.get("latency_ms") or {}).get("p90") if best else None,
                "best_bytes": best.get("bytes") if best else None,
            })
    return rows


def _worth_naming(best: dict[str, Any] | None, arts: list[dict[str, Any]], summary: dict[str, Any]) -> dict | None:
    """No "best" of a run whose every usable artifact scores 0 on a higher-is-better metric (a broken model or data
    that does not fit it): naming one would read as a recommendation."""
    if best is None or not metric_info(summary)["higher_is_better"]:
        return best
    values = [metric_value(a) for a in arts if is_usable(a)]
    return None if all(v == 0 for v in values) else best


def _fmt(value: Any, kind: str = "") -> str:
    if value is None:
        return "-"
    if kind == "metric":   # 5 significant digits: top-1 0.981, cosine 0.99995, mse 2.3e-05 all keep theirs
        return f"{value:.5g}"
    if kind == "ms":
        return f"{value:.3f}"
    if kind == "gate":
        return "pass" if value else "FAIL"
    return str(value)


def format_history(rows: list[dict]) -> str:
    """A plain aligned text table (what ``edgepipe history`` prints)."""
    if not rows:
        return "no runs recorded yet (edgepipe run ... records them; EDGEPIPE_DB picks the store)"
    cols = [("started", "started", ""), ("recipe", "recipe", ""), ("device", "device", ""),
            ("status", "status", ""), ("gate", "gate_passed", "gate"), ("metric", "metric", ""),
            ("baseline", "baseline_metric", "metric"), ("best", "best", ""), ("value", "best_accuracy", "metric"),
            ("p50 ms", "best_p50_ms", "ms"),
            ("p90 ms", "best_p90_ms", "ms"), ("valid", "valid", ""), ("run id", "run_id", "")]
    table = [[h for h, _, _ in cols]]
    for r in rows:
        cells = [_fmt(r.get(key), kind) for _, key, kind in cols]
        cells[0] = (r.get("started") or "-")[:19].replace("T", " ")
        cells[11] = f"{r.get('valid', 0)}/{r.get('artifacts', 0)}"
        table.append(cells)
    widths = [max(len(row[i]) for row in table) for i in range(len(cols))]
    numeric = {6, 8, 9, 10}
    lines = []
    for row in table:
        cells = [c.rjust(w) if i in numeric else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))]
        lines.append("  ".join(cells).rstrip())
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
