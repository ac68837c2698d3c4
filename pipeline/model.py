"""Load the user's model and data from a recipe, and the few measurements every stage reports.

Weights are loaded with ``torch.load(weights_only=True)``: a checkpoint that carries pickled code is refused, never
executed. A ``program:`` is a ``torch.export`` archive, so a user can ship a model with no Python code at all.
"""

from __future__ import annotations

import pickle
from typing import Any

import numpy as np
import torch
from torch import nn

from pipeline.config import Recipe, import_factory
from targets.errors import ConfigError

SPLITS = ("train", "calib", "eval")


def _call_factory(spec: str, recipe: Recipe, where: str) -> Any:
    try:
        return import_factory(spec, recipe.base_dir)()
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(f"{recipe.path}: {where}: calling {spec!r} failed: {type(exc).__name__}: {exc}") from exc


def load_state_dict(path: str, where: str) -> dict[str, torch.Tensor]:
    from pipeline.program_archive import check_model_file

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


def load_model(recipe: Recipe) -> nn.Module:
    spec = recipe.model
    if spec.program:
        from pipeline.program_archive import load_program

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


def load_data(recipe: Recipe) -> dict[str, Any]:
    data = _call_factory(recipe.data.factory, recipe, "data.factory")
    where = f"{recipe.path}: data.factory: {recipe.data.factory}"
    if not isinstance(data, dict) or any(k not in data for k in SPLITS):
        raise ConfigError(f"{where} must return a dict with keys {list(SPLITS)}")
    for name in SPLITS:
        ds = data[name]
        if not hasattr(ds, "__len__") or len(ds) == 0:
            raise ConfigError(f"{where}: split {name!r} is empty or has no length")
        item = ds[0]
        if not (isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[0], torch.Tensor)):
            raise ConfigError(f"{where}: items of {name!r} must be (input tensor, label)")
    shape = list(data["eval"][0][0].shape)
    if shape != recipe.model.input_shape[1:]:
        raise ConfigError(f"{where}: eval inputs have shape {shape}, but model.input_shape is "
                          f"{recipe.model.input_shape} (batch first)")
    return data


def arrays(dataset: Any) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = zip(*(dataset[i] for i in range(len(dataset))), strict=True)
    return torch.stack(list(xs)).numpy().astype(np.float32), np.asarray([int(y) for y in ys], dtype=np.int64)


@torch.no_grad()
def predict(model: nn.Module, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    model.eval()
    outs = [model(torch.from_numpy(x[i:i + batch_size])).float().numpy() for i in range(0, len(x), batch_size)]
    return np.concatenate(outs, axis=0)


def accuracy(model: nn.Module, dataset: Any) -> float:
    x, y = arrays(dataset)
    return float((predict(model, x).argmax(1) == y).mean())


def complexity(model: nn.Module, input_shape: list[int]) -> tuple[int, int]:
    """(MACs, params) from Torch-Pruning's counter, with a fallback to a plain parameter count."""
    params = sum(p.numel() for p in model.parameters())
    try:
        import torch_pruning as tp

        macs, _ = tp.utils.count_ops_and_params(model, torch.randn(*input_shape))
        return int(macs), int(params)
    except Exception:  # noqa: BLE001 - exported programs and exotic modules may not be countable
        return 0, int(params)
