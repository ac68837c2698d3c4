"""The typed config every export adapter takes; the pipeline fills it from the recipe's quantize stage."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from targets.schema import StrictModel


class ExportConfig(StrictModel):
    precision: Literal["fp32", "fp16", "int8"] = "fp32"
    name: str = "model"                      # file stem: <name>.<precision>.<suffix>
    parent: str | None = None                # sha256 or name of what this was exported from (lineage)
    opset: int = Field(default=18, ge=13)
    calibration: Literal["minmax", "percentile", "entropy"] = "minmax"
    calib_samples: int = Field(default=256, ge=1)
    per_channel: bool = True
    keep_float: list[str] = Field(default_factory=list)  # layer names to leave in float
