from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.recipe.config import Gate
from pipeline.results.gate import apply_gate, evaluate_gate, raise_for_gate
from targets.errors import GateError
from tests.pipeline.runfolder import make_run

PASSING = {"onnx-fp32": (0.981, 0.110, 4), "onnx-int8": (0.978, 0.061, 1), "openvino-int8": (0.975, 0.052, 1)}


def _summary(tmp_path: Path, **kw) -> dict:
    return json.loads((make_run(tmp_path / "run", **kw) / "summary.json").read_text())


def test_evaluate_gate_passes_when_every_artifact_meets_limits(tmp_path: Path) -> None:
    block = evaluate_gate(_summary(tmp_path, figures=PASSING), Gate(max_accuracy_drop=1.0), "local")
    assert block["passed"] is True
    assert block["failures"] == []
    assert block["checked"] == ["onnx-fp32", "onnx-int8", "openvino-int8"]
    assert all(v["passed"] for v in block["artifacts"])


def test_evaluate_gate_fails_naming_artifact_and_figure_when_accuracy_drops(tmp_path: Path) -> None:
    figures = {**PASSING, "onnx-int8": (0.951, 0.061, 1)}
    block = evaluate_gate(_summary(tmp_path, figures=figures), {"max_accuracy_drop": 1.0}, "local")
    assert block["passed"] is False
    assert block["failures"] == ["onnx-int8: accuracy 0.951 is 3.2 points below baseline 0.983 (max 1)"]
    verdicts = {v["artifact"]: v["passed"] for v in block["artifacts"]}
    assert verdicts == {"onnx-fp32": True, "onnx-int8": False, "openvino-int8": True}


def test_evaluate_gate_fails_when_an_export_failed(tmp_path: Path) -> None:
    block = evaluate_gate(_summary(tmp_path), {"max_accuracy_drop": 1.0}, "local")
    assert block["passed"] is False
    assert any(f.startswith("tflite-int8: failed before it could be measured") for f in block["failures"])


def test_evaluate_gate_fails_on_latency_and_size_limits(tmp_path: Path) -> None:
    summary = _summary(tmp_path, figures=PASSING)
    block = evaluate_gate(summary, Gate(max_accuracy_drop=1.0, max_latency_ms=0.1, max_bytes=2000), "rpi5")
    text = "\n".join(block["failures"])
    assert "onnx-fp32: p90 latency 0.132 ms on rpi5 exceeds 0.1 ms" in text
    assert "onnx-fp32: size" in text and "exceeds 2000 bytes" in text
    assert not any(f.startswith("onnx-int8") for f in block["failures"])


def test_evaluate_gate_fails_latency_when_measurement_invalid(tmp_path: Path) -> None:
    summary = _summary(tmp_path, figures=PASSING, invalid={"onnx-int8": ["device throttled after the run (0x4)"]})
    block = evaluate_gate(summary, {"max_accuracy_drop": 1.0, "max_latency_ms": 10.0}, "rpi5")
    assert block["failures"] == ["onnx-int8: latency on rpi5 is not a valid measurement (device throttled after the "
                                 "run (0x4)), so p90 0.0732 ms cannot be checked against 10 ms"]


def test_evaluate_gate_fails_when_no_artifact_was_produced(tmp_path: Path) -> None:
    summary = _summary(tmp_path, figures=PASSING)
    summary["artifacts"] = []
    assert evaluate_gate(summary, {}, "local")["passed"] is False


def test_evaluate_gate_passes_at_exact_limit(tmp_path: Path) -> None:
    summary = _summary(tmp_path, figures={"onnx-int8": (0.973, 0.05, 1)})
    assert evaluate_gate(summary, {"max_accuracy_drop": 1.0}, "local")["passed"] is True


def test_raise_for_gate_raises_gate_error_with_exit_code_3(tmp_path: Path) -> None:
    summary = _summary(tmp_path, figures={**PASSING, "onnx-int8": (0.951, 0.061, 1)})
    block = apply_gate(summary, {"max_accuracy_drop": 1.0}, "local")
    assert summary["artifacts"][1]["gate"]["passed"] is False
    with pytest.raises(GateError) as info:
        raise_for_gate(block)
    assert info.value.exit_code == 3
    assert "onnx-int8" in str(info.value) and "accuracy 0.951" in str(info.value)
    raise_for_gate(evaluate_gate(_summary(tmp_path / "ok", figures=PASSING), {}, "local"))  # passing: no error
