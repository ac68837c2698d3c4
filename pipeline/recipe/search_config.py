"""The recipe's ``search:`` section (DESIGN §3): its schema and the check of every value against the stage configs.

It lives with the recipe because ``edgepipe check`` validates it with the rest; the search (pipeline/search) expands
it into candidates.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator

from pipeline.stages.distill import DistillConfig
from pipeline.stages.prune import PruneConfig
from pipeline.stages.quantize import QuantConfig
from targets import BACKENDS
from targets.schema import StrictModel, closest

STAGE_CONFIGS: dict[str, type[StrictModel]] = {"distill": DistillConfig, "prune": PruneConfig,
                                               "quantize": QuantConfig}
STAGE_ORDER = ("distill", "prune", "quantize")
class Budget(StrictModel):
    candidates: int | None = Field(default=24, ge=1)   # device measurements per device (cached ones count too)
    minutes: float | None = Field(default=60.0, gt=0)  # wall time of one `edgepipe search` invocation


class SearchConfig(StrictModel):
    space: dict[str, list[Any]] = Field(default_factory=dict)
    budget: Budget = Field(default_factory=Budget)
    strategy: Literal["halving", "exhaustive"] = "halving"
    eta: int = Field(default=2, ge=2, le=8)             # successive halving keeps the fastest 1/eta backends
    confirm_rounds: int = Field(default=3, ge=0, le=20)  # interleaved rounds of chosen vs recipe vs original FP32

    @field_validator("space")
    @classmethod
    def _known_keys(cls, space: dict[str, list[Any]]) -> dict[str, list[Any]]:
        problems = []
        for key, values in space.items():
            if not values:
                problems.append(f"{key}: give at least one value")
            if len({json.dumps(v, sort_keys=True, default=str) for v in values}) != len(values):
                problems.append(f"{key}: a value is listed twice")
            if key == "backends":
                bad = [b for b in values if b not in BACKENDS]
                if bad:
                    problems.append(f"backends: unknown {bad}; choose from {', '.join(BACKENDS)}")
                continue
            stage, _, fld = key.partition(".")
            if stage not in STAGE_CONFIGS or not fld:
                problems.append(f"{key!r}: expected 'backends' or 'STAGE.FIELD' with STAGE one of "
                                f"{', '.join(STAGE_ORDER)} (e.g. prune.ratio)")
            elif fld not in STAGE_CONFIGS[stage].model_fields:
                near = closest(fld, tuple(STAGE_CONFIGS[stage].model_fields))
                problems.append(f"{key!r}: {stage} has no field {fld!r}; "
                                + (f"did you mean '{stage}.{near}'? " if near else "")
                                + f"choose from {', '.join(STAGE_CONFIGS[stage].model_fields)}")
        if problems:
            raise ValueError("; ".join(problems))
        return space


def space_problems(search: SearchConfig, stages: Any) -> list[str]:
    """Every value that would not make a valid stage config, checked against the recipe's own stage settings."""
    problems = []
    for key, values in search.space.items():
        if key == "backends":
            continue
        stage, _, fld = key.partition(".")
        base = getattr(stages, stage)
        base_dict = base.model_dump() if base is not None else {}
        for v in values:
            if (stage, fld, v) == ("quantize", "mode", "none"):
                continue
            try:
                STAGE_CONFIGS[stage].model_validate({**base_dict, fld: v})
            except ValidationError as exc:
                msg = exc.errors()[0]["msg"]
                problems.append(f"search.space.{key}: value {v!r}: {msg}")
    return problems
