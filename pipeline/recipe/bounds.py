"""The numbers a recipe may hold: finite, and within bounds a typo cannot pass (``epochs: 1e30`` is not a setting).

The schema checks types and signs; this checks magnitudes, on the validated recipe, one line per key."""

from __future__ import annotations

import math
from typing import Any

MAX_MAGNITUDE = 1e15   # above any sane figure (1 PB in bytes, 30 years in ms); 1e30 is a typo, not a setting
# per-key ceilings for values that size loops or steps (the last key of the path): a typo must not run for a year
BOUNDS: dict[str, float] = {
    "epochs": 100_000, "finetune_epochs": 100_000, "batch_size": 1_000_000, "eval_batch_size": 1_000_000,
    "lr": 10.0, "temperature": 1_000.0, "num_workers": 1_024, "calib_samples": 10_000_000,
    "sensitivity_samples": 10_000_000, "weight_decay": 10.0, "max_groups": 10_000, "guard_iterations": 10_000_000,
    "guard_seconds": 3_600.0,
}


def number_problems(obj: Any, source: str, path: str = "") -> list[str]:
    """Every number in the validated recipe that is NaN/Inf or beyond sane bounds, one line each naming the key:
    ``stages.prune.finetune_epochs: .inf`` passed the schema's ``ge=0`` and ran forever."""
    if isinstance(obj, dict):
        return [p for k, v in obj.items() for p in number_problems(v, source, f"{path}.{k}" if path else str(k))]
    if isinstance(obj, (list, tuple)):
        return [p for i, v in enumerate(obj) for p in number_problems(v, source, f"{path}[{i}]")]
    if isinstance(obj, bool) or not isinstance(obj, (int, float)):
        return []
    key = path.rsplit(".", 1)[-1].split("[", 1)[0]
    if isinstance(obj, float) and not math.isfinite(obj):
        return [f"{source}: {path}: {obj} is not a finite number"]
    limit = BOUNDS.get(key, MAX_MAGNITUDE)
    if abs(obj) > limit:
        return [f"{source}: {path}: {obj:g} is out of range (at most {limit:g})"]
    return []
