"""Run folders -> one self-contained HTML report (tables, plots, environment, run-to-run changes).

Self-contained means it opens with no network: plots are inline base64 PNGs (pipeline/plots.py), the CSS is inline,
there is no script. Runs are grouped per device; within a device, consecutive runs of the same recipe are compared
artifact by artifact and a p50 latency worse by more than ``regression_threshold`` (default 10%) is flagged.
"""

from __future__ import annotations

import html
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pipeline.results import plots
from pipeline.results.gate import artifact_verdicts
from pipeline.results.generation import any_generation, describe, generation
from pipeline.results.headline import headline
from pipeline.results.rundir import (
    artifact_name,
    find_run_dirs,
    human_bytes,
    is_usable,
    latency,
    load_summary,
    metric_info,
    metric_label,
    metric_value,
    parse_time,
    pick_best,
)
from targets.jsonio import atomic_write_bytes

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222;max-width:1400px}
h1{margin-bottom:4px} h2{border-bottom:2px solid #444;padding-bottom:4px;margin-top:36px} h3{margin-top:28px}
table{border-collapse:collapse;margin:8px 0 16px;font-size:13px} th,td{border:1px solid #ccc;padding:4px 8px}
td.n,td:first-child{white-space:nowrap}
th{background:#f2f2f2;text-align:left} td.n{text-align:right;font-variant-numeric:tabular-nums}
.ok{color:#1a7f37;font-weight:600} .bad{color:#cf222e;font-weight:600} .muted{color:#777;font-size:12px}
.plots{display:flex;flex-wrap:wrap;gap:12px;align-items:flex-start} .plots img{border:1px solid #ddd;max-width:100%}
.regression{background:#ffebe9} .pick{background:#eef6ff} code{font-size:12px} .headline{font-size:18px;margin:6px 0}
"""


def _e(value: Any) -> str:
    return html.escape("-" if value is None else str(value))


def _num(value: Any, digits: int = 3) -> str:
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) else "-"


def _verdict(passed: Any) -> str:
    if passed is None:
        return '<span class="muted">-</span>'
    return '<span class="ok">pass</span>' if passed else '<span class="bad">FAIL</span>'


def _table(headers: list[str], rows: list[list[str]], numeric: set[int] = frozenset(),
           row_class: list[str] | None = None) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = []
    for i, row in enumerate(rows):
        cls = f' class="{row_class[i]}"' if row_class and row_class[i] else ""
        cells = "".join(f'<td class="n">{c}</td>' if j in numeric else f"<td>{c}</td>" for j, c in enumerate(row))
        body.append(f"<tr{cls}>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _artifact_table(summary: dict[str, Any]) -> str:
    best = pick_best(summary.get("artifacts") or [])
    verdicts = artifact_verdicts(summary)
    rows, classes = [], []
    for a in summary.get("artifacts") or []:
        lat = a.get("latency_ms") or {}
        reasons = (a.get("bench") or {}).get("invalid_reasons") or a.get("invalid_reasons") or []
        if a.get("error"):
            valid = f'<span class="bad">failed</span>: {_e(a["error"])}'
        elif a.get("valid"):
            valid = '<span class="ok">valid</span>'
        else:
            valid = '<span class="bad">invalid</span>' + (f": {_e('; '.join(reasons))}" if reasons else "")
        gate = verdicts.get(artifact_name(a)) or {}
        shown = [] if a.get("error") else gate.get("failures") or []  # an export error is already in "valid"
        gate_cell = _verdict(gate.get("passed")) + "".join(f"<br><span class='muted'>{_e(f)}</span>" for f in shown)
        slow = " ⚠ slower than fp32" if (a.get("int8_guard") or {}).get("slower") else ""
        rows.append([_e(artifact_name(a)) + (" ★" if a is best else "") + slow, _e(a.get("backend")),
                     _e(a.get("precision")),
                     human_bytes(a.get("bytes")), _num(metric_value(a)), _num(lat.get("p50")),
                     _num(lat.get("p90")), _num(lat.get("p99")), _e(lat.get("n")), valid, gate_cell])
        classes.append("pick" if a is best else "")
    return _table(["artifact", "backend", "precision", "size", metric_label(summary), "p50 ms", "p90 ms", "p99 ms", "n",
                   "valid", "gate"], rows, {3, 4, 5, 6, 7, 8}, classes)


def _int8_section(summary: dict[str, Any]) -> str:
    """The INT8 guard's flags (slower or bigger than the FP32 parent, with the ops left in float), the INT8 scheme
    each exporter applied and, per artifact made with auto_keep_float, the layer groups kept in float and the
    sensitivity ranking they came from."""
    arts = summary.get("artifacts") or []
    flags = [(a.get("int8_guard") or {}) for a in arts]
    out = [f'<p class="bad">⚠ {_e(g["message"])}</p>' for g in flags if g.get("flagged")]
    out += [f'<p class="muted">{_e(g["note"])}</p>' for g in flags if g.get("note") and not g.get("flagged")]
    rows = []
    for a in arts:
        mp = (a.get("metadata") or {}).get("mixed_precision")
        if not mp:
            continue
        ranking = ", ".join(f"{r['group']} {r['gain']:+.1f}" for r in (mp.get("ranking") or [])[:8])
        rows.append([_e(artifact_name(a)), _e(", ".join(mp.get("reverted") or []) or "none"),
                     _e(f"{mp.get('int8_score', 0):.2f} → {mp.get('final_score', 0):.2f} (FP32 "
                        f"{mp.get('fp32_score', 0):.2f})"), _num(mp.get("drop"), 2), _e(mp.get("max_drop")),
                     _e(mp.get("metric")), _e(mp.get("samples")), _e(ranking or "-")])
    schemes = [[_e(artifact_name(a)), _e(s.get("scheme")), _e(s.get("requested")), _e(s.get("scheme_why") or "-")]
               for a in arts for s in [(a.get("metadata") or {}).get("int8") or {}] if s.get("scheme")]
    if schemes:   # which INT8 scheme each exporter applied (ExportConfig.int8_scheme; "auto" resolved per model)
        out.append("<h4>INT8 scheme</h4>" + _table(["artifact", "scheme", "asked", "why"], schemes, set()))
    if rows:
        out.append("<h4>Mixed precision (auto_keep_float)</h4>" + _table(
            ["artifact", "kept in float", "metric all-INT8 → chosen", "drop pt", "max drop", "metric", "samples",
             "sensitivity (pt gained when alone float)"], rows, {3}))
    return "".join(out)


def _generation_section(summary: dict[str, Any]) -> str:
    """A language model's generation figures per artifact, as the runner measured them on the device."""
    rows = []
    for a in summary.get("artifacts") or []:
        rec = generation(a)
        if rec is None:
            continue
        cells = describe(rec)
        rows.append([_e(artifact_name(a)), _e(cells["prompt"]), _e(cells["ttft"]), _e(cells["tps"]), _e(cells["n"]),
                     _e(cells["rss"]), _e(cells["valid"]), _e(cells["greedy"])])
    if not rows:
        return ""
    return ("<h4>Generation (greedy, batch 1, KV cache)</h4>" + _table(
        ["artifact", "prompt + new", "time to first token p50 / p90 ms", "decode tokens/s p50 / p90", "n",
         "peak RSS MiB", "valid", "greedy tokens"], rows, {2, 3, 5}))


def _state(st: dict[str, Any] | None) -> str:
    """What the device reported about itself; fields it could not read are left out rather than shown as blanks."""
    if not st:
        return "not reported"
    throttled = st.get("throttled")
    parts = [text for value, text in (
        (st.get("temp_c"), f"temp {st.get('temp_c')} °C"), (st.get("governor"), f"governor {st.get('governor')}"),
        (st.get("cpu_mhz"), f"cpu {st.get('cpu_mhz')} MHz"),
        (st.get("power_mode"), f"power mode {st.get('power_mode')}"),
        (throttled, f"throttled {throttled.get('raw') if throttled else ''}"),
        (st.get("loadavg"), "load " + " ".join(f"{x:.2f}" for x in st.get("loadavg") or []))) if value is not None]
    if throttled is None and st.get("temp_c") is not None:
        parts.append("throttling not reported")
    return _e(", ".join(parts) or "not reported (no thermal, clock or governor readings on this device)")


def _environment(summary: dict[str, Any]) -> str:
    tools = summary.get("tool_versions") or {}
    out = ["<p><b>Build host tools:</b> " + (", ".join(f"{_e(k)} {_e(v)}" for k, v in sorted(tools.items())) or "-")
           + f" · edgepipe {_e(summary.get('edgepipe_version'))}</p>"]
    rows = []
    for a in summary.get("artifacts") or []:
        bench = a.get("bench") or {}
        if not bench:
            continue
        env = bench.get("environment") or {}
        state = bench.get("state") or {}
        rows.append([_e(artifact_name(a)), _e(bench.get("runtime")), _e(bench.get("threads")),
                     _e(", ".join(bench.get("providers") or [])),
                     _e(f"{env.get('machine', '-')} · {env.get('os', '-')} · Python {env.get('python', '-')} · "
                        f"numpy {env.get('numpy', '-')} · {env.get('cpus', '-')} CPUs"),
                     _state(state.get("before")), _state(state.get("after"))])
    if rows:
        out.append(_table(["artifact", "runtime", "threads", "providers", "device", "state before", "state after"],
                          rows))
    return "".join(out)


def compare_runs(old: dict[str, Any], new: dict[str, Any], threshold: float = 0.10) -> dict[str, Any]:
    """What changed per artifact between two runs; ``regressions`` names artifacts whose p50 got worse by more than
    ``threshold`` (a fraction: 0.10 = 10%)."""
    before = {artifact_name(a): a for a in old.get("artifacts") or []}
    after = {artifact_name(a): a for a in new.get("artifacts") or []}
    rows, regressions = [], []
    for name in sorted(set(before) | set(after)):
        a, b = before.get(name), after.get(name)
        row: dict[str, Any] = {"artifact": name, "status": "same"}
        if a is None or b is None:
            row["status"] = "added" if a is None else "removed"
        else:
            for key, fa, fb in (("accuracy", a.get("accuracy"), b.get("accuracy")),
                                ("p50", latency(a, "p50"), latency(b, "p50")),
                                ("p90", latency(a, "p90"), latency(b, "p90")),
                                ("bytes", a.get("bytes"), b.get("bytes"))):
                row[key] = (fa, fb)
            p50a, p50b = row["p50"]
            if p50a and p50b and (p50b - p50a) / p50a > threshold:
                row["status"] = "regression"
                regressions.append(name)
        rows.append(row)
    return {"old": old.get("run_id"), "new": new.get("run_id"), "threshold": threshold, "rows": rows,
            "regressions": regressions}


def _delta(pair: tuple[Any, Any] | None, kind: str) -> str:
    if not pair:
        return "-"
    a, b = pair
    if not isinstance(a, (int, float)) or not isinstance(b, (int, float)):
        return f"{_num(a)} → {_num(b)}"
    if kind == "acc":
        return f"{a:.3f} → {b:.3f} ({(b - a) * 100:+.1f} pt)"
    pct = f" ({(b - a) / a * 100:+.1f}%)" if a else ""
    if kind == "bytes":
        return f"{human_bytes(a)} → {human_bytes(b)}{pct}"
    return f"{a:.3f} → {b:.3f}{pct}"


def _comparison(cmp: dict[str, Any]) -> str:
    rows, classes = [], []
    for r in cmp["rows"]:
        status = {"regression": '<span class="bad">p50 regression</span>', "added": "added", "removed": "removed",
                  "same": '<span class="ok">ok</span>'}[r["status"]]
        rows.append([_e(r["artifact"]), _delta(r.get("accuracy"), "acc"), _delta(r.get("p50"), "ms"),
                     _delta(r.get("p90"), "ms"), _delta(r.get("bytes"), "bytes"), status])
        classes.append("regression" if r["status"] == "regression" else "")
    flag = (f'<p class="bad">Latency regression (p50 worse by more than {cmp["threshold"]:.0%}): '
            f'{_e(", ".join(cmp["regressions"]))}</p>') if cmp["regressions"] else \
        f'<p class="ok">No p50 latency regression beyond {cmp["threshold"]:.0%}.</p>'
    return (f"<h3>Changes from <code>{_e(cmp['old'])}</code> to <code>{_e(cmp['new'])}</code></h3>{flag}"
            + _table(["artifact", "accuracy", "p50 ms", "p90 ms", "size", "verdict"], rows, set(), classes))


def _run_section(summary: dict[str, Any], run_dir: Path) -> str:
    title = f"{summary['recipe']} · {summary['device']} · {summary['run_id']}"
    gate = summary.get("gate") or {}
    limits = ", ".join(f"{k} {gate[k]}" for k in ("max_metric_drop", "max_latency_ms", "max_bytes")
                       if gate.get(k) is not None)
    base = summary.get("baseline") or {}
    name = metric_label(summary)
    head = (f"<h3>Run <code>{_e(summary['run_id'])}</code> — recipe {_e(summary['recipe'])}</h3>"
            f"<p class='headline'><b>{_e(headline(summary)['text'])}</b></p>"
            f"<p>status <b>{_e(summary.get('status', 'complete'))}</b> · started {_e(summary.get('started'))} · "
            f"finished {_e(summary.get('finished'))} · folder <code>{_e(run_dir)}</code><br>"
            f"original model: {_e(name)} {_num(metric_value(base))}, {_e(base.get('params'))} params, "
            f"{_e(base.get('macs'))} MACs · gate {_verdict(gate.get('passed'))}"
            f"{' (' + _e(limits) + ')' if limits else ''}</p>")
    failures = "".join(f"<li>{_e(f)}</li>" for f in gate.get("failures") or [])
    if failures:
        head += f'<ul class="bad">{failures}</ul>'
    arts = summary.get("artifacts") or []
    imgs = [(plots.accuracy_vs_latency(arts, metric_value(base), f"{name} vs p90 latency — {summary['device']}", name,
                                       bool(metric_info(summary)["higher_is_better"])),
             f"{name} versus p90 latency with the Pareto front"),
            (plots.size_bars(arts, "artifact size"), "size per artifact"),
            (plots.stage_trail(summary, "stage-by-stage trail"), f"params, MACs and {name} per stage")]
    if any_generation(arts):
        imgs.insert(1, (plots.tokens_vs_metric(arts, metric_value(base), f"{name} vs decode tokens/s — "
                                               f"{summary['device']}", name,
                                               bool(metric_info(summary)["higher_is_better"])),
                        f"{name} versus decode tokens per second"))
    figures = "".join(f'<img src="{src}" alt="{_e(alt)}">' for src, alt in imgs)
    usable = sum(1 for a in arts if is_usable(a))
    anchor = f"{summary['run_id']}-{summary['device']}"
    return (f'<section class="run" id="{_e(anchor)}" title="{_e(title)}">{head}'
            f"<p class='muted'>{usable} of {len(arts)} artifacts valid and measured; ★ = best ({_e(name)}, "
            f"then lowest p90)</p>{_artifact_table(summary)}{_int8_section(summary)}"
            f"{_generation_section(summary)}<div class='plots'>{figures}</div>"
            f"<h4>Environment</h4>{_environment(summary)}</section>")


def _headlines(devices: dict[str, list[tuple[Path, dict[str, Any]]]]) -> str:
    """The report's first lines: per device, the latest run's shipped artifact against the original model."""
    lines = []
    for device in sorted(devices):
        latest = max(devices[device], key=lambda rs: (rs[1].get("started") or "", rs[1]["run_id"]))[1]
        lines.append(f'<p class="headline"><b>{_e(headline(latest)["text"])}</b></p>')
    return "".join(lines)


def _overview(devices: dict[str, list[tuple[Path, dict[str, Any]]]]) -> str:
    """One line per run: where to look first."""
    rows = []
    for device in sorted(devices):
        for _, s in devices[device]:
            best = pick_best(s.get("artifacts") or [])
            lat = (best or {}).get("latency_ms") or {}
            rows.append([f"<a href='#device-{_e(device)}'>{_e(device)}</a>", _e(s["recipe"]),
                         f"<a href='#{_e(s['run_id'])}-{_e(device)}'>{_e(s['run_id'])}</a>",
                         _e(s.get("status", "complete")), _verdict((s.get("gate") or {}).get("passed")),
                         _e(artifact_name(best)) if best else "-",
                         _num(metric_value(best) if best else None) + (f" {_e(metric_label(s))}" if best else ""),
                         _num(lat.get("p50")), _num(lat.get("p90")), human_bytes((best or {}).get("bytes")),
                         _e(headline(s)["text"])])
    return "<h2>Overview</h2>" + _table(["device", "recipe", "run", "status", "gate", "best artifact", "metric",
                                         "p50 ms", "p90 ms", "size", "against the original"], rows, {6, 7, 8, 9})


def write_report(run_dirs: list[Path], out: Path, regression_threshold: float = 0.10) -> Path:
    """Render every run folder into one HTML file at ``out`` (written atomically) and return its path."""
    loaded = [(d, load_summary(d)) for given in run_dirs for d in find_run_dirs(given)]
    devices: dict[str, list[tuple[Path, dict[str, Any]]]] = {}
    for run_dir, summary in loaded:
        devices.setdefault(str(summary["device"]), []).append((run_dir, summary))
    epoch = datetime.min.replace(tzinfo=timezone.utc)
    parts = []
    for device in sorted(devices):
        runs = sorted(devices[device], key=lambda rs: (parse_time(rs[1].get("started")) or epoch, rs[1]["run_id"]))
        sections = [f'<h2 id="device-{_e(device)}">Device {_e(device)}</h2>']
        previous: dict[str, dict[str, Any]] = {}
        for run_dir, summary in runs:
            sections.append(_run_section(summary, run_dir))
            earlier = previous.get(summary["recipe"])
            if earlier is not None:
                sections.append(_comparison(compare_runs(earlier, summary, regression_threshold)))
            previous[summary["recipe"]] = summary
        for recipe in sorted({s["recipe"] for _, s in runs}):
            series = [s for _, s in runs if s["recipe"] == recipe]
            if len(series) >= 3:  # two runs are a comparison (above); from three on, a trend says more
                src = plots.trend(series, f"{recipe} on {device}: trend over {len(series)} runs")
                sections.append(f"<h3>Trend: {_e(recipe)} on {_e(device)}</h3>"
                                f'<div class="plots"><img src="{src}" alt="p50 latency and accuracy per run"></div>')
        parts.append("".join(sections))
    index = _overview(devices)
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    doc = (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>edgepipe report</title>"
           f"<style>{CSS}</style></head><body><h1>edgepipe report</h1>{_headlines(devices)}"
           f"<p class='muted'>generated {now} from "
           f"{len(loaded)} run folder(s); latency is one inference at batch 1, p50/p90/p99 over n timed runs on the "
           f"device; figures are the recipe's task metric (named in each table)</p>{index}{''.join(parts)}"
           "</body></html>\n")
    out = Path(out)
    atomic_write_bytes(out, doc.encode("utf-8"))
    out.chmod(0o644)  # a report is shared; the temp file behind the atomic write was private
    return out
