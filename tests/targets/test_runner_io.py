"""The runner's input/output handling: full-integer TFLite models get quantized inputs and dequantized outputs,
float16 ONNX inputs get cast, and a device without the runtime gets one JSON error instead of a traceback."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from targets.runner import RUNNER_PATH, bench


def _run_runner(tmp_path: Path, *args: str, blocked: set[str] | None = None) -> dict:
    env = None
    if blocked:
        site = tmp_path / "site"
        site.mkdir(exist_ok=True)
        (site / "sitecustomize.py").write_text(textwrap.dedent(f"""
            import importlib.abc, sys
            class _Block(importlib.abc.MetaPathFinder):
                def find_spec(self, name, path=None, target=None):
                    if name.split(".")[0] in {sorted(blocked)!r}:
                        raise ImportError(f"No module named {{name!r}}")
                    return None
            sys.meta_path.insert(0, _Block())
        """))
        env = {"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, str(RUNNER_PATH), *args], capture_output=True, text=True, env=env,
                          timeout=180, check=False)
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, proc.stdout + proc.stderr
    return {"rc": proc.returncode, **json.loads(lines[0])}


@pytest.mark.tflite
def test_runner_quantizes_int8_tflite_inputs_with_the_tensor_scale_and_zero_point(tiny):
    from ai_edge_litert.interpreter import Interpreter

    art = tiny.artifact("tflite", "int8")
    session = bench.load(art.path, "tflite", 1)
    out = bench.predict(session, tiny.x)[0]
    # the same model driven by hand with the tensors' own quantization parameters gives the same numbers
    interp = Interpreter(model_path=art.path)
    interp.allocate_tensors()
    inp, outp = interp.get_input_details()[0], interp.get_output_details()[0]
    (s_in, z_in), (s_out, z_out) = inp["quantization"], outp["quantization"]
    by_hand, naive = [], []
    for x in tiny.x:
        q = np.clip(np.round(x[None] / s_in) + z_in, -128, 127).astype(np.int8)
        interp.set_tensor(inp["index"], q)
        interp.invoke()
        by_hand.append((interp.get_tensor(outp["index"]).astype(np.float32) - z_out) * s_out)
        interp.set_tensor(inp["index"], x[None].astype(np.int8))  # what a runner without quantization would feed
        interp.invoke()
        naive.append(interp.get_tensor(outp["index"]).astype(np.float32))
    np.testing.assert_array_equal(out, np.concatenate(by_hand))
    assert out.dtype == np.float32
    assert (out.argmax(1) == tiny.ref.argmax(1)).mean() >= 0.93
    assert (np.concatenate(naive).argmax(1) == tiny.ref.argmax(1)).mean() < 0.8
    assert session.io["input_dtype"] == "int8" and session.io["input_quantization"][0] == pytest.approx(s_in)


@pytest.mark.tflite
def test_runner_cli_reports_int8_tflite_accuracy_equal_to_in_process_predictions(tiny, tmp_path):
    art = tiny.artifact("tflite", "int8")
    labels = tiny.ref.argmax(1)
    np.savez(tmp_path / "in.npz", x=tiny.x, y=labels)
    rec = _run_runner(tmp_path, "--artifact", art.path, "--threads", "1", "--warmup", "2", "--min-iterations", "20",
                      "--min-seconds", "0.05", "--inputs", str(tmp_path / "in.npz"), "--outputs",
                      str(tmp_path / "out.npz"))
    in_process = (bench.predict(bench.load(art.path, "tflite", 1), tiny.x)[0].argmax(1) == labels).mean()
    with np.load(tmp_path / "out.npz") as out:
        on_runner = (out["out0"].argmax(1) == labels).mean()
    assert rec["rc"] == 0 and on_runner == pytest.approx(in_process)
    assert rec["io"]["input_dtype"] == "int8" and rec["latency_ms"]["n"] >= 20


@pytest.mark.onnx
def test_runner_casts_float32_inputs_for_a_float16_onnx_model(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Mul", ["input", "two"], ["output"])], "g",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT16, [1, 4])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT16, [1, 4])],
                              [helper.make_tensor("two", TensorProto.FLOAT16, [1], [2.0])])
    path = tmp_path / "half.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    session = bench.load(str(path), "onnx", 1)
    out = session.run(np.array([[0.5, 1.0, -3.0, 8.0]], np.float32))[0]
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [[1.0, 2.0, -6.0, 16.0]])


@pytest.mark.tflite
def test_runner_reports_a_missing_tflite_runtime_as_one_json_error(tiny, tmp_path):
    art = tiny.artifact("tflite", "fp32")
    rec = _run_runner(tmp_path, "--artifact", art.path, "--min-iterations", "1", "--min-seconds", "0",
                      blocked={"ai_edge_litert", "tflite_runtime", "tensorflow"})
    assert rec["rc"] != 0 and "no TFLite interpreter" in rec["error"] and "ai-edge-litert" in rec["error"]


@pytest.mark.tflite
def test_runner_falls_back_to_tflite_runtime_when_ai_edge_litert_is_absent(tiny, monkeypatch):
    """Boards often have only ``tflite_runtime``; it exposes the same Interpreter, here the real one re-exported."""
    import types

    from ai_edge_litert.interpreter import Interpreter

    art = tiny.artifact("tflite", "int8")
    expected = bench.predict(bench.load(art.path, "tflite", 1), tiny.x)[0]
    shim, shim_interp = types.ModuleType("tflite_runtime"), types.ModuleType("tflite_runtime.interpreter")
    shim.__version__, shim_interp.Interpreter = "2.x-test", Interpreter
    shim.interpreter = shim_interp
    monkeypatch.setitem(sys.modules, "ai_edge_litert", None)
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)
    monkeypatch.setitem(sys.modules, "tflite_runtime", shim)
    monkeypatch.setitem(sys.modules, "tflite_runtime.interpreter", shim_interp)
    session = bench.load(art.path, "tflite", 1)
    assert (session.runtime, session.version) == ("tflite_runtime", "2.x-test")
    np.testing.assert_array_equal(bench.predict(session, tiny.x)[0], expected)
