"""Quality gates: does every artifact a run produced meet the recipe's limits on this device?

Semantics (strict on purpose, a release manager must be able to read the verdict without caveats):

* every artifact listed in the summary is checked on its own and gets its own verdict;
* an artifact that failed to export or to run (``"error"``) fails the gate: a backend the recipe asked for is missing;
* ``max_metric_drop`` (alias ``max_accuracy_drop``): the task metric may be at most this much worse than the
  original model's (``baseline.metric``), in points (x100) for fraction metrics (top-1/5, mAP) and in raw units
  otherwise (cosine, MSE, user metrics); "worse" follows the metric's direction. An artifact without a measured
  metric fails;
* ``max_latency_ms``: p90 on the device must not exceed it; an artifact without a latency, or whose measurement the
  runner marked invalid (too few iterations, throttling), fails because its figure cannot be trusted;
* ``max_bytes``: the artifact's total size on disk (all of its files);
* the run passes only when it produced at least one artifact and every artifact passes.

A failed gate never hides figures: the verdict is stored next to them, and ``raise_for_gate`` turns it into a
GateError (exit 3) for ``edgepipe run`` and ``edgepipe release``.
"""

from __future__ import annotations

import math
from typing import Any

from pipeline.recipe.metrics import label
from pipeline.results.rundir import artifact_name, latency, metric_value
from targets import units
from targets.errors import GateError

LIMITS = ("max_metric_drop", "max_accuracy_drop", "max_latency_ms", "max_bytes")
EPS = 1e-9  # figures exactly at the limit pass


def limits_of(gate_cfg: Any) -> dict[str, Any]:
    """Accept the recipe's ``Gate`` model or a plain mapping (as stored in recipe.yaml / summary.json)."""
    raw = gate_cfg.model_dump() if hasattr(gate_cfg, "model_dump") else dict(gate_cfg or {})
    out = {k: raw.get(k) for k in LIMITS}
    limit = units.max_metric_drop(raw)
    # stored as written: a relative "5%" stays a string (its alias, in accuracy points, has no such form)
    out["max_metric_drop"] = units.as_written(limit)
    out["max_accuracy_drop"] = None if units.is_relative(limit) else limit
    return out


def _finite(value: Any) -> bool:
    """A real, finite number: NaN compares False with every limit, so ``drop > max`` alone would let it pass."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_artifact(art: dict[str, Any], limits: dict[str, Any], baseline: float | dict[str, Any] | None,
                   device: str) -> list[str]:
    """Every limit this artifact breaks, one sentence each naming the artifact and the figure. ``baseline`` is
    the summary's baseline record (or, for old summaries, its accuracy)."""
    name = artifact_name(art)
    if art.get("error"):
        return [f"{name}: failed before it could be measured: {art['error']}"]
    failures: list[str] = []
    max_drop = units.max_metric_drop(limits)
    base_rec = baseline if isinstance(baseline, dict) else {"accuracy": baseline}
    metric = base_rec.get("metric") or art.get("metric") or {"name": "top1", "higher_is_better": True,
                                                             "unit": "fraction"}
    what = "accuracy" if metric.get("name") == "top1" and "metric" not in base_rec else label(metric["name"])
    if max_drop is not None:
        value, base = metric_value(art), metric_value(base_rec)
        unit = units.unit_word({"unit": "fraction", **metric}, max_drop)
        if value is None:
            failures.append(f"{name}: no {what} was measured (max drop {max_drop:g}{unit} needs one)")
        elif not _finite(value):
            failures.append(f"{name}: {what} is {value!r}, not a finite number (a NaN or infinite metric cannot "
                            f"be compared with max drop {max_drop:g}{unit})")
        elif base is None:
            failures.append(f"{name}: the summary has no baseline {what} to compare {value:.3f} against")
        elif not _finite(base):
            failures.append(f"{name}: the baseline {what} is {base!r}, not a finite number, so no drop can be "
                            "judged")
        else:
            drop = units.drop(base, value, {"unit": "fraction", **metric}, max_drop)
            if not units.within(drop, max_drop, EPS):
                failures.append(f"{name}: {what} {value:.3f} is {drop:.1f}{unit} "
                                f"{'below' if metric.get('higher_is_better', True) else 'worse than'} baseline "
                                f"{base:.3f} (max {max_drop:g})")
    max_ms = limits.get("max_latency_ms")
    if max_ms is not None:
        p90 = latency(art, "p90")
        if p90 is None:
            failures.append(f"{name}: no latency was measured on {device} (max p90 {max_ms:g} ms needs one)")
        elif not _finite(p90):
            failures.append(f"{name}: p90 latency on {device} is {p90!r}, not a finite number")
        elif art.get("valid") is not True:
            why = "; ".join((art.get("bench") or {}).get("invalid_reasons") or art.get("invalid_reasons") or [])
            failures.append(f"{name}: latency on {device} is not a valid measurement ({why or 'marked invalid'}), "
                            f"so p90 {p90:g} ms cannot be checked against {max_ms:g} ms")
        elif p90 > max_ms + EPS:
            failures.append(f"{name}: p90 latency {p90:.3f} ms on {device} exceeds {max_ms:g} ms")
    max_bytes = limits.get("max_bytes")
    if max_bytes is not None:
        size = art.get("bytes")
        if not isinstance(size, int) or isinstance(size, bool):
            failures.append(f"{name}: size unknown (max {max_bytes} bytes needs it)")
        elif size > max_bytes:
            failures.append(f"{name}: size {size} bytes exceeds {max_bytes} bytes")
    return failures


