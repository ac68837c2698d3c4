"""Every shipped examples/*/recipe.yaml end to end through the real CLI on `local`, as shipped but for the scale knob
(`--scale`, the one documented way to shorten a recipe: README "Scale"), into a fresh folder, on all its backends.

A scenario (`make test-scenarios`, run by CI): minutes per example. Nothing of the recipe is turned off: every stage,
backend and option (the detector's mixed-precision search included) runs; only epochs, sample counts and budgets are
shortened. The examples whose teachers take minutes to train (detect, vit, inspect, yolov8) train a one-epoch
(yolov8: 3) teacher into a temporary cache through their documented hook (EDGEPIPE_<X>_TEACHER_EPOCHS, a file of its
own name, never the real teacher); the others train their real teacher on first use, as a fresh clone does.

Exit codes: 0, or 3 when the only failures are the gate's metric-drop limits -- a shortened training can land under a
gate the full recipe meets (README "Scale"); any other failure, an export error or a traceback fails the test.
"""

from __future__ import annotations

import json

import pytest

from pipeline.recipe.config import load_recipe
from targets.profiles import load_profile
from tests.conftest import assert_artifacts_honest, assert_gate_verdict_only, run_cli
from tests.examples.conftest import EXAMPLES

pytestmark = [pytest.mark.scenario, pytest.mark.slow, pytest.mark.onnx, pytest.mark.openvino, pytest.mark.tflite]

SCALE = "0.1"
# inspect at 0.1 (2 distill epochs from a 1-epoch teacher) gave a 77 %-top-1 student whose onnx-int8 missed the
# recipe's 1-point INT8 check by 0.5 (3 of 200 samples): its check needs the 5 epochs of 0.25
# yolov8 at 0.1 (2 distill epochs from a 1-epoch teacher) gave a near-random student (mAP@0.5:0.95 0.05) whose
# tflite-int8 missed its 1-point INT8 check: it gets 0.25 and a 3-epoch teacher
SCALES = {"inspect": "0.25", "yolov8": "0.25"}
TEACHER_EPOCHS = {"yolov8": "3"}
# examples/lm runs as shipped in tests/examples/test_lm_run.py, with its generation figures checked as well
RECIPES = sorted(p for p in EXAMPLES.glob("*/recipe.yaml") if p.parent.name != "lm")
TEACHER_HOOK = {"detect", "vit", "inspect", "yolov8"}    # examples with EDGEPIPE_<X>_TEACHER_EPOCHS


@pytest.mark.parametrize("path", RECIPES, ids=[p.parent.name for p in RECIPES])
def test_example_recipe_as_shipped_at_scale_runs_every_stage_and_backend_into_a_fresh_folder(path, tmp_path,
                                                                                             monkeypatch):
    example = path.parent.name
    if example in TEACHER_HOOK:
        monkeypatch.setenv(f"EDGEPIPE_{example.upper()}_CACHE", str(tmp_path / "cache"))
        monkeypatch.setenv(f"EDGEPIPE_{example.upper()}_TEACHER_EPOCHS", TEACHER_EPOCHS.get(example, "1"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")   # one torch thread: two thrash on a shared 2-core runner
    out = tmp_path / "fresh" / "run"              # not even its parent exists (issue 22: artifacts/.mixed-XXXX)
    scale = SCALES.get(example, SCALE)
    proc = run_cli("run", str(path), "--device", "local", "--out", str(out), "--scale", scale, timeout=1800)
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    recipe = load_recipe(path)
    summary = json.loads((out / "summary.json").read_text())
    assert_gate_verdict_only(proc, [summary])
    assert summary["scale"]["factor"] == float(scale) and summary["scale"]["full"] is False
    assert [s["name"] for s in summary["stages"]] == [n for n in ("distill", "prune", "quantize")
                                                      if getattr(recipe.stages, n) is not None]
    metric = summary["baseline"]["metric"]["name"]
    arts = {a["name"]: a for a in summary["artifacts"]}
    assert list(arts) == list(recipe.backends or load_profile("local").backends)
    # every artifact on disk with its sha256, scored in the task's metric, valid or saying why, gated by its drop
    assert_artifacts_honest(summary, out, list(arts))
    for name, art in arts.items():
        assert not art.get("error"), (name, art.get("error"))
        assert art["metric"]["name"] == metric and art["latency_ms"]["n"] >= 20, name
        assert (out / art["file"]).is_file(), name
        if recipe.stages.quantize is not None and recipe.stages.quantize.auto_keep_float and name.endswith("-int8"):
            assert art["metadata"]["mixed_precision"]["met"] is True, name     # the search ran, in every runtime
    assert summary["gate"]["metric"] == metric
