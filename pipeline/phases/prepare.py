"""Prepare: the recipe resolved once into what the later phases take -- model, data, task context, baseline, eval
inputs on disk and the export plan. Nothing after this phase reads the Recipe."""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from pipeline.recipe.config import Recipe
from pipeline.recipe.model import (
    arrays_problem,
    complexity,
    load_data,
    load_model,
    output_size_problem,
    weights_problem,
)
from pipeline.recipe.task import TaskContext, build_context
from pipeline.stages.chain import StagesResult
from pipeline.stages.common import example_from
from pipeline.ui.progress import Progress
from targets import units
from targets.errors import ConfigError
from targets.jsonio import atomic_write_bytes
from targets.profiles import DeviceProfile

TOOLS = ("torch", "onnx", "onnxruntime", "onnxscript", "openvino", "nncf", "litert-torch", "ai-edge-litert",
         "torch-pruning", "torchao", "numpy")


def tool_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in TOOLS:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


@dataclass(frozen=True)
class ExportPlan:
    """What the export phase needs of the recipe: names, the mixed-precision settings and the INT8 check's limit."""

    name: str
    output_names: list[str]
    mixed: dict[str, Any] | None       # quantize's accuracy-aware mixed precision, None when off
    max_drop: float | None             # the gate's allowed metric drop, which every INT8 artifact must meet too
    # task lm: {"prompt_len", "new_tokens"} of ``task.generate``, for the runner's generation mode; None otherwise
    generate: dict[str, int] | None = None
    # the model family the exporters tailor the graph to: "lm" (a decoder: its key/value-cache graph, weight-only
    # INT8/INT4) or None
    task: str | None = None

    @classmethod
    def of(cls, recipe: Recipe) -> ExportPlan:
        q = recipe.stages.quantize
        gen = recipe.task.generate
        return cls(recipe.name, list(recipe.model.output_names or []), q.mixed_precision() if q is not None else None,
                   units.max_metric_drop(recipe.gate), gen.model_dump() if gen is not None else None,
                   "lm" if recipe.task.language_model else None)


def backends_for(recipe: Recipe, profile: DeviceProfile) -> list[str]:
    """What a device is measured on: the recipe's list, else the profile's."""
    return list(recipe.backends or profile.backends)


@dataclass
class Prepared:
    model: nn.Module
    data: dict[str, Any]
    ctx: TaskContext
    example: tuple[Any, ...]
    baseline: dict[str, Any]


def load(recipe: Recipe, progress: Progress) -> Prepared:
    """The user's model and data, the task context (eval inputs, targets, the original's outputs) and the baseline."""
    with progress.step("load model and data"):
        model = load_model(recipe)
        data = load_data(recipe)
        ctx = build_context(recipe, model, data)
        n = len(ctx.reference[0]) if ctx.reference and ctx.reference[0].ndim else 1
        problem = output_size_problem(recipe, sum(int(r.nbytes) for r in ctx.reference) // max(n, 1), n)
        if problem:   # found now, before any stage or export, not by the runner after each one
            raise ConfigError(problem)
        example = example_from(data["calib"], ctx.input_names)
        params, macs = complexity(model, example)
    baseline = {**ctx.record(ctx.reference), "params": params, "macs": macs}
    return Prepared(model, data, ctx, example, baseline)


def write_eval_inputs(ctx: TaskContext, path: Path) -> str:
    """The eval inputs as the runner reads them (one array per input name, ``__order__``, labels as ``y`` for
    classification), written atomically; returns their sha256 (a cache key part)."""
    extra = {"y": np.asarray(ctx.targets)} if ctx.metric.classification and "y" not in ctx.inputs else {}
    if any(ctx.batch_axes):   # the runner stacks such outputs along their own batch axis (bench.read_batch_axes)
        extra["__batch_axes__"] = np.asarray(ctx.batch_axes, dtype=np.int64)
    buf = io.BytesIO()
    np.savez(buf, **ctx.inputs, __order__=np.array(ctx.input_names), **extra)
    atomic_write_bytes(path, buf.getvalue())  # a full disk never leaves a truncated eval.npz at its final name
    return hashlib.sha256(buf.getvalue()).hexdigest()


def check_finite(recipe: Recipe, result: StagesResult) -> None:
    """NaN/Inf in what the exporters get -- the stages' model or the calibration inputs -- named before any export:
    otherwise every artifact fails its output check as a "cosine mismatch" that points at the wrong culprit."""
    last = result.records[-1]["name"] if result.records else None
    problem = weights_problem(result.model, f"{recipe.path}: stages.{last}" if last else f"{recipe.path}: model") \
        or arrays_problem(result.calib if isinstance(result.calib, dict) else {}, f"{recipe.path}: data.factory: "
                          "split 'calib'")
    if problem:
        raise ConfigError(problem, hint="a stage that diverged: lower its lr or add grad_clip" if last and
                          "weights" in problem else None)
