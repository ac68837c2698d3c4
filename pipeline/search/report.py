"""What a search leaves behind besides ``search.json``: the Pareto front, the chosen recipe, the HTML page and plot.

The chosen candidate is written as a plain recipe next to the original (``<recipe>.<device>.yaml``), because the
recipe's factories are modules next to it: ``edgepipe run`` and ``edgepipe release`` take it as it is.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import yaml

from pipeline.recipe.config import Recipe
from pipeline.recipe.search_config import STAGE_CONFIGS, STAGE_ORDER
from pipeline.results.plots import FAMILY_COLORS, PRECISION_MARKERS, png_uri, pyplot
from pipeline.results.rundir import human_bytes, metric_value, now_iso
from targets.jsonio import atomic_write_bytes
from targets.schema import read_yaml


# ------------------------------------------------------------------------------------------------ chosen recipe
def chosen_recipe_path(recipe: Recipe, device: str) -> Path:
    return recipe.path.with_name(f"{recipe.path.stem}.{device}.yaml")


def write_chosen_recipe(recipe: Recipe, chosen: dict[str, Any], device: str) -> Path:
    """The original YAML with the chosen stage settings and backend, without ``search:``; unchanged keys stay as the
    user wrote them, and only settings that differ from a stage's defaults are added."""
    raw = read_yaml(recipe.path, "recipe")
    raw.pop("search", None)
    stages = dict(raw.get("stages") or {})
    for name in STAGE_ORDER:
        cfg = chosen["stages"].get(name)
        if cfg is None:
            stages.pop(name, None)
            continue
        own = dict(stages.get(name) or {})
        defaults = STAGE_CONFIGS[name]().model_dump(mode="json")
        for key, value in cfg.items():
            if key in own or value != defaults.get(key):
                own[key] = value
        stages[name] = own
    raw["stages"] = stages
    raw["backends"] = [chosen["backend"]]
    p90 = (chosen.get("latency_ms") or {}).get("p90")
    head = (f"# Chosen by `edgepipe search` on {device} ({now_iso()}): {chosen['label']}\n"
            f"# p90 {p90} ms, metric {metric_value(chosen)}, {chosen.get('bytes')} bytes; "
            f"run it with: edgepipe run {recipe.path.name.replace('.yaml', f'.{device}.yaml')} --device {device}\n")
    text = head + yaml.safe_dump(raw, sort_keys=False, default_flow_style=None, width=110)
    path = chosen_recipe_path(recipe, device)
    atomic_write_bytes(path, text.encode())
    return path


