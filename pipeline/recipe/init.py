"""``edgepipe init FACTORY``: a commented recipe for one's own model, learnt by running it once, then checked.

Starting from one's own model should not mean writing a recipe from the README. The model is built and run once:
its inputs come from ``--input-shape``/``--dtype`` or from the data factory's first item (names from the item's dict
keys or from ``forward()``'s parameters), its outputs from what it returns. The metric is suggested from the output
shapes and the data's targets (class scores with integer labels: top-1; a detector's raw or decoded boxes: mAP, which
needs a ``postprocess``; anything else: cosine against the original model, which fits every model), the backends
from the device profile. The file is written atomically, never over an existing one without ``--force``, and then
checked with ``edgepipe check``.
"""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pipeline.recipe.config import DTYPES, FACTORY
from pipeline.recipe.usercode import import_factory, watching
from targets.errors import ConfigError


@dataclass
class Draft:
    """What init learnt, and the notes it prints (and writes as comments) about its guesses."""

    name: str
    factory: str
    data: str | None
    inputs: list[dict[str, Any]]
    outputs: list[tuple[str, list[int]]]
    metric: str
    postprocess: str | None
    backends: list[str]
    device: str
    notes: list[str] = field(default_factory=list)


def _flow(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=10_000).strip()


def recipe_name(out: Path, factory: str) -> str:
    """The folder's name for ``recipe.yaml``, else the file's stem; the factory's module as the last resort."""
    stem = out.resolve().parent.name if out.stem == "recipe" else out.stem
    name = re.sub(r"[^A-Za-z0-9_.-]", "-", stem).lstrip("-_.") or factory.partition(":")[0]
    return name[:64]


def _spec(where: str, value: str | None) -> str | None:
    if value is not None and not re.match(FACTORY, value):
        raise ConfigError(f"{where} {value!r} is not 'module:callable'", hint="e.g. models:my_model")
    return value


def find_splits(base: Path) -> str | None:
    """A data factory next to the recipe when the user gave none: the one module defining ``splits``."""
    found = []
    for path in sorted(base.glob("*.py")):
        if re.search(r"^def splits\(", path.read_text(errors="replace"), re.M):
            found.append(f"{path.stem}:splits")
    return found[0] if len(found) == 1 else None


