"""Each field scenario's recipe end to end through the real CLI on `local`, from a clean clone.

The teacher is trained from scratch into a temporary cache (EDGEPIPE_<X>_TEACHER_EPOCHS=1: a short teacher, cached
under its own name so it never replaces the real one) and every stage runs on a cut budget (--set): the point is that
the recipe's chain runs, each stage leaves its record and the INT8 artifact is checked and scored in the example's
own metric, not the example's final figures (benchmarks/scenarios.py prints those).
"""

from __future__ import annotations

import json

import pytest

from tests.conftest import run_cli
from tests.examples.conftest import EXAMPLES

pytestmark = [pytest.mark.slow, pytest.mark.onnx]

CUT = ["--set", "stages.distill.epochs=1", "--set", "backends=[onnx-int8]"]
PRUNE = ["--set", "stages.prune.finetune_epochs=1", "--set", "stages.prune.latency_guard=false"]
CASES = {   # example: (metric, eval samples, stages, extra overrides)
    "inspect": ("top1", 120, ["distill", "prune", "quantize"], PRUNE),
    "vit": ("top1", 120, ["distill", "prune", "quantize"], PRUNE),
    # the recipe's mixed-precision search is left to tests/targets/test_mixed_precision.py (a minute per backend)
    "detect": ("map50_95", 40, ["distill", "quantize"], ["--set", "stages.distill.batch_size=64",
                                                         "--set", "stages.quantize.auto_keep_float=false"]),
}


@pytest.mark.parametrize("example", list(CASES))
def test_scenario_recipe_runs_its_chain_to_int8_from_a_fresh_teacher(example, tmp_path, monkeypatch):
    metric, samples, stages, extra = CASES[example]
    monkeypatch.setenv(f"EDGEPIPE_{example.upper()}_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv(f"EDGEPIPE_{example.upper()}_TEACHER_EPOCHS", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")   # one torch thread: two thrash on a shared 2-core runner
    out = tmp_path / "run"
    proc = run_cli("run", str(EXAMPLES / example / "recipe.yaml"), "--device", "local", "--out", str(out),
                   *CUT, "--set", f"data.eval_samples={samples}", *extra, timeout=900)
    assert proc.returncode in (0, 3), proc.stderr[-3000:]
    assert list((tmp_path / "cache").glob("teacher-v*-e1.pt")), "the teacher was not trained from scratch"
    summary = json.loads((out / "summary.json").read_text())
    assert [s["name"] for s in summary["stages"]] == stages
    assert summary["baseline"]["metric"]["name"] == metric
    [art] = summary["artifacts"]
    assert art["name"] == "onnx-int8" and not art.get("error"), art.get("error")
    assert art["metric"]["name"] == metric and 0.0 <= art["metric"]["value"] <= 1.0
    assert art["latency_ms"]["n"] >= 20
    assert summary["gate"]["metric"] == metric and (proc.returncode == 0) == summary["gate"]["passed"]
