"""The scale knob (`--scale F` / `scale: F`, README "Scale"): one rule that shortens the work of any recipe --
epochs, sample counts, guard and search budgets -- and never what runs. pipeline/recipe/config.py applies it when a
recipe loads."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipeline.recipe.config import Recipe

# One rule for every recipe (README "Scale"): epoch counts -> max(1, round(e * F)) (0 stays 0: a stage with no
# epochs keeps none); sample counts -> max(min(n, floor), round(n * F)), the floor MEASURE_FLOOR for the samples a
# check or a search measures on (at 200 one sample is 0.5 point, under every example's tolerance; at 50 one flip
# failed inspect's 1-point INT8 check) and CALIB_FLOOR for calibration; the latency guard's iterations ->
# max(10, round(i * F)) and its seconds x F; the search budget -> max(1, round(candidates * F)) measurements and
# minutes x F. Rounding is half up. Nothing is switched off: every stage, backend and option of the recipe still runs.
MEASURE_FLOOR = 200
CALIB_FLOOR = 32
_EPOCHS = ("stages.distill.epochs", "stages.prune.finetune_epochs", "stages.quantize.epochs")
_SAMPLES = {"data.eval_samples": MEASURE_FLOOR, "stages.quantize.sensitivity_samples": MEASURE_FLOOR,
            "stages.quantize.calib_samples": CALIB_FLOOR}


def _half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


def scaled_value(path: str, value: Any, factor: float) -> Any:
    """``value`` of the recipe field ``path`` at scale ``factor`` (the rule above); other fields come back as is."""
    if value is None or factor == 1.0:
        return value
    if path in _EPOCHS:
        return 0 if value == 0 else max(1, _half_up(value * factor))
    if path in _SAMPLES:
        return max(min(value, _SAMPLES[path]), _half_up(value * factor))
    if path == "stages.prune.guard_iterations":
        return max(10, _half_up(value * factor))
    if path == "search.budget.candidates":
        return max(1, _half_up(value * factor))
    if path == "stages.prune.guard_seconds":
        return round(value * factor, 3)
    if path == "search.budget.minutes":
        return max(0.01, round(value * factor, 3))
    return value


SCALED_FIELDS = (*_EPOCHS, *_SAMPLES, "stages.prune.guard_iterations", "stages.prune.guard_seconds",
                 "search.budget.candidates", "search.budget.minutes")


def scale_recipe(recipe: Recipe) -> Recipe:
    """Apply ``recipe.scale`` in place to the fields of SCALED_FIELDS that the recipe has (defaults included)."""
    recipe._as_written = recipe.model_dump(mode="json")
    if recipe.scale == 1.0:
        return recipe
    for path in SCALED_FIELDS:
        parts = path.split(".")
        node: Any = recipe
        for part in parts[:-1]:
            node = getattr(node, part, None) if node is not None else None
        if node is None:
            continue
        old = getattr(node, parts[-1])
        new = scaled_value(path, old, recipe.scale)
        if new != old:
            setattr(node, parts[-1], new)
            recipe._scaled[path] = [old, new]
    return recipe
