"""Load the user's model and data from a recipe, and the few measurements every stage reports.

Weights are loaded with ``torch.load(weights_only=True)``: a checkpoint that carries pickled code is refused, never
executed. A ``program:`` is a ``torch.export`` archive, so a user can ship a model with no Python code at all.
"""

from __future__ import annotations

import os
import pickle
from typing import Any

import numpy as np
import torch
from torch import nn

from pipeline.recipe.config import InputSpec, Recipe
from pipeline.recipe.usercode import import_factory, watching
from pipeline.stages.common import Objective, accuracy, as_args, footprint, outputs_list
from targets.errors import ConfigError

SPLITS = ("train", "calib", "eval")
__all__ = ["accuracy", "complexity", "load_data", "load_model", "predict"]


def _call_factory(spec: str, recipe: Recipe, where: str) -> Any:
    try:
        with watching(f"{where} {spec!r}"):
            return import_factory(spec, recipe.base_dir)()
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(f"{recipe.path}: {where}: calling {spec!r} failed: {type(exc).__name__}: {exc}") from exc


def load_state_dict(path: str, where: str) -> dict[str, torch.Tensor]:
    from pipeline.recipe.program_archive import check_model_file

    check_model_file(path, where)  # empty files and Git LFS pointers say so
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ConfigError(
            f"{path}: {where}: refused to load: the file holds pickled Python objects, not only tensors "
            f"({str(exc).splitlines()[0][:160]})",
            hint="save weights with torch.save(model.state_dict(), path); edgepipe never runs code from a weights file",
        ) from None
    except (RuntimeError, OSError, EOFError) as exc:
        raise ConfigError(f"{path}: {where}: not a readable PyTorch weights file: {str(exc).splitlines()[0]}") from None
    for key in ("state_dict", "model_state_dict", "model"):  # common checkpoint wrappers
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ConfigError(f"{path}: {where}: expected a state_dict (a mapping of names to tensors)")
    return obj


def nonfinite_tensor(named: Any) -> str | None:
    """The name of the first float tensor in ``named`` (``(name, tensor)`` pairs) holding NaN or Inf, or None."""
    for name, t in named:
        if isinstance(t, torch.Tensor) and t.is_floating_point() and t.numel() and not bool(torch.isfinite(t).all()):
            return name
    return None


def weights_problem(model: nn.Module, where: str) -> str | None:
    """A parameter or buffer holding NaN/Inf, named: every output of such a model is NaN, and the export checks
    would report it as a cosine mismatch of every artifact instead of as the broken weights it is."""
    bad = nonfinite_tensor(list(model.named_parameters()) + list(model.named_buffers()))
    if bad is None:
        return None
    return (f"{where}: the weights hold NaN or Inf (first in {bad!r}): every output would be NaN; fix or re-train "
            "the weights")


def arrays_problem(arrays: dict[str, Any], where: str) -> str | None:
    """A float input array holding NaN/Inf, named with its first bad sample."""
    for name, arr in arrays.items():
        a = np.asarray(arr)
        if a.dtype.kind == "f" and a.size and not np.isfinite(a).all():
            first = int(np.flatnonzero(~np.isfinite(a.reshape(len(a), -1)).all(axis=1))[0]) if a.ndim else 0
            return (f"{where}: input {name!r} holds NaN or Inf (first in sample {first}): clean the data (a NaN "
                    "input makes every output NaN)")
    return None


def load_model(recipe: Recipe) -> nn.Module:
    model = _load_model(recipe)
    src = "model.program" if recipe.model.program else "model.weights" if recipe.model.weights else "model.factory"
    problem = weights_problem(model, f"{recipe.path}: {src}")
    if problem:
        raise ConfigError(problem)
    return model