def evaluate_gate(summary: dict[str, Any], gate_cfg: Any, device: str) -> dict[str, Any]:
    """The summary's ``gate`` block: the limits, the overall verdict, and one verdict per artifact."""
    limits = limits_of(gate_cfg)
    baseline = summary.get("baseline") or {}
    per_artifact: list[dict[str, Any]] = []
    failures: list[str] = []
    for art in summary.get("artifacts") or []:
        own = check_artifact(art, limits, baseline, device)
        per_artifact.append({"artifact": artifact_name(art), "passed": not own, "failures": own})
        failures += own
    if not per_artifact:
        failures.append(f"{summary.get('recipe', 'run')} on {device}: no artifact was produced")
    return {"passed": not failures, **limits, "device": device, "baseline_accuracy": baseline.get("accuracy"),
            "metric": (baseline.get("metric") or {}).get("name", "top1"), "baseline_metric": metric_value(baseline),
            "failures": failures, "checked": [v["artifact"] for v in per_artifact], "artifacts": per_artifact}


def apply_gate(summary: dict[str, Any], gate_cfg: Any, device: str) -> dict[str, Any]:
    """Evaluate and write the verdicts into the summary (run-level ``gate`` and each artifact's ``gate``)."""
    block = evaluate_gate(summary, gate_cfg, device)
    verdicts = {v["artifact"]: v for v in block["artifacts"]}
    for art in summary.get("artifacts") or []:
        v = verdicts[artifact_name(art)]
        art["gate"] = {"passed": v["passed"], "failures": v["failures"]}
    summary["gate"] = block
    return block


def raise_for_gate(block: dict[str, Any], what: str = "run") -> None:
    """GateError (exit 3) listing every failure, when the verdict is a fail."""
    if block.get("passed"):
        return
    failures = block.get("failures") or ["the gate failed (no details recorded)"]
    n = len(failures)
    raise GateError(f"quality gate failed for this {what} ({n} problem{'s' if n > 1 else ''}): " + "; ".join(failures),
                    hint="the figures are stored; relax `gate:` in the recipe or improve the model")


def artifact_verdicts(summary: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each artifact's verdict: the one stored with it, else judged now against the summary's own limits (for a
    summary written with only a run-level verdict). Empty when the summary has no gate at all."""
    limits = summary.get("gate") or {}
    baseline = summary.get("baseline") or {}
    out: dict[str, dict[str, Any]] = {}
    for art in summary.get("artifacts") or []:
        if isinstance(art.get("gate"), dict):
            out[artifact_name(art)] = art["gate"]
        elif limits:
            own = check_artifact(art, limits_of(limits), baseline, str(summary.get("device", "?")))
            out[artifact_name(art)] = {"passed": not own, "failures": own}
    return out
