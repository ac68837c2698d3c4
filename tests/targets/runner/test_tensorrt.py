"""TensorRT EP options and engine cache (the Jetson profiles). No GPU runtime runs here: these tests check what the
runner hands to ONNX Runtime and what it records; what only a board can show is listed in the README."""

from __future__ import annotations

import os
import shutil
import time

import pytest

from targets.device import runner_argv
from targets.profiles import load_profile
from targets.runner import bench

pytestmark = pytest.mark.onnx
JETSON_PROVIDERS = "TensorrtExecutionProvider,CUDAExecutionProvider,CPUExecutionProvider"


def test_tensorrt_options_follow_the_artifact_precision(tmp_path):
    fp16, int8, fp32 = (bench.tensorrt_options(p, str(tmp_path)) for p in ("fp16", "int8", "fp32"))
    assert fp16["trt_fp16_enable"] and not fp16["trt_int8_enable"]
    assert int8["trt_int8_enable"] and not int8["trt_fp16_enable"]
    assert not fp32["trt_fp16_enable"] and not fp32["trt_int8_enable"]
    for opts in (fp16, int8, fp32):
        assert opts["trt_engine_cache_enable"] and opts["trt_engine_cache_path"] == str(tmp_path)
        assert opts["trt_timing_cache_enable"] and opts["trt_timing_cache_path"] == str(tmp_path)


def test_device_passes_the_artifact_precision_to_the_runner():
    profile = load_profile("jetson-orin-nano")
    argv = runner_argv(profile, "python3", "/w/job-1", "m.fp16.onnx", "onnx", None, "fp16")
    assert argv[argv.index("--precision") + 1] == "fp16"
    assert argv[argv.index("--providers") + 1] == JETSON_PROVIDERS


class _Spy:
    """Wraps the real onnxruntime.InferenceSession and keeps what it was given."""

    calls: list[dict] = []

    def __init__(self, real):
        self.real = real

    def __call__(self, path, sess_options=None, providers=None, **kw):
        self.calls.append({"path": path, "providers": providers})
        return self.real(path, sess_options=sess_options, providers=providers, **kw)


def _job(tmp_path, artifact, name):
    job = tmp_path / "workdir" / f"job-{name}"
    job.mkdir(parents=True)
    return shutil.copy(artifact.path, job / f"tiny.{name}.onnx")


@pytest.mark.parametrize("precision", ["int8", "fp32"])
def test_tensorrt_options_reach_onnxruntime_and_are_recorded(tiny, tmp_path, monkeypatch, precision):
    import onnxruntime as ort

    # Pretend the TensorRT EP is compiled in (as in onnxruntime-gpu on a Jetson) so the runner asks for it; the
    # real ORT here has no such EP, ignores it with a warning, and the run falls back to the CPU (and says so).
    path = _job(tmp_path, tiny.artifact("onnx", precision), precision)  # exported first: export opens sessions too
    monkeypatch.setattr(ort, "get_available_providers", lambda: [*JETSON_PROVIDERS.split(",")])
    spy = _Spy(ort.InferenceSession)
    spy.calls = []
    monkeypatch.setattr(ort, "InferenceSession", spy)
    args = bench.build_parser().parse_args(["--artifact", str(path), "--backend", "onnx", "--threads", "1",
                                            "--warmup", "1", "--min-iterations", "3", "--min-seconds", "0",
                                            "--providers", JETSON_PROVIDERS])
    rec = bench.benchmark(args)

    (call,) = spy.calls
    trt_name, trt_opts = call["providers"][0]
    assert trt_name == "TensorrtExecutionProvider" and call["providers"][1:] == ["CUDAExecutionProvider",
                                                                                 "CPUExecutionProvider"]
    assert trt_opts["trt_int8_enable"] is (precision == "int8") and trt_opts["trt_fp16_enable"] is False
    cache = trt_opts["trt_engine_cache_path"]
    # in the device workdir (beside the job folders, so it outlives the job), keyed by sha256 + TensorRT version
    assert os.path.dirname(cache) == str(tmp_path / "workdir" / "tensorrt-cache") and os.path.isdir(cache)
    assert os.path.basename(cache) == f"{tiny.artifact('onnx', precision).sha256[:16]}-trt{bench.tensorrt_version()}"
    assert rec["tensorrt"]["options"] == trt_opts
    assert rec["tensorrt"]["engine_cache"]["hit"] is False  # no TensorRT ran
    assert rec["startup_ms"]["load"] > 0 and rec["startup_ms"]["first_inference"] > 0
    assert rec["valid"] is False and "TensorrtExecutionProvider" in " ".join(rec["invalid_reasons"])


def test_engine_cache_is_kept_and_stale_folders_are_removed(tmp_path):
    root = tmp_path / "tensorrt-cache"
    artifact = tmp_path / "m.onnx"
    artifact.write_bytes(b"model bytes")
    first = bench.engine_cache(str(artifact), str(root))
    assert first["before"] == {} and os.path.isdir(first["path"])
    (root / first["key"] / "TensorrtExecutionProvider_TRTKernel_graph_1_sm87.engine").write_bytes(b"engine")
    stale = root / "0123456789abcdef-trt8.6.2"
    stale.mkdir()
    old = time.time() - (bench.ENGINE_CACHE_MAX_AGE_DAYS + 1) * 86400
    os.utime(stale, (old, old))
    second = bench.engine_cache(str(artifact), str(root))
    assert second["path"] == first["path"] and list(second["before"]) == [
        "TensorrtExecutionProvider_TRTKernel_graph_1_sm87.engine"]
    assert second["removed"] == [stale.name] and not stale.exists()
    # the same engine, untouched, with TensorRT running: a hit; TensorRT absent from the session: not a hit
    assert bench.engine_cache_result(second, ["TensorrtExecutionProvider", "CPUExecutionProvider"])["hit"] is True
    assert bench.engine_cache_result(second, ["CPUExecutionProvider"])["hit"] is False
    changed = dict(second, before={"x.engine": 1.0})
    assert bench.engine_cache_result(changed, ["TensorrtExecutionProvider"])["hit"] is False
    other = tmp_path / "n.onnx"
    other.write_bytes(b"other model")
    assert bench.engine_cache(str(other), str(root))["key"] != first["key"]
