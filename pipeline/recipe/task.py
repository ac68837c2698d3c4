"""The task on the host: the eval inputs by name, the targets, the original model's outputs, and the metric.

The orchestrator builds one ``TaskContext`` per run; every figure a run reports -- the baseline, each stage, each
artifact on the host and on a device -- goes through ``TaskContext.record`` so it is the same metric, computed the
same way, on the same samples. The stages get their pieces resolved (``stage_plan``), never the recipe.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch import nn

from pipeline.recipe.config import Recipe
from pipeline.recipe.metrics import MetricSpec, chance_level, label, resolve_metric
from pipeline.recipe.model import eval_arrays, infer_batch_axes, objective, predict, targets_array
from pipeline.recipe.usercode import import_factory
from pipeline.stages.chain import StagePlan
from pipeline.stages.common import example_from
from targets.errors import ConfigError


@dataclass
class TaskContext:
    metric: MetricSpec
    input_names: list[str]
    inputs: dict[str, np.ndarray]          # eval inputs, one array per input name (bounded by data.eval_samples)
    targets: Any                            # stacked array or list
    reference: list[np.ndarray]             # the original model's outputs on ``inputs`` (samples first)
    batch_axes: list[int] = field(default_factory=list)   # per output: the axis the model puts samples on

    @property
    def label(self) -> str:
        return label(self.metric.name)

    def score(self, outputs: list[np.ndarray]) -> dict[str, Any]:
        return self.metric.score(outputs, self.targets, self.reference)

    def record(self, outputs: list[np.ndarray]) -> dict[str, Any]:
        """``{"metric": {...}}`` plus ``accuracy`` (top-1 as a fraction) where the task is classification."""
        scored = self.score(outputs)
        out: dict[str, Any] = {"metric": scored}
        if self.metric.classification:
            out["accuracy"] = scored["values"].get("top1", scored["value"])
        return out

    def evaluate(self, model: Any) -> dict[str, Any]:
        return self.record(predict(model, self.inputs, batch_axes=self.batch_axes))

    def chance_warning(self, baseline: dict[str, Any]) -> str | None:
        """A baseline near chance on its own metric means the metric does not fit the model (argmax of an
        embedding is not accuracy)."""
        chance = chance_level(self.metric, self.reference)
        value = baseline["metric"]["value"]
        if chance is not None and value <= max(1.5 * chance, chance + 0.05):
            return (f"the original model scores {self.label} {value:.3f}, about chance ({chance:.3f}) on its own "
                    f"metric: task.metric {self.metric.name!r} probably does not fit this model's outputs")
        return None


def build_context(recipe: Recipe, teacher: nn.Module, data: dict[str, Any]) -> TaskContext:
    names = [s.name for s in recipe.model.input_specs]
    metric = resolve_metric(recipe.task.metric, recipe.base_dir, recipe.task.postprocess)
    inputs, targets = eval_arrays(recipe, data["eval"])
    axes = infer_batch_axes(teacher, inputs, recipe.model.declared_batch_axes, str(recipe.path))
    reference = predict(teacher, inputs, batch_axes=axes)
    for i, out in enumerate(reference):   # finite weights and inputs can still overflow: say so, not "cosine 0"
        if out.dtype.kind == "f" and out.size and not np.isfinite(out).all():
            raise ConfigError(f"{recipe.path}: model: the original model's output {i} holds NaN or Inf on the eval "
                              "inputs (finite weights and inputs, so it overflows inside the model)",
                              hint="check the model's numerics (an exp or a division) before compressing it")
    return TaskContext(metric, names, inputs, targets_array(targets), reference, axes)


def stage_plan(recipe: Recipe, ctx: TaskContext, data: dict[str, Any], timing: Any = None,
               baseline: dict[str, Any] | None = None, stop_at_gate: bool = True) -> StagePlan:
    """The stages' resolved inputs. With ``stop_at_gate`` a stage whose metric falls past ``gate.max_metric_drop``
    (against ``baseline``, the original model's record, scored here when not given) stops the run at once."""
    from targets import units

    stages = recipe.stages
    limit = units.max_metric_drop(recipe.gate) if stop_at_gate else None
    original = None
    if limit is not None:
        original = (baseline or ctx.record(ctx.reference)).get("metric")
    student = stages.distill.student if stages.distill else None
    return StagePlan(distill=stages.distill, prune=stages.prune, quantize=stages.quantize,
                     example=example_from(data["calib"], ctx.input_names), input_names=ctx.input_names,
                     objective=objective(recipe), evaluate=ctx.evaluate,
                     student_factory=import_factory(student, recipe.base_dir) if student else None,
                     timing=timing, metric_label=ctx.label, metric_key=ctx.metric.identity,
                     train=recipe.train, baseline_metric=original, max_metric_drop=limit,
                     scale=float(getattr(recipe, "scale", 1.0) or 1.0))
