"""The scale knob (`--scale F` / `scale: F`, pipeline/recipe/scale.py scale_recipe): it shortens the work of a recipe
and never changes what runs, and a scaled run says so in summary.json and its recipe.yaml."""

from __future__ import annotations

import json

import pytest
import yaml

from pipeline.recipe.config import load_recipe
from pipeline.recipe.scale import SCALED_FIELDS
from tests.conftest import ROOT, run_cli
from tests.pipeline.test_any_model import DATA, MODELS, RECIPE

EXAMPLE_RECIPES = sorted((ROOT / "examples").glob("*/recipe.yaml"))


def _without_scaled_fields(recipe) -> dict:
    d = recipe.model_dump(mode="json")
    for path in [*SCALED_FIELDS, "scale"]:
        node: object = d
        for part in path.split(".")[:-1]:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(path.split(".")[-1], None)
    return d


@pytest.mark.parametrize("path", EXAMPLE_RECIPES, ids=[p.parent.name for p in EXAMPLE_RECIPES])
def test_scale_changes_only_epochs_samples_and_budgets_of_every_example(path):
    full, short = load_recipe(path), load_recipe(path, ["scale=0.1"])
    assert _without_scaled_fields(short) == _without_scaled_fields(full)   # every stage, backend, option kept
    assert short.backends == full.backends and short.stages.model_fields_set == full.stages.model_fields_set
    for name in ("distill", "prune", "quantize"):
        assert (getattr(short.stages, name) is None) == (getattr(full.stages, name) is None)
    assert short.data.eval_samples == min(full.data.eval_samples, max(200, round(full.data.eval_samples * 0.1)))
    if full.stages.distill is not None:
        assert 1 <= short.stages.distill.epochs < full.stages.distill.epochs
    record = short.scale_record()
    assert record["factor"] == 0.1 and record["full"] is False and record["changed"]
    assert load_recipe(path).scale_record() == {"factor": 1.0, "full": True, "changed": {}}


def test_scale_rule_rounds_half_up_with_floors_and_keeps_zero_epochs_zero(digits_recipe):
    r = load_recipe(digits_recipe, ["scale=0.01", "stages.prune.finetune_epochs=0", "stages.distill.epochs=50"])
    assert r.stages.distill.epochs == 1                    # max(1, round(0.5)) -- never 0: the stage still trains
    assert r.stages.prune.finetune_epochs == 0             # a recipe with no fine-tuning keeps none
    assert r.data.eval_samples == 200 and r.stages.quantize.sensitivity_samples == 200   # what checks measure on
    assert r.stages.quantize.calib_samples == 32                                         # the calibration floor
    assert r.stages.prune.guard_iterations == 10 and r.search.budget.candidates == 1
    half = load_recipe(digits_recipe, ["scale=0.25", "stages.distill.epochs=10"])
    assert half.stages.distill.epochs == 3                 # 2.5 rounds up, not to the even 2
    assert half.as_written()["stages"]["distill"]["epochs"] == 10 and half.as_written()["scale"] == 0.25


@pytest.mark.parametrize("value", ["0", "1.5", "abc"])
def test_scale_flag_outside_zero_to_one_exits_2_in_one_line(digits_recipe, value):
    proc = run_cli("check", str(digits_recipe), "--scale", value)
    assert proc.returncode == 2 and "--scale: expected a factor in (0, 1]" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_scaled_run_records_its_scale_in_summary_and_writes_the_recipe_unapplied(write_recipe, tmp_path):
    text = RECIPE.format(data="splits", metric="cosine").replace("finetune_epochs: 0", "finetune_epochs: 4")
    path = write_recipe(text.replace("max_metric_drop: 0.01", "max_metric_drop: 1.0"),
                        {"models.py": MODELS, "data.py": DATA})
    out = tmp_path / "run"
    proc = run_cli("run", str(path), "--device", "local", "--out", str(out), "--scale", "0.5")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "WARNING: scale 0.5: a shortened run" in proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["scale"]["factor"] == 0.5 and summary["scale"]["full"] is False
    assert summary["scale"]["changed"]["stages.prune.finetune_epochs"] == [4, 2]
    written = yaml.safe_load((out / "recipe.yaml").read_text())
    assert written["scale"] == 0.5 and written["stages"]["prune"]["finetune_epochs"] == 4   # not scaled twice
    again = path.with_name("again.yaml")                    # next to the recipe's models.py and data.py
    again.write_text((out / "recipe.yaml").read_text())
    assert load_recipe(again).stages.prune.finetune_epochs == 2
