"""Export: every backend for one target CPU, each artifact checked against its FP32 parent on the task metric.

A backend that fails is recorded for that backend only; the others go on. The target's arch matters: the fastest
ONNX INT8 scheme differs between x86 (with or without VNNI) and Arm.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pipeline.phases.outcome import ExportOutcome, Failure
from pipeline.phases.prepare import ExportPlan
from pipeline.recipe.task import TaskContext
from pipeline.stages.chain import StagesResult
from pipeline.ui.progress import Progress
from targets import export_order, get_exporter, get_simulator, parse_backend, requires, units
from targets.artifact import Artifact
from targets.errors import EdgeError, OutputMismatchError
from targets.export_config import ExportConfig
from targets.validate import validate


def export_all(result: StagesResult, plan: ExportPlan, backends: list[str], out_dir: Path, ctx: TaskContext,
               ref: list[np.ndarray], example: tuple[Any, ...], progress: Progress,
               target_arch: str | None = None) -> dict[str, ExportOutcome]:
    """An outcome per backend asked: its checked artifact, or the failure that stopped it.

    Every output is checked against the FP32 parent (the stages' final model); an INT8 artifact is judged by the
    task metric's drop against that parent, in the gate's units."""
    out_dir.mkdir(parents=True, exist_ok=True)   # every step creates the folder it writes into
    parent = f"{plan.name}:{result.records[-1]['name'] if result.records else 'original'}"
    parent_score = ctx.score(ref)
    names = {"input_names": ctx.input_names, "output_names": plan.output_names}
    outcomes: dict[str, ExportOutcome] = {}
    ov_from = result.export_overrides.get("ov_int8_from", "model")
    for name in export_order(backends, ov_from):  # a backend that reads another's artifact comes after it
        family, precision = parse_backend(name)
        entry = outcomes[name] = ExportOutcome(family, precision)
        try:
            with progress.step(f"export {name}" + (f" for {target_arch}" if target_arch else "")):
                cfg = ExportConfig(name=plan.name, precision=precision, parent=parent, target_arch=target_arch,
                                   task=plan.task, **names, **result.export_overrides)
                calib = result.calib if precision in ("int8", "int4") else None
                art = _export_one(family, result, example, calib, cfg, out_dir, outcomes, plan.mixed, ctx, ref,
                                  progress)
            entry.artifact = art
            with progress.step(f"check {name}"):
                labels = ctx.targets if ctx.metric.classification else None
                entry.validation = validate(art, ctx.inputs, ref, labels, classification=ctx.metric.classification,
                                               score=ctx.score, parent_score=parent_score, max_drop=plan.max_drop,
                                               batch_axes=ctx.batch_axes)
        except EdgeError as exc:
            entry.failure = Failure.of(exc)
            if not isinstance(exc, OutputMismatchError):
                progress.warn(f"{name}: {exc}")
    return outcomes


def _export_one(family: str, result: StagesResult, example: tuple[Any, ...], calib: Any, cfg: ExportConfig,
                out_dir: Path, outcomes: dict[str, ExportOutcome], mixed: dict[str, Any] | None, ctx: TaskContext,
                ref: list[np.ndarray], progress: Progress) -> Artifact:
    """One exporter call: from another backend's artifact where the path declares one (targets.REQUIRES), through
    the accuracy-aware mixed-precision search for INT8 with ``auto_keep_float``, else straight."""
    name = f"{family}-{cfg.precision}"
    deps = requires(name, cfg.ov_int8_from)
    if deps:
        missing = [d for d in deps if d not in outcomes or outcomes[d].artifact is None]
        if missing:
            raise EdgeError(f"{name} is built from {', '.join(missing)}, which failed",
                            hint=f"fix {', '.join(missing)} first (see its error above)")
        return get_exporter(family)(result.model, example, calib, cfg, out_dir,
                                    sources={d: outcomes[d].artifact for d in deps})
    if mixed is not None and cfg.precision == "int8" and calib is not None:
        from targets.mixed_precision import MixedPrecisionConfig, search

        mp = MixedPrecisionConfig(**mixed)
        return search(family, get_exporter(family), result.model, example, calib, cfg, out_dir, ctx.inputs, ref, mp,
                      score=_points_scorer(ctx, mp.samples), log=progress.say, simulate=get_simulator(family),
                      batch_axes=ctx.batch_axes)
    return get_exporter(family)(result.model, example, calib, cfg, out_dir)


def _points_scorer(ctx: TaskContext, n: int) -> tuple[str, Any]:
    """The task metric on the first ``n`` eval samples in gate units where higher is better (targets.units), so
    the mixed-precision search compares drops as the gate does."""
    targets = ctx.targets[:n] if ctx.targets is not None else None
    reference = [r[:n] for r in ctx.reference]

    def points(outputs: list[np.ndarray]) -> float:
        m = ctx.metric.score(outputs, targets, reference)
        return units.points(float(m["value"]), m)

    return ctx.metric.name, points