def _load_model(recipe: Recipe) -> nn.Module:
    spec = recipe.model
    if spec.program:
        from pipeline.recipe.program_archive import load_program

        return load_program(recipe.resolve(spec.program))
    model = _call_factory(spec.factory, recipe, "model.factory")
    if not isinstance(model, nn.Module):
        raise ConfigError(f"{recipe.path}: model.factory: {spec.factory!r} returned {type(model).__name__}, "
                          "expected a torch.nn.Module")
    if spec.weights:
        path = recipe.resolve(spec.weights)
        state = load_state_dict(str(path), "model.weights")
        result = model.load_state_dict(state, strict=False)
        if result.missing_keys or result.unexpected_keys:
            parts = []
            if result.missing_keys:
                parts.append(f"missing {', '.join(result.missing_keys[:5])}")
            if result.unexpected_keys:
                parts.append(f"unexpected {', '.join(result.unexpected_keys[:5])}")
            raise ConfigError(f"{path}: model.weights do not fit {spec.factory}: {'; '.join(parts)}",
                              hint="the weights must come from the same architecture as model.factory")
    return model.eval()


_NP = {"float32": np.float32, "float16": np.float16, "int64": np.int64, "int32": np.int32, "uint8": np.uint8,
       "bool": np.bool_}
_TORCH = {"float32": torch.float32, "float16": torch.float16, "int64": torch.int64, "int32": torch.int32,
          "uint8": torch.uint8, "bool": torch.bool}


def input_problems(inputs: Any, specs: list[InputSpec], where: str) -> list[str]:
    """Every way one data item's inputs differ from ``model.inputs`` (names, count, dtypes, shapes), one line each."""
    problems: list[str] = []
    names = [s.name for s in specs]
    if isinstance(inputs, dict):
        unknown = [k for k in inputs if k not in names]
        missing = [n for n in names if n not in inputs]
        if unknown:
            problems.append(f"{where}: input(s) {unknown} are not in model.inputs {names} (check the names)")
        if missing:
            problems.append(f"{where}: input(s) {missing} of model.inputs are missing from the data items")
        pairs = [(s, inputs[s.name]) for s in specs if s.name in inputs]
    else:
        values = [inputs] if isinstance(inputs, torch.Tensor) else list(inputs) \
            if isinstance(inputs, (tuple, list)) else None
        if values is None:
            return [f"{where}: item inputs are {type(inputs).__name__}; expected a tensor, a tuple or a dict keyed "
                    f"by input name"]
        if len(values) != len(specs):
            problems.append(f"{where}: items carry {len(values)} input(s), model.inputs lists {len(specs)} ({names})")
        pairs = list(zip(specs, values, strict=False))
    for spec, value in pairs:
        key = f"model.inputs[{names.index(spec.name)}] ({spec.name})"
        if not isinstance(value, torch.Tensor):
            problems.append(f"{where}: {key}: the data gives {type(value).__name__}, expected a tensor")
            continue
        if value.dtype != _TORCH[spec.dtype]:
            problems.append(f"{where}: {key}: dtype is {spec.dtype} in the recipe but the data gives "
                            f"{str(value.dtype).replace('torch.', '')}")
        if list(value.shape) != spec.shape[1:]:
            problems.append(f"{where}: {key}: shape {spec.shape} (batch first) in the recipe but data items have "
                            f"{list(value.shape)}")
    return problems


def load_data(recipe: Recipe) -> dict[str, Any]:
    data = _call_factory(recipe.data.factory, recipe, "data.factory")
    where = f"{recipe.path}: data.factory: {recipe.data.factory}"
    if not isinstance(data, dict) or any(k not in data for k in SPLITS):
        raise ConfigError(f"{where} must return a dict with keys {list(SPLITS)}")
    problems: list[str] = []
    for name in SPLITS:
        ds = data[name]
        if not hasattr(ds, "__len__") or len(ds) == 0:
            problems.append(f"{where}: split {name!r} is empty or has no length")
            continue
        item = ds[0]
        if not (isinstance(item, (tuple, list)) and len(item) == 2):
            problems.append(f"{where}: items of {name!r} must be (inputs, target)")
            continue
        problems += input_problems(item[0], recipe.model.input_specs, f"{recipe.path}: data {name!r}")
    if problems:
        problems = list(dict.fromkeys(problems))
        raise ConfigError(f"{where}: {len(problems)} problem(s) with the data", problems=problems,
                          hint="make the data items match model.inputs (name, shape without batch, dtype)")
    return data


DEFAULT_MAX_EVAL_BYTES = 2 << 30   # the eval set is held in memory (items, stacked arrays, outputs): 2 GiB