def _forward_names(model: Any, n: int) -> list[str]:
    try:
        params = [p.name for p in inspect.signature(model.forward).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        params = []
    return params[:n] if len(params) >= n else [f"input_{i}" for i in range(n)]


def _inputs_from_item(item: Any, model: Any) -> list[dict[str, Any]]:
    import torch

    if isinstance(item, torch.Tensor):
        return [{"name": "input", "shape": [1, *item.shape], "dtype": str(item.dtype).replace("torch.", "")}]
    if isinstance(item, dict):
        order = _forward_names(model, len(item))
        keys = order if set(order) == set(item) else list(item)
        return [{"name": k, "shape": [1, *item[k].shape], "dtype": str(item[k].dtype).replace("torch.", "")}
                for k in keys]
    names = _forward_names(model, len(item))
    return [{"name": n, "shape": [1, *t.shape], "dtype": str(t.dtype).replace("torch.", "")}
            for n, t in zip(names, item, strict=True)]


def _inputs_from_shapes(shapes: list[str], dtypes: list[str], model: Any) -> list[dict[str, Any]]:
    names = ["input"] if len(shapes) == 1 else _forward_names(model, len(shapes))
    if len(dtypes) not in (0, 1, len(shapes)):
        raise ConfigError(f"--dtype given {len(dtypes)} times for {len(shapes)} --input-shape",
                          hint="give one --dtype for all inputs or one per --input-shape")
    out = []
    for i, text in enumerate(shapes):
        try:
            shape = [int(d) for d in re.split(r"[,x ]+", text.strip("[]() ")) if d]
        except ValueError:
            shape = []
        if not shape or any(d <= 0 for d in shape):
            raise ConfigError(f"--input-shape {text!r}: expected positive integers, batch first, e.g. 1,3,224,224")
        dtype = dtypes[i] if len(dtypes) == len(shapes) else (dtypes[0] if dtypes else "float32")
        if dtype not in DTYPES:
            raise ConfigError(f"--dtype {dtype!r}: choose from {', '.join(DTYPES)}")
        out.append({"name": names[i], "shape": shape, "dtype": dtype})
    return out


def _example(inputs: list[dict[str, Any]]) -> tuple[Any, ...]:
    import torch

    args = []
    for spec in inputs:
        dtype = getattr(torch, spec["dtype"])
        if dtype.is_floating_point:
            args.append(torch.randn(spec["shape"], generator=torch.Generator().manual_seed(0)).to(dtype))
        elif dtype == torch.bool:
            args.append(torch.ones(spec["shape"], dtype=dtype))
        else:
            args.append(torch.ones(spec["shape"], dtype=dtype))   # ones: valid ids and an all-visible mask
    return tuple(args)


def suggest_metric(outputs: list[Any], target: Any, postprocess: str | None) -> tuple[str, str | None]:
    """(metric, note): class scores with integer labels -> top1; a detector's outputs -> map50_95 (only with a
    postprocess that decodes them); otherwise cosine, which compares with the original model and fits any."""
    import torch

    first = outputs[0]
    labels = isinstance(target, (int, torch.Tensor)) and not isinstance(target, bool) and (
        isinstance(target, int) or (target.dim() == 0 and not target.is_floating_point()))
    if first.dim() == 2 and first.shape[1] > 1 and first.is_floating_point() and labels:
        return "top1", None
    boxes = first.dim() == 3 and (first.shape[-1] == 6 or min(first.shape[1:]) >= 5)
    boxy_target = isinstance(target, torch.Tensor) and target.dim() == 2 and target.shape[-1] == 5
    if boxes and (boxy_target or target is None):
        if postprocess:
            return "map50_95", "detector-shaped outputs: COCO box mAP@0.5:0.95 on the postprocess's detections"
        return "cosine", (f"output shape {list(first.shape)} looks like a detector's (B, 4+classes, anchors) or "
                          "boxes: for box mAP set task.metric: map50_95 and task.postprocess: module:decode "
                          "(returns (K, 6) x1 y1 x2 y2 score class per image); cosine until then")
    if first.dim() == 2 and first.shape[1] > 1 and target is not None and not labels:
        return "cosine", ("the first output looks like class scores but the targets are not integer labels: "
                          "cosine against the original model (a user metric can read these targets)")
    return "cosine", None


def draft(factory: str, out: Path, device: str = "local", data: str | None = None,
          input_shapes: list[str] | None = None, dtypes: list[str] | None = None,
          postprocess: str | None = None) -> Draft:
    """Build and run the model once; everything the recipe needs, with notes on what was guessed."""
    import torch

    from pipeline.stages.common import as_args, outputs_list
    from targets.profiles import load_profile

    _spec("FACTORY", factory)
    _spec("--data", data)
    _spec("--postprocess", postprocess)
    base = out.resolve().parent
    profile = load_profile(device)   # a wrong --device fails before the model is built
    notes: list[str] = []
    if data is None and not input_shapes:
        data = find_splits(base)
        if data is None:
            raise ConfigError(f"cannot tell the model's inputs: no --input-shape, no --data, and no module next to "
                              f"{out} defines splits()", hint="pass --data module:splits (a dict of train/calib/eval "
                              "datasets) or --input-shape 1,3,224,224 [--dtype float32]")
        notes.append(f"data.factory: found {data} next to the recipe")
    try:
        with watching(f"model factory {factory!r}"):
            model = import_factory(factory, base)()
    except ConfigError:
        raise
    except Exception as exc:   # noqa: BLE001 - user code
        raise ConfigError(f"FACTORY {factory!r}: building the model failed: {type(exc).__name__}: {exc}",
                          hint="the factory must return a torch.nn.Module") from None
    if not isinstance(model, torch.nn.Module):
        raise ConfigError(f"FACTORY {factory!r} returned {type(model).__name__}, not a torch.nn.Module")
    target: Any = None
    if data is not None:
        try:
            with watching(f"data factory {data!r}"):
                splits = import_factory(data, base)()
            item, target = splits["eval"][0]
        except Exception as exc:   # noqa: BLE001 - user code
            raise ConfigError(f"--data {data!r}: reading the first eval item failed: {type(exc).__name__}: {exc}",
                              hint="the data factory returns {'train', 'calib', 'eval'} datasets of "
                                   "(inputs, target)") from None
    inputs = _inputs_from_shapes(input_shapes, list(dtypes or []), model) if input_shapes else \
        _inputs_from_item(item, model)
    bad = [i["dtype"] for i in inputs if i["dtype"] not in DTYPES]
    if bad:
        raise ConfigError(f"the data's inputs have dtype(s) {bad}; a model input is one of {', '.join(DTYPES)}")
    args = _example(inputs) if input_shapes else tuple(t.unsqueeze(0) for t in as_args(item, [i["name"] for i in
                                                                                        inputs]))
    try:
        with torch.no_grad():
            raw = model.eval()(*args)
        outs = outputs_list(raw)
    except Exception as exc:   # noqa: BLE001 - the model cannot run these inputs
        shapes = [(i["name"], i["shape"], i["dtype"]) for i in inputs]
        raise ConfigError(f"FACTORY {factory!r}: the model fails on inputs {shapes}: {type(exc).__name__}: "
                          f"{(str(exc).splitlines() or [''])[0][:200]}",
                          hint="give the shapes forward() expects with --input-shape (batch first)") from None
    names = list(raw) if isinstance(raw, dict) else (["output"] if len(outs) == 1 else
                                                      [f"output_{i}" for i in range(len(outs))])
    metric, note = suggest_metric(outs, target, postprocess)
    if note:
        notes.append(f"task.metric {metric}: {note}")
    if data is None:
        data = "YOUR_DATA_MODULE:splits"   # a name no module has: check says so until it is replaced
        notes.append(f"data.factory: {data} is a placeholder: point it at a function returning train/calib/eval "
                     "datasets of (inputs, target), then run `edgepipe check`")
    return Draft(recipe_name(out, factory), factory, data, inputs, [(n, list(o.shape)) for n, o in
                 zip(names, outs, strict=True)], metric, postprocess if metric.startswith("map") else None,
                 list(profile.backends), profile.name, notes)


def render(d: Draft, out: Path) -> str:
    """The recipe text: every key the draft knows, every other section commented with its defaults."""
    single = len(d.inputs) == 1 and d.inputs[0]["name"] == "input" and d.inputs[0]["dtype"] == "float32"
    model = [f"  factory: {d.factory}"]
    model.append("  # weights: model.pt                 # a state_dict loaded into the factory's model")
    if single:
        model.append(f"  input_shape: {_flow(d.inputs[0]['shape'])}        # one float32 input named \"input\"")
    else:
        model.append("  inputs:                            # in forward() order; batch first, batch 1")
        model += [f"    - {_flow(i)}" for i in d.inputs]
    model.append(f"  outputs: {_flow([n for n, _ in d.outputs])}"
                 f"   # shapes seen: {', '.join(f'{n} {s}' for n, s in d.outputs)}")
    drop, units = ("1.0", "points of the metric") if d.metric in ("top1", "top5", "map50", "map50_95") else \
        ("0.01", "raw units of cosine similarity")
    task = [f"  metric: {d.metric}                     # top1 | top5 | map50 | map50_95 | cosine | mse | "
            "module:callable"]
    task.append(f"  postprocess: {d.postprocess}" if d.postprocess else
                "  # postprocess: module:decode       # host-side step on the raw outputs before the metric")
    notes = "".join(f"# NOTE {n}\n" for n in d.notes)
    return f"""# Written by `edgepipe init {d.factory}` for device {d.device}: inputs and outputs were found by
# running the model once. Check it with `edgepipe check`, run it with `edgepipe run {out} --device {d.device}`.
{notes}name: {d.name}
model:
{chr(10).join(model)}
data:
  factory: {d.data}                   # -> {{"train", "calib", "eval"}} datasets of (inputs, target)
  eval_samples: 500
task:
{chr(10).join(task)}
stages:                               # fixed order distill -> prune -> quantize; leave one out to skip it
  # distill:  {{epochs: 8, width: 0.5}}            # or student: module:callable
  # prune:    {{ratio: 0.5, finetune_epochs: 3}}
  quantize: {{mode: ptq, calib_samples: 256}}     # the INT8 backends' calibration
backends: {_flow(d.backends)}   # the {d.device} profile's list
gate: {{max_metric_drop: {drop}}}            # in {units}; optional max_latency_ms, max_bytes
"""


def init_recipe(factory: str, out: Path, device: str = "local", data: str | None = None,
                input_shapes: list[str] | None = None, dtypes: list[str] | None = None,
                postprocess: str | None = None, force: bool = False) -> tuple[Draft, Any, dict[str, Any]]:
    """Write the recipe (atomically; an existing file only with ``force``) and check it: (draft, recipe, facts)."""
    from pipeline.recipe.check import check
    from targets.jsonio import atomic_write_bytes

    if out.exists() and not force:
        raise ConfigError(f"{out}: already exists; not overwriting it", hint="pass --force, or choose --out")
    if out.exists() and out.is_dir():
        raise ConfigError(f"{out}: is a folder", hint="give --out a file name, e.g. recipe.yaml")
    d = draft(factory, out, device, data, input_shapes, dtypes, postprocess)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, render(d, out).encode())
    recipe, facts = check(str(out))
    return d, recipe, facts
