"""``edgepipe check``: the recipe, then the model against its inputs and one eval sample, every problem at once.

Schema, files and factories are checked by ``load_recipe``; this adds what needs the model and the data: input
names, dtypes and shapes of the data against ``model.inputs``, a forward pass of one eval sample, the number of
outputs against ``model.outputs``, and the metric scoring that sample. Each problem names the key path.
"""

from __future__ import annotations

from typing import Any

from pipeline.recipe.config import Recipe, load_recipe
from targets.errors import ConfigError, EdgeError


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:240]


def model_problems(recipe: Recipe) -> tuple[list[str], dict[str, Any]]:
    """Everything wrong between the recipe, the model, the data and the metric; plus what was learnt (outputs)."""
    import torch

    from pipeline.recipe.metrics import resolve_metric
    from pipeline.recipe.model import (
        arrays_problem,
        eval_size_problem,
        input_problems,
        load_data,
        load_model,
        targets_array,
    )
    from pipeline.stages.common import as_args, outputs_list

    src = str(recipe.path)
    problems: list[str] = []
    facts: dict[str, Any] = {}
    specs = recipe.model.input_specs
    names = [s.name for s in specs]
    try:
        model = load_model(recipe)
    except EdgeError as exc:
        return [str(exc)], facts
    try:
        data = load_data(recipe)
    except ConfigError as exc:
        return (list(exc.problems) if getattr(exc, "problems", None) else [str(exc)]), facts
    try:
        metric = resolve_metric(recipe.task.metric, recipe.base_dir, recipe.task.postprocess)
    except ConfigError as exc:
        problems.append(f"{src}: {exc}")
        metric = None
    except Exception as exc:  # noqa: BLE001 - user code
        problems.append(f"{src}: task.metric: cannot load {recipe.task.metric!r}: {_first_line(exc)}")
        metric = None
    size = eval_size_problem(recipe, data["eval"])
    if size:
        problems.append(size)
    inputs, target = data["eval"][0]
    bad = input_problems(inputs, specs, f"{src}: data 'eval'")
    if bad:
        return problems + bad, facts
    for split in ("eval", "calib"):   # what run will need finite: the first item of each, named
        first = as_args(data[split][0][0], names)
        nan = arrays_problem({n: t.unsqueeze(0).numpy() for n, t in zip(names, first, strict=False)
                              if isinstance(t, torch.Tensor) and t.is_floating_point()},
                             f"{src}: data.factory: split {split!r}")
        if nan:
            problems.append(nan)
    args = tuple(t.unsqueeze(0) for t in as_args(inputs, names))
    try:
        with torch.no_grad():
            outs = outputs_list(model.eval()(*args))
    except Exception as exc:  # noqa: BLE001 - the model cannot run the recipe's inputs
        shapes = [(n, list(a.shape), str(a.dtype).replace("torch.", "")) for n, a in zip(names, args, strict=True)]
        problems.append(f"{src}: model.inputs: the model fails on one eval sample shaped {shapes}: "
                        f"{_first_line(exc)}")
        return problems, facts
    facts["outputs"] = [list(o.shape) for o in outs]
    if not problems and any(o.is_floating_point() and not bool(torch.isfinite(o).all()) for o in outs):
        problems.append(f"{src}: model: the model's output on one eval sample holds NaN or Inf (finite weights and "
                        "inputs, so it overflows inside the model)")
    if recipe.model.outputs is not None and len(recipe.model.outputs) != len(outs):
        problems.append(f"{src}: model.outputs: names {len(recipe.model.outputs)} output(s) "
                        f"{recipe.model.output_names} but the model returns {len(outs)}")
    from pipeline.recipe.model import output_size_problem

    per_sample = sum(o.numel() * (4 if o.is_floating_point() else o.element_size()) for o in outs)  # float32 out
    too_big = output_size_problem(recipe, per_sample, min(len(data["eval"]), recipe.data.eval_samples))
    if too_big:
        problems.append(too_big)
    axes = _batch_axes(recipe, model, data, names, problems)
    facts["batch_axes"] = axes
    if metric is not None:
        from pipeline.recipe.model import samples_first

        arrays = [samples_first(o.float().numpy() if o.is_floating_point() else o.numpy(), axes[j] if j < len(axes)
                                else 0) for j, o in enumerate(outs)]
        try:
            scored = metric.score(arrays, targets_array([target]), arrays)
            facts["metric"] = scored
        except Exception as exc:  # noqa: BLE001 - a metric that cannot read these outputs and targets
            problems.append(f"{src}: task.metric: {recipe.task.metric!r} cannot score the model's outputs "
                            f"{facts['outputs']} with the data's targets: {_first_line(exc)}")
    return problems, facts


def _batch_axes(recipe: Recipe, model: Any, data: dict[str, Any], names: list[str], problems: list[str]) -> list[int]:
    """Each output's batch axis as a run will use it (declared, checked, or inferred from 2 and 3 eval samples)."""
    import torch

    from pipeline.recipe.model import infer_batch_axes
    from pipeline.stages.common import as_args

    items = [as_args(data["eval"][i][0], names) for i in range(min(3, len(data["eval"])))]
    stacked = {n: torch.stack([it[k] for it in items]).numpy() for k, n in enumerate(names)}
    try:
        return infer_batch_axes(model, stacked, recipe.model.declared_batch_axes, str(recipe.path))
    except ConfigError as exc:
        problems.append(str(exc))
        return [0] * len(recipe.model.outputs or [])


def check(path: str, overrides: list[str] | None = None) -> tuple[Recipe, dict[str, Any]]:
    """Validate everything; raise one ConfigError listing every problem. A recipe whose only faults are in
    ``task`` is still checked against its model and data (with the task left out), so a wrong metric and wrong
    inputs are reported together."""
    earlier: list[str] = []
    try:
        recipe = load_recipe(path, overrides)
    except ConfigError as exc:
        if not exc.problems or not all(": task." in p or ": task:" in p for p in exc.problems):
            raise
        earlier = list(exc.problems)
        recipe = load_recipe(path, [*(overrides or []), "task.metric=top1", "task.postprocess=null",
                                    "task.loss=null"])
    problems, facts = model_problems(recipe)
    if earlier:
        problems = earlier + [p for p in problems if ": task.metric:" not in p]
    if problems:
        n = len(problems)
        raise ConfigError(f"{path}: {n} problem{'s' if n > 1 else ''} with the model, its inputs or the metric",
                          problems=problems, hint="fix them and run `edgepipe check` again")
    return recipe, facts



