"""The on-device runner: its statistics, its timing rules, and that it needs neither torch nor this repository."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from targets.runner import RUNNER_PATH, bench


def test_latency_stats_match_numpy_percentiles():
    rng = np.random.default_rng(3)
    samples = list(rng.gamma(2.0, 0.5, size=1001))
    stats = bench.latency_stats(samples)
    assert stats["n"] == 1001
    for key, q in (("p50", 50), ("p90", 90), ("p99", 99)):
        assert stats[key] == pytest.approx(np.percentile(samples, q), abs=1e-4)
    assert stats["mean"] == pytest.approx(np.mean(samples), abs=1e-4)
    assert stats["std"] == pytest.approx(np.std(samples, ddof=1), abs=1e-4)
    assert stats["p50"] <= stats["p90"] <= stats["p99"] <= stats["max"]


def test_latency_stats_refuses_an_empty_sample():
    with pytest.raises(bench.RunnerError):
        bench.latency_stats([])


def _sleepy_session(ms: float) -> bench.Session:
    import time

    def run(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        time.sleep(ms / 1000)
        return [np.zeros((len(feeds["input"]), 10), dtype=np.float32)]

    return bench.Session(run, inputs=[{"name": "input", "shape": [1, 4], "dtype": np.dtype(np.float32)}],
                         runtime="fake", version="0")


def test_time_session_meets_both_iteration_and_time_minimums():
    samples = bench.time_session(_sleepy_session(1.0), np.zeros((3, 4), np.float32), warmup=2,
                                 min_iterations=20, min_seconds=0.15, max_seconds=5)
    assert len(samples) >= 20
    assert sum(samples) >= 100  # ms: at least ~min_seconds of timed work
    assert min(samples) >= 0.9


def test_time_session_stops_at_max_seconds_with_fewer_iterations():
    samples = bench.time_session(_sleepy_session(20.0), np.zeros((1, 4), np.float32), warmup=0,
                                 min_iterations=1000, min_seconds=0, max_seconds=0.2)
    assert 3 <= len(samples) < 1000


def test_time_session_warmup_stops_at_max_seconds_too():
    import time

    start = time.monotonic()
    samples = bench.time_session(_sleepy_session(5.0), np.zeros((1, 4), np.float32), warmup=1000,
                                 min_iterations=20, min_seconds=0, max_seconds=0.2)
    assert time.monotonic() - start < 1.5  # not 1000 warm-up calls (5 s) before the cap is even looked at
    assert 1 <= len(samples) < 20


def test_parse_throttled_reads_now_and_since_boot_bits():
    assert bench.parse_throttled("throttled=0x0") == {"raw": "0x0", "now": False, "since_boot": False,
                                                      "throttling_now": False, "under_voltage_now": False}
    flags = bench.parse_throttled("throttled=0x50005")
    assert flags["now"] and flags["since_boot"] and flags["throttling_now"] and flags["under_voltage_now"]
    assert bench.parse_throttled("garbage") is None


def test_runner_source_imports_only_stdlib_numpy_and_runtimes():
    tree = ast.parse(RUNNER_PATH.read_text())
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            roots.add(node.module.split(".")[0])
    allowed_third_party = {"numpy", "onnxruntime", "openvino", "tflite_runtime", "ai_edge_litert", "tensorflow",
                           "tensorrt"}  # tensorrt: only its version, for the engine cache key
    third_party = {r for r in roots if r not in sys.stdlib_module_names}
    assert third_party <= allowed_third_party, third_party
    assert not roots & {"torch", "pipeline", "targets"}


BLOCKER = """
import importlib.abc, sys
class _Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"torch", "pipeline", "targets"}:
            raise ImportError(f"blocked import of {name} (the runner must not need it)")
        return None
sys.meta_path.insert(0, _Block())
"""


@pytest.mark.onnx
def test_runner_runs_a_real_onnx_model_where_torch_cannot_be_imported(tmp_path: Path):
    import onnx
    from onnx import TensorProto, helper

    w = np.eye(4, 10, dtype=np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["input", "w"], ["output"])], "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 10])],
        [helper.make_tensor("w", TensorProto.FLOAT, w.shape, w.flatten())])
    model_path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), model_path)
    x = np.zeros((6, 4), np.float32)
    x[np.arange(6), np.arange(6) % 4] = 1.0
    np.savez(tmp_path / "in.npz", x=x, y=np.arange(6) % 4)
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(textwrap.dedent(BLOCKER))
    runner = tmp_path / "bench.py"
    runner.write_text(RUNNER_PATH.read_text())
    env = {"PYTHONPATH": str(tmp_path / "site"), "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, str(runner), "--artifact", str(model_path), "--threads", "1",
                           "--warmup", "2", "--min-iterations", "30", "--min-seconds", "0.05", "--inputs",
                           str(tmp_path / "in.npz"), "--outputs", str(tmp_path / "out.npz")],
                          capture_output=True, text=True, env=env, cwd=tmp_path,
                          timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1
    rec = json.loads(lines[0])
    assert rec["latency_ms"]["n"] >= 30
    with np.load(tmp_path / "out.npz") as out:   # raw outputs for the host to score; the runner knows no metric
        assert (out["out0"].argmax(1) == np.arange(6) % 4).all() and rec["outputs"]["n"] == 6
    assert rec["runtime"].startswith("onnxruntime ")
    assert rec["valid"] is True
    # the blocker really was active in that interpreter
    check = subprocess.run([sys.executable, "-c", "import torch"], capture_output=True, text=True, env=env,
                           timeout=60, check=False)
    assert check.returncode != 0 and "blocked import of torch" in check.stderr


def test_runner_reports_a_missing_artifact_as_one_json_error(tmp_path: Path):
    proc = subprocess.run([sys.executable, str(RUNNER_PATH), "--artifact", str(tmp_path / "nope.onnx")],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode != 0
    rec = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "error" in rec
