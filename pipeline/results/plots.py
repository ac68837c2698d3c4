"""The report's figures, drawn with matplotlib (Agg) and embedded as base64 PNG so the HTML opens offline."""

from __future__ import annotations

import base64
import io
from typing import Any

from pipeline.results.rundir import artifact_name, is_usable, latency, metric_label, metric_value, pareto_front
from targets.errors import MissingDependencyError

FAMILY_COLORS = {"onnx": "#1f77b4", "openvino": "#9467bd", "tflite": "#ff7f0e"}


def pyplot() -> Any:
    try:
        import matplotlib
    except ModuleNotFoundError as exc:
        raise MissingDependencyError("matplotlib", "report", purpose="the HTML report's plots") from exc
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def png_uri(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight", metadata={"Software": None})
    pyplot().close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


PRECISION_MARKERS = {"fp32": "o", "fp16": "s", "int8": "^", "int4": "v"}


def accuracy_vs_latency(artifacts: list[dict[str, Any]], baseline: float | None, title: str,
                        ylabel: str = "top-1 accuracy", higher_is_better: bool = True) -> str:
    """Each artifact in the legend (colour = backend, marker = precision) rather than as a text label, so close
    points never print on top of each other; Pareto points are outlined and joined by a dashed staircase."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.0, 3.6))
    points = [(artifact_name(a), float(metric_value(a) or 0.0), latency(a) or 0.0, 0) for a in artifacts
              if is_usable(a)]
    front = pareto_front(points, higher_is_better)
    for a in artifacts:
        lat, acc = latency(a), metric_value(a)
        if lat is None or not isinstance(acc, (int, float)):
            continue
        name, marker = artifact_name(a), PRECISION_MARKERS.get(a.get("precision"), "D")
        color = FAMILY_COLORS.get(a.get("backend"), "gray")
        if is_usable(a):
            on_front = name in front
            ax.scatter(lat, acc, s=70, marker=marker, color=color, zorder=3, edgecolor="black" if on_front else
                       "none", linewidth=1.4, label=f"{name}{' (Pareto)' if on_front else ''}", alpha=0.9)
        else:  # measured but invalid: hollow, never on the front
            ax.scatter(lat, acc, s=70, marker=marker, facecolor="none", edgecolor=color, zorder=2,
                       label=f"{name} (invalid)")
    if front:
        by_name = {n: (lat, acc) for n, acc, lat, _size in points}
        xs, ys = zip(*(by_name[n] for n in front), strict=True)
        ax.step(xs, ys, where="post", color="black", linestyle="--", linewidth=1, label="Pareto front", zorder=1)
    _frame(ax, baseline, "p90 latency (ms, lower is better)", ylabel, higher_is_better, title)
    _min_span(ax, "y", 0.01)  # accuracies a hair apart must not be drawn as a cliff
    lo, hi = ax.get_ylim()
    if hi > 1.0:  # accuracy cannot exceed 1: keep the window, shifted below it
        ax.set_ylim(lo - (hi - 1.0) + 0.0005, 1.0005)
    ax.ticklabel_format(useOffset=False, style="plain")
    return png_uri(fig)


def tokens_vs_metric(artifacts: list[dict[str, Any]], baseline: float | None, title: str, ylabel: str,
                     higher_is_better: bool = False) -> str:
    """A language model's trade-off: decode tokens/s on the device (p50, higher is better) against the task metric
    (perplexity: lower is better). Only generations that met their own measurement rules are drawn filled."""
    from pipeline.results.generation import generation, stat

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.0, 3.6))
    for a in artifacts:
        rec, value = generation(a), metric_value(a)
        tps = stat(rec, "decode_tokens_per_s")
        if rec is None or tps is None or not isinstance(value, (int, float)):
            continue
        name, marker = artifact_name(a), PRECISION_MARKERS.get(a.get("precision"), "D")
        color = FAMILY_COLORS.get(a.get("backend"), "gray")
        if is_usable(a) and rec.get("valid") is True:
            ax.scatter(tps, value, s=70, marker=marker, color=color, zorder=3, label=name, alpha=0.9)
        else:
            ax.scatter(tps, value, s=70, marker=marker, facecolor="none", edgecolor=color, zorder=2,
                       label=f"{name} (invalid)")
    _frame(ax, baseline, "decode tokens/s, p50 (higher is better)", ylabel, higher_is_better, title)
    ax.ticklabel_format(useOffset=False, style="plain")
    return png_uri(fig)


def _frame(ax: Any, baseline: float | None, xlabel: str, ylabel: str, higher_is_better: bool, title: str) -> None:
    """The metric-versus-speed plots' common frame: the original's line, labels that say which way is better, the
    legend outside the axes (points never hide behind it)."""
    if isinstance(baseline, (int, float)):
        ax.axhline(baseline, color="green", linestyle=":", linewidth=1, label=f"original {baseline:.3f}")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel if higher_is_better else f"{ylabel} (lower is better)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    ax.margins(x=0.15, y=0.2)


def _min_span(ax: Any, axis: str, span: float) -> None:
    lo, hi = ax.get_ylim() if axis == "y" else ax.get_xlim()
    if hi - lo < span:
        mid = (lo + hi) / 2
        (ax.set_ylim if axis == "y" else ax.set_xlim)(mid - span / 2, mid + span / 2)


def size_bars(artifacts: list[dict[str, Any]], title: str) -> str:
    plt = pyplot()
    rows = [a for a in artifacts if isinstance(a.get("bytes"), int)]
    fig, ax = plt.subplots(figsize=(4.4, 0.5 + 0.45 * max(len(rows), 1)))
    names = [artifact_name(a) for a in rows]
    kib = [a["bytes"] / 1024 for a in rows]
    ax.barh(names, kib, color=[FAMILY_COLORS.get(a.get("backend"), "gray") for a in rows])
    for i, v in enumerate(kib):
        ax.text(v, i, f" {v:,.1f} KiB", va="center", fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("size (KiB)")
    ax.set_title(title, fontsize=10)
    ax.margins(x=0.3)
    return png_uri(fig)


def stage_trail(summary: dict[str, Any], title: str) -> str:
    """Params, MACs and accuracy from the original model through each stage."""
    plt = pyplot()
    base = summary.get("baseline") or {}
    steps = [("original", base)] + [(s.get("name", "?"), s) for s in summary.get("stages") or []]
    labels = [n for n, _ in steps]
    fig, axes = plt.subplots(1, 3, figsize=(10.5, 2.8))
    for ax, key, label, scale in ((axes[0], "params", "parameters (k)", 1e3), (axes[1], "macs", "MACs (M)", 1e6),
                                  (axes[2], "accuracy", metric_label(summary), 1.0)):
        values = [(metric_value(s) if key == "accuracy" else s.get(key)) for _, s in steps]
        values = [v / scale if isinstance(v, (int, float)) else float("nan") for v in values]
        if key == "accuracy":
            ax.plot(labels, values, marker="o", color="#2ca02c")
            for i, v in enumerate(values):
                if v == v:
                    ax.annotate(f"{v:.3f}", (i, v), textcoords="offset points", xytext=(0, 6), fontsize=8,
                                ha="center")
            ax.margins(y=0.3)
            _min_span(ax, "y", 0.01)
            ax.ticklabel_format(axis="y", useOffset=False, style="plain")
        else:
            ax.bar(labels, values, color="#7f7f7f")
            for i, v in enumerate(values):
                if v == v:
                    ax.text(i, v, f"{v:,.1f}", ha="center", va="bottom", fontsize=8)
            ax.margins(y=0.15)
        ax.set_title(label, fontsize=9)
        ax.tick_params(axis="x", labelsize=8, rotation=20)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return png_uri(fig)


def trend(summaries: list[dict[str, Any]], title: str) -> str:
    """p50 latency and accuracy of each artifact across runs (oldest first): drift shows at a glance."""
    plt = pyplot()
    fig, (ax_lat, ax_acc) = plt.subplots(1, 2, figsize=(10.5, 3.0))
    labels = [str(s.get("run_id")) for s in summaries]
    names = sorted({artifact_name(a) for s in summaries for a in s.get("artifacts") or []})
    for name in names:
        family = name.split("-")[0]
        marker = PRECISION_MARKERS.get(name.split("-")[-1], "D")
        per_run = [{artifact_name(a): a for a in s.get("artifacts") or []}.get(name) or {} for s in summaries]
        p50 = [latency(a, "p50") if a else None for a in per_run]
        acc = [metric_value(a) if a else None for a in per_run]
        for ax, ys in ((ax_lat, p50), (ax_acc, acc)):
            ax.plot(range(len(labels)), [float("nan") if y is None else y for y in ys], marker=marker,
                    color=FAMILY_COLORS.get(family, "gray"), label=name)
    for ax, label in ((ax_lat, "p50 latency (ms)"), (ax_acc, metric_label(summaries[-1]) if summaries else "metric")):
        ax.set_xticks(range(len(labels)), labels, fontsize=7, rotation=15, ha="right")
        ax.set_title(label, fontsize=9)
        ax.grid(alpha=0.3)
        ax.ticklabel_format(axis="y", useOffset=False, style="plain")
    ax_acc.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return png_uri(fig)
