"""The runner's trust rules: device state, provider fallback and the environment fingerprint make a figure honest."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from targets.artifact import Artifact
from targets.device import benchmark
from targets.profiles import load_profile
from targets.runner import bench

pytestmark = pytest.mark.onnx


def state(throttled: str | None = None, power: str | None = None, governor: str | None = "performance") -> dict:
    return {"throttled": bench.parse_throttled(throttled), "power_mode": power, "governor": governor}


def test_state_invalid_when_sticky_throttle_flag_appears_during_run():
    reasons, _ = bench.state_problems(state("throttled=0x0"), state("throttled=0x40000"))
    assert reasons and "during the run" in reasons[0] and "0x40000" in reasons[0]


def test_state_valid_when_sticky_flag_was_already_set_before_run():
    reasons, _ = bench.state_problems(state("throttled=0x50000"), state("throttled=0x50000"))
    assert reasons == []


def test_state_invalid_when_throttling_now():
    reasons, _ = bench.state_problems(state("throttled=0x4"), state("throttled=0x0"))
    assert reasons == ["device throttled before the run (0x4)"]


def test_state_invalid_when_power_mode_changes():
    reasons, _ = bench.state_problems(state(power="NV Power Mode: MAXN"), state(power="NV Power Mode: 15W"))
    assert reasons and "power mode changed" in reasons[0]


def test_state_warns_when_governor_not_performance():
    reasons, warnings = bench.state_problems(state(governor="ondemand"), state(governor="ondemand"))
    assert reasons == [] and "ondemand" in warnings[0]


def test_state_warns_when_load_exceeds_cpus():
    busy = {**state(), "loadavg": [999.0, 1.0, 1.0]}
    reasons, warnings = bench.state_problems(busy, state())
    assert reasons == [] and any("load average 999.0" in w for w in warnings)


def test_state_warns_when_cpu_clock_falls_during_run():
    reasons, warnings = bench.state_problems({**state(), "cpu_mhz": 2400.0}, {**state(), "cpu_mhz": 1500.0})
    assert reasons == [] and any("2400 to 1500 MHz" in w for w in warnings)


def test_provider_fallback_flagged_when_cuda_requested_but_cpu_used():
    why = bench.provider_fallback("onnx", ["CUDAExecutionProvider", "CPUExecutionProvider"], ["CPUExecutionProvider"])
    assert why and "CUDAExecutionProvider" in why
    assert bench.provider_fallback("onnx", ["CPUExecutionProvider"], ["CPUExecutionProvider"]) is None
    assert bench.provider_fallback("tflite", ["CUDAExecutionProvider"], ["cpu"]) is None


def _tiny(path: Path) -> Path:
    w = helper.make_tensor("w", TensorProto.FLOAT, [8, 2], np.ones(16, np.float32))
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "t",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])], initializer=[w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def _profile(tmp_path: Path, providers: list[str], min_iterations: int = 20, max_seconds: float = 5) -> Path:
    f = tmp_path / "here.yaml"
    f.write_text(f"name: here\nconnection: {{transport: local}}\npython: current\nworkdir: {tmp_path / 'wd'}\n"
                 f"backends: [onnx-fp32]\nruntime: {{threads: 1, onnx_providers: {providers}}}\n"
                 f"bench: {{warmup: 1, min_iterations: {min_iterations}, min_seconds: 0.05, "
                 f"max_seconds: {max_seconds}}}\n")
    return f


def test_local_run_invalid_when_requested_cuda_silently_falls_back(tmp_path):
    art = Artifact.from_files(_tiny(tmp_path / "t.onnx"), backend="onnx", precision="fp32")
    prof = load_profile(str(_profile(tmp_path, ["CUDAExecutionProvider", "CPUExecutionProvider"])))
    rec = benchmark(prof, art)
    assert rec["valid"] is False and any("CUDAExecutionProvider" in r for r in rec["invalid_reasons"])
    env = rec["environment"]
    assert env["providers"] == ["CPUExecutionProvider"] and env["runtime"].startswith("onnxruntime")
    assert env["requested_providers"] == ["CUDAExecutionProvider", "CPUExecutionProvider"] and env["kernel"]


def test_local_run_valid_and_leaves_workdir_clean_when_rules_met(tmp_path):
    art = Artifact.from_files(_tiny(tmp_path / "t.onnx"), backend="onnx", precision="fp32")
    prof = load_profile(str(_profile(tmp_path, ["CPUExecutionProvider"])))
    rec = benchmark(prof, art)
    assert rec["valid"] is True and rec["latency_ms"]["n"] >= 20 and rec["invalid_reasons"] == []
    assert list((tmp_path / "wd").iterdir()) == []  # job folder removed and local lock released