def max_eval_bytes() -> int:
    """The most bytes of eval items the host materialises: ``EDGEPIPE_MAX_EVAL_BYTES``, else 2 GiB."""
    env = os.environ.get("EDGEPIPE_MAX_EVAL_BYTES")
    if not env:
        return DEFAULT_MAX_EVAL_BYTES
    if not env.isdigit() or int(env) < 1:
        raise ConfigError(f"EDGEPIPE_MAX_EVAL_BYTES={env[:40]!r} is not a whole number of bytes",
                          hint="e.g. EDGEPIPE_MAX_EVAL_BYTES=4294967296 for 4 GiB")
    return int(env)


def item_bytes(obj: Any) -> int:
    """Bytes of one data item in memory: its tensors and arrays (nested in tuples, lists, dicts); 8 per number."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, np.ndarray):
        return int(obj.nbytes)
    if isinstance(obj, dict):
        return sum(item_bytes(v) for v in obj.values())
    if isinstance(obj, (tuple, list)):
        return sum(item_bytes(v) for v in obj)
    return 8


def eval_size_problem(recipe: Recipe, dataset: Any) -> str | None:
    """Whether the eval set (``min(len, data.eval_samples)`` items, sized by the first) fits the host's bound,
    judged before a single item is materialised: a dataset declaring 10^9 items must fail in a second, not after
    the host has swapped itself to death."""
    n = min(len(dataset), recipe.data.eval_samples)
    per = max(item_bytes(dataset[0]), 1)
    limit = max_eval_bytes()
    if per * n <= limit:
        return None
    return (f"{recipe.path}: data.eval_samples: {n:,} eval items of {per:,} bytes each need {per * n / 2**30:,.1f} "
            f"GiB, more than the {limit / 2**30:g} GiB the host holds in memory: set data.eval_samples to at most "
            f"{limit // per:,} (or raise EDGEPIPE_MAX_EVAL_BYTES)")


def output_size_problem(recipe: Recipe, per_sample: int, n: int) -> str | None:
    """Whether the raw outputs of ``n`` eval samples (``per_sample`` bytes each, measured on the host) fit what the
    on-device runner writes back (bench.MAX_OUTPUT_MB, in parts): judged before any stage or export runs, so a
    model with huge outputs fails in seconds with the number to set, not after every artifact was measured."""
    from targets.runner.bench import MAX_OUTPUT_MB

    limit = int(MAX_OUTPUT_MB * 2**20)
    if per_sample * n <= limit:
        return None
    return (f"{recipe.path}: data.eval_samples: the outputs of {n:,} eval samples are {per_sample * n / 2**20:,.1f} "
            f"MiB ({per_sample:,} bytes each), over the {MAX_OUTPUT_MB:g} MiB the device runner returns: set "
            f"data.eval_samples to at most {max(limit // max(per_sample, 1), 1):,}")


def eval_arrays(recipe: Recipe, dataset: Any) -> tuple[dict[str, np.ndarray], list[Any]]:
    """The eval inputs as one array per input name (dtype from the recipe) and the targets, bounded by
    ``data.eval_samples`` and by ``max_eval_bytes`` (checked before anything is read): what the host checks and
    what a board receives once per run."""
    problem = eval_size_problem(recipe, dataset)
    if problem:
        raise ConfigError(problem)
    specs = recipe.model.input_specs
    n = min(len(dataset), recipe.data.eval_samples)
    items = [dataset[i] for i in range(n)]
    arrays: dict[str, np.ndarray] = {}
    for k, spec in enumerate(specs):
        arrays[spec.name] = np.stack([as_args(x, [s.name for s in specs])[k].numpy() for x, _ in items]) \
            .astype(_NP[spec.dtype])
    problem = arrays_problem(arrays, f"{recipe.path}: data.factory: split 'eval'")
    if problem:
        raise ConfigError(problem)
    return arrays, [y for _, y in items]


def targets_array(targets: list[Any]) -> np.ndarray | list[Any]:
    """Targets stacked into one array when they have one shape (labels, vectors), else the list (boxes)."""
    try:
        arr = np.stack([np.asarray(t.numpy() if isinstance(t, torch.Tensor) else t) for t in targets])
    except (ValueError, TypeError):
        return [t.numpy() if isinstance(t, torch.Tensor) else t for t in targets]
    return arr if arr.dtype != object else list(targets)


def samples_first(out: np.ndarray, axis: int) -> np.ndarray:
    """An output with its batch axis moved to the front: how every figure downstream reads outputs (samples first),
    whatever layout the model returns (a time-major ``(T, B, C)`` has ``axis`` 1)."""
    return np.moveaxis(out, axis, 0) if axis and out.ndim > axis else out


@torch.no_grad()
def predict(model: nn.Module, inputs: dict[str, np.ndarray] | np.ndarray, batch_size: int = 256,
            batch_axes: list[int] | None = None) -> list[np.ndarray]:
    """Every output of ``model`` on the named inputs, one array per output (float outputs as float32), samples
    first: each batch's output is stacked along its own ``batch_axes`` entry (0 when not given)."""
    model.eval()
    feeds = {"input": inputs} if isinstance(inputs, np.ndarray) else inputs
    names = list(feeds)
    n = len(feeds[names[0]])
    axes = list(batch_axes or [])
    outs: list[list[np.ndarray]] = []
    for i in range(0, n, batch_size):
        args = tuple(torch.from_numpy(np.ascontiguousarray(feeds[k][i:i + batch_size])) for k in names)
        res = outputs_list(model(*args))
        outs.append([samples_first(o.detach().float().numpy() if o.is_floating_point() else o.detach().numpy(),
                                   axes[j] if j < len(axes) else 0) for j, o in enumerate(res)])
    return [np.concatenate([o[j] for o in outs], axis=0) for j in range(len(outs[0]))]


