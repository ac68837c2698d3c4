"""Dependency-aware structured pruning (stub: the compression-stages issue implements it)."""

from __future__ import annotations

from pydantic import Field

from targets.schema import StrictModel


class PruneConfig(StrictModel):
    ratio: float = Field(default=0.5, ge=0, lt=1)
    round_to: int = Field(default=8, ge=1)
    finetune_epochs: int = Field(default=3, ge=0)
