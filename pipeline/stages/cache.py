"""Per-stage cache in the run folder: ``run_dir/stages/<name>/<key>/`` keyed by the hash of the stage's inputs.

The key covers the parent model's weights, the stage config, the data, and the code of this package, so changing a
later stage re-uses the earlier ones and an interrupted run resumes from the last finished stage. Outputs are written
to a temporary folder and renamed into place, so a Ctrl-C never leaves a half-written entry that looks finished.

Models are saved as plain tensors plus the structural attributes of every module (channel counts, groups), which is
what a pruned model needs to be rebuilt on an unpruned instance of its architecture. Everything loads with
``torch.load(weights_only=True)``: no code is ever unpickled.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from targets.jsonio import staged_dir, strict_dumps

_PRIMITIVE = (int, float, bool, str, type(None))


def _primitive(value: Any) -> bool:
    if isinstance(value, (tuple, list)):
        return all(_primitive(v) for v in value)
    return isinstance(value, _PRIMITIVE)


def model_hash(model: nn.Module) -> str:
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return h.hexdigest()


def _hash_item(h: Any, obj: Any) -> None:
    """Inputs and targets of any shape: tensors, arrays, numbers, and tuples/lists/dicts of them."""
    if isinstance(obj, dict):
        for k in sorted(obj, key=str):
            h.update(str(k).encode())
            _hash_item(h, obj[k])
    elif isinstance(obj, (tuple, list)):
        h.update(f"[{len(obj)}".encode())
        for o in obj:
            _hash_item(h, o)
    elif obj is None or isinstance(obj, str):
        h.update(repr(obj).encode())
    else:
        h.update(torch.as_tensor(obj).numpy().tobytes())


def data_fingerprint(data: dict[str, Any], samples: int = 256) -> str:
    """Lengths plus up to ``samples`` evenly spaced items per split: cheap on big datasets, catches real changes."""
    h = hashlib.sha256()
    for split in sorted(data):
        ds = data[split]
        n = len(ds)
        h.update(f"{split}:{n}".encode())
        for i in sorted({int(k * (n - 1) / max(samples - 1, 1)) for k in range(min(samples, n))}):
            _hash_item(h, ds[i][0])
            _hash_item(h, ds[i][1])
    return h.hexdigest()


def code_version() -> str:
    """Torch, Torch-Pruning and every module of this package (globbed: a new module can never be left out)."""
    import torch_pruning as tp

    from targets.fingerprint import code_digest

    versions = f"torch={torch.__version__};tp={getattr(tp, '__version__', '?')}"
    return hashlib.sha256(f"{versions};{code_digest(Path(__file__).parent)}".encode()).hexdigest()


def stage_key(name: str, parent: str, config: dict[str, Any], data_fp: str, extra: dict[str, Any] | None = None) -> str:
    payload = json.dumps({"stage": name, "parent": parent, "config": config, "data": data_fp, "code": code_version(),
                          "extra": extra or {}}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:20]


# ------------------------------------------------------------------------------------------------ model files
def model_payload(model: nn.Module) -> dict[str, Any]:
    structure = {name: {k: v for k, v in vars(m).items() if not k.startswith("_") and k != "training" and _primitive(v)}
                 for name, m in model.named_modules()}
    return {"format": "edgepipe-structured-v1", "state_dict": {k: v.detach().cpu().clone()
                                                               for k, v in model.state_dict().items()},
            "structure": structure}


def restore_model(base: nn.Module, payload: dict[str, Any]) -> nn.Module:
    """Reshape ``base`` (the same architecture, pruned or not) to the saved shapes, then load the weights strictly."""
    state = payload["state_dict"]
    for name, module in base.named_modules():
        for attr, value in payload["structure"].get(name, {}).items():
            if hasattr(module, attr):
                setattr(module, attr, tuple(value) if isinstance(value, list) else value)
        prefix = f"{name}." if name else ""
        for pname, param in list(module.named_parameters(recurse=False)):
            saved = state.get(prefix + pname)
            if saved is not None and saved.shape != param.shape:
                setattr(module, pname, nn.Parameter(torch.empty_like(saved), requires_grad=param.requires_grad))
        for bname, buf in list(module.named_buffers(recurse=False)):
            saved = state.get(prefix + bname)
            if buf is not None and saved is not None and saved.shape != buf.shape:
                module._buffers[bname] = torch.empty_like(saved)
    base.load_state_dict(state, strict=True)
    return base.eval()


def save_model(model: nn.Module, path: Path) -> None:
    torch.save(model_payload(model), path)


def load_model(base: nn.Module, path: Path) -> nn.Module:
    return restore_model(base, torch.load(path, weights_only=True))


# ------------------------------------------------------------------------------------------------ entries
class StageCache:
    """One folder per stage; one sub-folder per key holding ``model.pt`` and ``record.json`` (+ any extra files)."""

    def __init__(self, run_dir: Path, name: str) -> None:
        self.root = Path(run_dir) / "stages" / name

    def entry(self, key: str) -> Path:
        return self.root / key

    def lookup(self, key: str) -> Path | None:
        d = self.entry(key)
        return d if (d / "record.json").is_file() and (d / "model.pt").is_file() else None

    def store(self, key: str, model: nn.Module, record: dict[str, Any], files: dict[str, Any] | None = None) -> Path:
        final = self.entry(key)
        with staged_dir(final) as tmp:
            save_model(model, tmp / "model.pt")
            for fname, content in (files or {}).items():
                (tmp / fname).write_text(strict_dumps(content, f"stage cache {fname}", indent=1, sort_keys=True))
            (tmp / "record.json").write_text(strict_dumps(record, f"stage {self.root.name} record", indent=1,
                                                          sort_keys=True))
        return final