# ------------------------------------------------------------------------------------------------ plot
def front_plot(result: dict[str, Any], png_path: Path | None = None) -> str:
    """Metric against p90 for every measured candidate: colour = backend family, marker = precision, marker size =
    artifact size; the Pareto front joined, the chosen point starred, the original FP32 ONNX as a reference line."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.2, 4.2))
    cands = [c for c in result["candidates"] if c.get("latency_ms") and metric_value(c) is not None]
    sizes = [c.get("bytes") or 1 for c in cands]
    smax = max(sizes) if sizes else 1
    seen: set[str] = set()
    for c in cands:
        fam, prec = c["backend"].split("-")
        label = c["backend"] if c["backend"] not in seen else None
        seen.add(c["backend"])
        x, y = c["latency_ms"]["p90"], metric_value(c)
        area = 25 + 220 * (c.get("bytes") or 0) / smax
        kw = dict(marker=PRECISION_MARKERS.get(prec, "D"), s=area, zorder=3, label=label)
        if c.get("feasible"):
            ax.scatter(x, y, color=FAMILY_COLORS.get(fam, "gray"), alpha=0.85,
                       edgecolor="black" if c.get("pareto") else "none", linewidth=1.2, **kw)
        else:
            ax.scatter(x, y, facecolor="none", edgecolor=FAMILY_COLORS.get(fam, "gray"), **kw)
    front = [c for c in cands if c.get("pareto")]
    if front:
        pts = sorted((c["latency_ms"]["p90"], metric_value(c)) for c in front)
        best, xs, ys = float("-inf"), [], []
        for x, y in pts:
            if y > best:
                xs.append(x)
                ys.append(y)
                best = y
        ax.step(xs, ys, where="post", color="black", linestyle="--", linewidth=1, zorder=1,
                label=f"Pareto front ({len(front)} points, metric × p90 × size)")
    chosen = next((c for c in cands if c["id"] == result.get("chosen")), None)
    if chosen is not None:
        ax.scatter(chosen["latency_ms"]["p90"], metric_value(chosen), marker="*", s=420, color="gold",
                   edgecolor="black", zorder=4, label=f"chosen: {chosen['backend']}")
    base = metric_value(result.get("baseline") or {})
    drop = (result.get("gate") or {}).get("drop")
    ys = [metric_value(c) for c in cands]
    if isinstance(base, (int, float)) and isinstance(drop, (int, float)) and ys:
        line = base - drop / 100
        if line >= min(ys) - 0.5 * (max(ys) - min(ys) + 0.01):  # a far-away gate would squash every point
            ax.axhline(line, color="#cf222e", linestyle=":", linewidth=1, label=f"gate: -{drop:g} points")
    cmp = result.get("comparison") or {}
    orig = (cmp.get("median_p90_ms") or {}).get("original_fp32")
    if orig:
        ax.axvline(orig, color="gray", linestyle="-.", linewidth=1, label=f"original FP32 ONNX {orig:.3f} ms")
    ax.set_xlabel(f"p90 latency on {result['device']} (ms, lower is better)")
    name = ((result.get("baseline") or {}).get("metric") or {}).get("name", "top-1 accuracy")
    ax.set_ylabel(f"{name} (measured on the device)")
    ax.set_title(f"{result['recipe']} on {result['device']}: {len(cands)} candidates measured "
                 f"(marker area = size; hollow = fails the gate)", fontsize=9)
    xs_all = [c["latency_ms"]["p90"] for c in cands]
    if xs_all and min(xs_all) > 0 and max(xs_all) / min(xs_all) > 8:  # one slow backend must not squash the rest
        ax.set_xscale("log")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    ax.ticklabel_format(axis="y", useOffset=False, style="plain")
    if png_path is not None:
        fig.savefig(png_path, dpi=110, bbox_inches="tight", metadata={"Software": None})
    return png_uri(fig)


# ------------------------------------------------------------------------------------------------ HTML
def _e(v: Any) -> str:
    return html.escape("-" if v is None else str(v))


def _num(v: Any, d: int = 4) -> str:
    return f"{v:.{d}f}" if isinstance(v, (int, float)) else "-"


def _device_section(result: dict[str, Any], img: str) -> str:
    rows = []
    for c in sorted(result["candidates"], key=lambda c: ((c.get("latency_ms") or {}).get("p90") or 1e18, c["id"])):
        lat = c.get("latency_ms") or {}
        mark = " ★" if c["id"] == result.get("chosen") else (" ◆" if c.get("pareto") else "")
        verdict = ("meets the gate" if c.get("feasible") else "; ".join(c.get("failures") or [])
                   or c.get("reason") or c.get("status"))
        sec = c.get("seconds") or {}
        rows.append(f"<tr><td>{_e(c['label'])}{mark}</td><td>{_e(c['status'])}</td><td>{_e(c['rung'])}</td>"
                    f"<td class=n>{_num(metric_value(c))}</td><td class=n>{_num(lat.get('p50'))}</td>"
                    f"<td class=n>{_num(lat.get('p90'))}</td><td class=n>{_e(lat.get('n'))}</td>"
                    f"<td class=n>{human_bytes(c.get('bytes'))}</td><td>{_e(c.get('valid'))}</td>"
                    f"<td class=n>{_e(sec.get('stages'))} / {_e(sec.get('export'))} / {_e(sec.get('device'))}</td>"
                    f"<td>{_e(verdict)}</td></tr>")
    counts = result.get("counts") or {}
    cmp = result.get("comparison") or {}
    med = cmp.get("median_p90_ms") or {}
    summary = (f"<p>status <b>{_e(result['status'])}</b> · strategy {_e(result['strategy']['name'])} · "
               f"{_e(counts.get('device_measurements'))} device measurements for {_e(counts.get('exhaustive'))} "
               f"candidates in the space ({_e(counts.get('from_cache'))} from the cache) · chosen "
               f"<b>{_e(result.get('chosen'))}</b> → <code>{_e(result.get('chosen_recipe'))}</code></p>")
    if med:
        summary += (f"<p>Interleaved over {_e(cmp.get('rounds'))} rounds (median p90): chosen {_num(med.get('chosen'))}"
                    f" ms, recipe as written {_num(med.get('recipe_best'))} ms, original FP32 ONNX "
                    f"{_num(med.get('original_fp32'))} ms → {_e(cmp.get('speedup_vs_original_fp32'))}× faster than "
                    f"the original, {_e(cmp.get('speedup_vs_recipe_best'))}× the recipe as written.</p>")
    head = ("<tr><th>candidate (★ chosen, ◆ Pareto)</th><th>status</th><th>rung</th><th>metric</th><th>p50 ms</th>"
            "<th>p90 ms</th><th>n</th><th>size</th><th>valid</th><th>s: stages / export / device</th>"
            "<th>verdict</th></tr>")
    return (f"<h2>{_e(result['recipe'])} on {_e(result['device'])}</h2>{summary}"
            f"<img src='{img}' alt='Pareto front of metric and p90 latency'>"
            f"<table>{head}{''.join(rows)}</table>")


def _fleet_table(results: list[dict[str, Any]]) -> str:
    picks = {}
    for r in results:
        c = next((c for c in r["candidates"] if c["id"] == r.get("chosen")), None)
        picks[r["device"]] = c
    labels = {c["label"] if c else None for c in picks.values()}
    note = ("<p>The best choice <b>differs per board</b>.</p>" if len(labels) > 1 else
            "<p>The same candidate is best on every board.</p>")
    rows = "".join(f"<tr><td>{_e(d)}</td><td>{_e(c['label'] if c else 'none meets the gate')}</td>"
                   f"<td class=n>{_num((c or {}).get('latency_ms', {}).get('p90'))}</td>"
                   f"<td class=n>{_num(metric_value(c or {}))}</td>"
                   f"<td class=n>{human_bytes((c or {}).get('bytes'))}</td></tr>" for d, c in picks.items())
    return (f"<h2>Fleet</h2>{note}<table><tr><th>device</th><th>chosen</th><th>p90 ms</th><th>metric</th>"
            f"<th>size</th></tr>{rows}</table>")


CSS = ("body{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:1400px}table{border-collapse:collapse;"
       "font-size:12px;margin:8px 0 20px}th,td{border:1px solid #ccc;padding:3px 6px}th{background:#f2f2f2}"
       "td.n{text-align:right;font-variant-numeric:tabular-nums}img{border:1px solid #ddd;max-width:100%}")


def write_search_report(results: list[dict[str, Any]], out: Path, png_dir: Path | None = None) -> Path:
    sections = []
    for r in results:
        png = (png_dir or out.parent) / (f"front-{r['device']}.png" if len(results) > 1 else "front.png")
        sections.append(_device_section(r, front_plot(r, png)))
    fleet = _fleet_table(results) if len(results) > 1 else ""
    doc = (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>edgepipe search</title>"
           f"<style>{CSS}</style></head><body><h1>edgepipe search — {_e(results[0]['recipe'])}</h1>"
           f"<p>Every latency is the on-device runner's p90 under the profile's validity rules; the metric is measured "
           f"on the device's outputs.</p>{fleet}{''.join(sections)}</body></html>\n")
    atomic_write_bytes(out, doc.encode())
    out.chmod(0o644)
    return out
