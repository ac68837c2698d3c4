"""PTQ and QAT (stub: the compression-stages issue implements it)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from targets.schema import StrictModel


class QuantConfig(StrictModel):
    mode: Literal["ptq", "qat"] = "ptq"
    calib_samples: int = Field(default=256, ge=1)
