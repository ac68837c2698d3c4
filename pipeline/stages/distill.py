"""Knowledge distillation (stub: the compression-stages issue implements it)."""

from __future__ import annotations

from pydantic import Field

from targets.schema import StrictModel


class DistillConfig(StrictModel):
    student: str | None = None           # "module:callable"; None = the teacher pruned to `width`, then distilled
    epochs: int = Field(default=8, ge=0)
    temperature: float = Field(default=4.0, gt=0)
    alpha: float = Field(default=0.7, ge=0, le=1)
