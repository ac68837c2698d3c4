"""The compression stages, run in the fixed order distill -> prune -> quantize; each may be left out.

``run_stages`` is the one entry the orchestrator calls; it returns the final model plus one record per stage for
``summary.json``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn


@dataclass
class StagesResult:
    model: nn.Module                       # what the exporters convert
    teacher: nn.Module                     # the recipe's original model
    calib: np.ndarray                      # calibration inputs handed to every INT8 exporter
    records: list[dict[str, Any]] = field(default_factory=list)   # summary.json "stages"
    export_overrides: dict[str, Any] = field(default_factory=dict)  # extra ExportConfig fields (e.g. from QAT)


def calibration_array(dataset: Any, n: int) -> np.ndarray:
    xs = [dataset[i][0] for i in range(min(n, len(dataset)))]
    return torch.stack(xs).numpy().astype(np.float32)


def run_stages(model: nn.Module, data: dict[str, Any], recipe: Any, run_dir: Path,
               log: Callable[[str], None]) -> StagesResult:
    """Foundation: no stage is implemented yet, the model passes through unchanged."""
    stages = recipe.stages
    n = stages.quantize.calib_samples if stages.quantize else 256
    return StagesResult(model=model, teacher=model, calib=calibration_array(data["calib"], n))
