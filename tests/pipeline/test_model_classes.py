"""Issue 21's model classes, each trained here in seconds on sklearn digits, end to end on all six backends
(onnx / openvino / tflite x fp32 / int8) through the real CLI: a time-major conv + BiLSTM reader ``(T, B, C)``
scored per position, a three-output detector (boxes + scores + landmarks) scored by mAP@0.5, and a batch-first LSTM
classifier scored by top-1, and examples/tokens' attention encoder with two int64 inputs (its teacher; the shipped
chain at --scale is tests/examples/test_recipes_run.py). YOLOv8 is tests/examples/test_detect.py.

A scenario (~1 min a model on 2 contended cores). Each artifact must exist with its sha256, carry the task's own
metric, a validity verdict, and a gate verdict that is its metric drop against the limit
(tests/conftest.py assert_artifacts_honest); the FP32 artifacts must score what the PyTorch model scores."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import ROOT, SIX, assert_artifacts_honest, run_cli

pytestmark = [pytest.mark.scenario, pytest.mark.slow, pytest.mark.onnx, pytest.mark.openvino, pytest.mark.tflite]

FIXTURES = ROOT / "tests" / "fixtures"
# case -> (recipe, extra --set, the trained model's floor in its metric, well above chance, the outputs' batch axes);
# tokens: the attention encoder with two int64 inputs, its trained teacher alone (stages={}; the shipped chain at
# --scale is tests/examples/test_recipes_run.py, where a shortened distillation may miss the gate)
CASES = {"seq_digits": (FIXTURES / "seq_digits" / "recipe.yaml", [], 0.5, [1]),
         "faces3": (FIXTURES / "faces3" / "recipe.yaml", [], 0.85, [0, 0, 0]),
         "lstm_digits": (FIXTURES / "lstm_digits" / "recipe.yaml", [], 0.85, [0]),
         "tokens": (ROOT / "examples" / "tokens" / "recipe.yaml", ["--set", "stages={}"], 0.85, [0])}


@pytest.mark.parametrize("fixture", list(CASES))
def test_model_class_runs_end_to_end_on_all_six_backends_with_honest_gates(fixture: str, tmp_path: Path,
                                                                           monkeypatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    recipe, extra, floor, axes = CASES[fixture]
    out = tmp_path / "run"
    proc = run_cli("run", str(recipe), "--device", "local", "--out", str(out),
                   "--set", f"backends=[{', '.join(SIX)}]", *extra, timeout=1800)
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert_artifacts_honest(summary, out, SIX)
    base = summary["baseline"]["metric"]["value"]
    assert base > floor, base                                      # a trained model, not chance
    by = {a["name"]: a for a in summary["artifacts"]}
    assert not [n for n, a in by.items() if a.get("error")], {n: a["error"] for n, a in by.items() if a.get("error")}
    for name in ("onnx-fp32", "openvino-fp32", "tflite-fp32"):     # float artifacts read outputs as torch does
        assert by[name]["metric"]["value"] == pytest.approx(base, abs=1e-3), name
    for name in ("onnx-int8", "openvino-int8", "tflite-int8"):
        assert by[name]["precision"] == "int8" and by[name]["bytes"] > 0, name
    assert proc.returncode == (0 if summary["gate"]["passed"] else 3), proc.stderr[-3000:]
    assert summary["gate"]["passed"], summary["gate"]["failures"]   # every INT8 keeps its metric within the gate
    with np.load(out / "inputs" / "eval.npz") as f:
        assert (f["__batch_axes__"].tolist() if "__batch_axes__" in f.files else [0] * len(axes)) == axes


def test_time_major_tflite_int8_mixed_precision_search_ranks_in_the_simulator_and_meets_its_limit(tmp_path: Path,
                                                                                                  monkeypatch) -> None:
    """auto_keep_float on tflite-int8 ranks its tries in the torch simulator, which must hand the time-major
    ``(T, B, C)`` outputs on samples first as the runtime does (it stacked them on axis 0); the choice, measured in
    LiteRT, meets the limit and the artifact its gate."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    out = tmp_path / "run"
    proc = run_cli("run", str(FIXTURES / "seq_digits" / "recipe.yaml"), "--device", "local", "--out", str(out),
                   "--set", "backends=[tflite-fp32, tflite-int8]",
                   "--set", "stages={quantize: {mode: ptq, auto_keep_float: true, max_drop: 0.1}}", timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert_artifacts_honest(summary, out, ["tflite-fp32", "tflite-int8"])
    mp = next(a for a in summary["artifacts"] if a["name"] == "tflite-int8")["metadata"]["mixed_precision"]
    assert mp["measured_in"].startswith("ranking and search simulated in torch") and mp["met"] is True
    assert mp["ranking"] and mp["drop"] <= 0.1 and mp["fp32_score"] > 50       # points of positions read right
    assert abs(mp["ranking"][0]["score"] - mp["fp32_score"]) < 5   # simulated scores on the same, aligned samples