@torch.no_grad()
def infer_batch_axes(model: nn.Module, inputs: dict[str, np.ndarray], declared: list[int | None] | None,
                     where: str) -> list[int]:
    """Each output's batch axis: the declared one (``model.outputs[i].batch_axis``), checked against the model, else
    the one axis that grows from 2 to 3 when the model runs 2 and then 3 samples, else 0 (a model that cannot run
    more than one sample, an output with no such axis). A declaration the model contradicts is a ConfigError."""
    n = len(next(iter(inputs.values()))) if inputs else 0
    shapes: list[tuple[list[int], list[int]]] = []
    if n >= 3:
        try:
            model.eval()
            runs = [outputs_list(model(*(torch.from_numpy(np.ascontiguousarray(a[:b])) for a in inputs.values())))
                    for b in (2, 3)]
            shapes = [(list(x.shape), list(y.shape)) for x, y in zip(*runs, strict=True)]
        except Exception:  # noqa: BLE001 - a fixed-batch program: only declarations (or 0) can say
            shapes = []
    axes: list[int] = []
    count = len(shapes) or len(declared or [])
    for j in range(count):
        decl = declared[j] if declared and j < len(declared) else None
        inferred = None
        if j < len(shapes):
            a, b = shapes[j]
            differ = [k for k in range(len(a)) if len(a) == len(b) and a[k] != b[k]]
            if len(differ) == 1 and (a[differ[0]], b[differ[0]]) == (2, 3):
                inferred = differ[0]
            if decl is not None and (decl >= len(a) or (inferred is not None and inferred != decl)):
                grows = f"grows along axis {inferred}" if inferred is not None else "has no such axis"
                raise ConfigError(f"{where}: model.outputs[{j}].batch_axis: {decl} is declared, but the model's "
                                  f"output {j} {grows} (shape {a} for 2 samples, {b} for 3)",
                                  hint=f"set batch_axis: {inferred if inferred is not None else 0} or leave it out")
        axes.append(decl if decl is not None else inferred if inferred is not None else 0)
    return axes


def complexity(model: nn.Module, example_inputs: tuple[torch.Tensor, ...]) -> tuple[int, int]:
    """(params, MACs): the one footprint helper (``pipeline.stages.common.footprint``), same argument order."""
    return footprint(model, example_inputs)


def objective(recipe: Recipe) -> Objective:
    """The stages' loss from ``task``: logit KD for classification metrics, the user's ``task.loss`` when given,
    else output-matching KD on every output."""
    task = recipe.task
    names = [s.name for s in recipe.model.input_specs]
    if task.loss:
        return Objective("user", names, user_loss=import_factory(task.loss, recipe.base_dir))
    if task.classification or task.language_model:   # lm: logit KD over V at every position
        return Objective("logits", names)
    return Objective("outputs", names, output_loss=task.output_loss, output_weights=task.output_weights)
