#!/usr/bin/env python3
"""edgepipe on-device runner: load one artifact in its runtime, time it, and print exactly one JSON line.

This file is copied to the device on its own and run there with whatever Python the board has, so it needs only the
standard library, numpy and the runtime of its backend -- never torch, never the edgepipe package. The host imports
the same functions to validate artifacts in-process, so the device and the host run a model the same way.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

PROTOCOL = 1
MIN_ITERATIONS_FLOOR = 20  # the same floors as targets/profiles.py (this file cannot import it)
MIN_SECONDS_FLOOR = 0.05
SUFFIXES = {".onnx": "onnx", ".xml": "openvino", ".tflite": "tflite"}


class RunnerError(Exception):
    """A failure the runner reports as ``{"error": ...}`` instead of a traceback."""


# --------------------------------------------------------------------------------------------------------- runtimes
class Session:
    """A loaded model: ``run(x)`` takes and returns float32 numpy arrays, whatever the artifact's own I/O types."""

    def __init__(self, fn: Callable[[np.ndarray], np.ndarray], *, input_shape: list[int], runtime: str,
                 version: str, providers: list[str] | None = None, io: dict[str, Any] | None = None) -> None:
        self._fn = fn
        self.input_shape = input_shape
        self.runtime = runtime
        self.version = version
        self.providers = providers or []
        self.io = io or {}

    def run(self, x: np.ndarray) -> np.ndarray:
        return self._fn(x)


def _static_shape(shape: list[Any]) -> list[int]:
    return [d if isinstance(d, int) and d > 0 else 1 for d in shape]


def load_onnx(path: str, threads: int, providers: list[str] | None = None) -> Session:
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise RunnerError("onnxruntime is not installed on this device (pip install onnxruntime)") from exc
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    available = ort.get_available_providers()
    wanted = [p for p in (providers or ["CPUExecutionProvider"]) if p in available] or ["CPUExecutionProvider"]
    sess = ort.InferenceSession(path, sess_options=opts, providers=wanted)
    inp = sess.get_inputs()[0]
    in_name = inp.name
    in_dtype = np.float16 if inp.type == "tensor(float16)" else np.float32

    def run(x: np.ndarray) -> np.ndarray:
        out = sess.run(None, {in_name: x.astype(in_dtype, copy=False)})[0]
        return np.asarray(out, dtype=np.float32)

    return Session(run, input_shape=_static_shape(inp.shape), runtime="onnxruntime", version=ort.__version__,
                   providers=list(sess.get_providers()), io={"input_dtype": inp.type, "requested": wanted})


def load_openvino(path: str, threads: int, precision_hint: str | None = None) -> Session:
    try:
        import openvino as ov
    except ImportError as exc:
        raise RunnerError("openvino is not installed on this device (pip install openvino)") from exc
    core = ov.Core()
    model = core.read_model(path)
    if precision_hint is None:  # an IR saved with float16 weights asks for f16 compute, any other one for f32
        f16 = any(op.get_type_name() == "Constant" and op.get_element_type() == ov.Type.f16 for op in model.get_ops())
        precision_hint = "f16" if f16 else "f32"
    # OpenVINO's CPU plugin silently runs "FP32" models in bf16 on CPUs that support it; pin what was asked for.
    config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads,
              "INFERENCE_PRECISION_HINT": precision_hint}
    compiled = core.compile_model(model, "CPU", config)
    request = compiled.create_infer_request()
    port = compiled.input(0)

    def run(x: np.ndarray) -> np.ndarray:
        request.infer({0: x.astype(np.float32, copy=False)})
        return np.array(request.get_output_tensor(0).data, dtype=np.float32)

    try:  # what the plugin actually compiled for, read back (the CPU plugin may override a hint it cannot honour)
        effective = compiled.get_property("INFERENCE_PRECISION_HINT").to_string()
    except Exception:  # noqa: BLE001 - older OpenVINO releases: report the requested hint
        effective = precision_hint
    return Session(run, input_shape=_static_shape(list(port.get_partial_shape().get_min_shape())),
                   runtime="openvino", version=ov.get_version(), providers=["CPU"],
                   io={"precision_hint": effective, "precision_requested": precision_hint})


def _tflite_interpreter() -> tuple[Any, str, str]:
    """Whichever TFLite interpreter the device has: ai_edge_litert, tflite_runtime or tensorflow.lite."""
    try:
        from ai_edge_litert.interpreter import Interpreter

        try:
            from importlib.metadata import version
            ver = version("ai-edge-litert")
        except Exception:  # noqa: BLE001 - a version is nice to have, not required
            ver = "unknown"
        return Interpreter, "ai_edge_litert", ver
    except ImportError:
        pass
    try:
        import tflite_runtime
        from tflite_runtime.interpreter import Interpreter

        return Interpreter, "tflite_runtime", getattr(tflite_runtime, "__version__", "unknown")
    except ImportError:
        pass
    try:
        import tensorflow as tf

        return tf.lite.Interpreter, "tensorflow.lite", tf.__version__
    except ImportError as exc:
        raise RunnerError("no TFLite interpreter on this device: install ai-edge-litert or tflite-runtime") from exc


def load_tflite(path: str, threads: int) -> Session:
    interpreter_cls, runtime, version = _tflite_interpreter()
    interp = interpreter_cls(model_path=path, num_threads=threads)
    interp.allocate_tensors()
    inp = interp.get_input_details()[0]
    out = interp.get_output_details()[0]
    in_scale, in_zero = inp.get("quantization", (0.0, 0))
    out_scale, out_zero = out.get("quantization", (0.0, 0))
    in_dtype, out_dtype = inp["dtype"], out["dtype"]
    # integer tensors with a zero scale are raw integers (ids, masks), not quantized values: pass them through
    in_integer = np.issubdtype(in_dtype, np.integer) and in_scale > 0
    out_integer = np.issubdtype(out_dtype, np.integer) and out_scale > 0
    if in_integer:
        info = np.iinfo(in_dtype)

    def run(x: np.ndarray) -> np.ndarray:
        if in_integer:  # full-integer models take quantized input: q = round(x / scale) + zero_point
            q = np.clip(np.round(x / in_scale) + in_zero, info.min, info.max).astype(in_dtype)
            interp.set_tensor(inp["index"], q)
        else:
            interp.set_tensor(inp["index"], x.astype(in_dtype, copy=False))
        interp.invoke()
        y = interp.get_tensor(out["index"])
        if out_integer:
            return (y.astype(np.float32) - out_zero) * out_scale
        return np.asarray(y, dtype=np.float32)

    return Session(run, input_shape=[int(d) for d in inp["shape"]], runtime=runtime, version=version,
                   providers=["cpu"], io={"input_dtype": np.dtype(in_dtype).name,
                                         "input_quantization": [float(in_scale), int(in_zero)],
                                         "output_dtype": np.dtype(out_dtype).name,
                                         "output_quantization": [float(out_scale), int(out_zero)]})


def load(path: str, backend: str | None = None, threads: int = 1, providers: list[str] | None = None) -> Session:
    family = (backend or SUFFIXES.get(os.path.splitext(path)[1], "")).split("-")[0]
    if family == "onnx":
        return load_onnx(path, threads, providers)
    if family == "openvino":
        return load_openvino(path, threads)
    if family == "tflite":
        return load_tflite(path, threads)
    raise RunnerError(f"unknown backend {backend!r} for {path}")


def predict(session: Session, x: np.ndarray) -> np.ndarray:
    """Run every sample one at a time (artifacts have a static batch of 1) and stack the outputs."""
    batch = session.input_shape[0] if session.input_shape else 1
    outs = [session.run(x[i:i + batch]) for i in range(0, len(x), batch)]
    return np.concatenate(outs, axis=0)


# --------------------------------------------------------------------------------------------------------- statistics
def latency_stats(samples_ms: list[float]) -> dict[str, float]:
    arr = np.asarray(samples_ms, dtype=np.float64)
    if arr.size == 0:
        raise RunnerError("no timed iterations")
    p50, p90, p99 = np.percentile(arr, [50, 90, 99])
    return {"p50": round(float(p50), 4), "p90": round(float(p90), 4), "p99": round(float(p99), 4),
            "mean": round(float(arr.mean()), 4), "std": round(float(arr.std(ddof=1)) if arr.size > 1 else 0.0, 4),
            "min": round(float(arr.min()), 4), "max": round(float(arr.max()), 4), "n": int(arr.size)}


def time_session(session: Session, inputs: np.ndarray, warmup: int, min_iterations: int, min_seconds: float,
                 max_seconds: float) -> list[float]:
    """Warm up, then time single inferences until both the iteration and the time minimum are met (or the cap)."""
    batch = session.input_shape[0] if session.input_shape else 1
    count = max(1, len(inputs) // batch)
    for i in range(warmup):
        j = (i % count) * batch
        session.run(inputs[j:j + batch])
    samples: list[float] = []
    start = time.perf_counter()
    i = 0
    while True:
        j = (i % count) * batch
        x = inputs[j:j + batch]
        t0 = time.perf_counter_ns()
        session.run(x)
        samples.append((time.perf_counter_ns() - t0) / 1e6)
        i += 1
        elapsed = time.perf_counter() - start
        if (len(samples) >= min_iterations and elapsed >= min_seconds) or elapsed >= max_seconds:
            return samples


# --------------------------------------------------------------------------------------------------------- device state
def _read(path: str) -> str | None:
    try:
        with open(path) as fh:
            return fh.read().strip()
    except OSError:
        return None


def _command(cmd: str | None, timeout: float = 5.0) -> str | None:
    if not cmd:
        return None
    try:
        proc = subprocess.run(shlex.split(cmd), capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def parse_throttled(text: str | None) -> dict[str, Any] | None:
    """``vcgencmd get_throttled`` -> flags. Bits 0-3 are 'now', bits 16-19 'since boot'."""
    if not text or "=" not in text:
        return None
    try:
        value = int(text.split("=", 1)[1], 16)
    except ValueError:
        return None
    return {"raw": hex(value), "now": bool(value & 0xF), "since_boot": bool(value & 0xF0000),
            "throttling_now": bool(value & 0x4), "under_voltage_now": bool(value & 0x1)}


def device_state(thermal: str | None = None, throttled_cmd: str | None = None,
                 power_mode_cmd: str | None = None, clocks_cmd: str | None = None) -> dict[str, Any]:
    temps: list[float] = []
    paths = [thermal] if thermal else [f"/sys/class/thermal/thermal_zone{i}/temp" for i in range(16)]
    for p in paths:
        raw = _read(p) if p else None
        if raw and raw.lstrip("-").isdigit():
            temps.append(int(raw) / 1000.0)
    freq = _read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_cur_freq")
    return {
        "temp_c": max(temps) if temps else None,
        "governor": _read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor"),
        "cpu_mhz": int(freq) / 1000.0 if freq and freq.isdigit() else None,
        "throttled": parse_throttled(_command(throttled_cmd)),
        "power_mode": _command(power_mode_cmd),
        "clocks": (_command(clocks_cmd) or "")[:2000] or None,  # e.g. `jetson_clocks --show`: pinned or not
        "loadavg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def state_problems(before: dict[str, Any], after: dict[str, Any]) -> tuple[list[str], list[str]]:
    """Why the device state makes a run untrustworthy (reasons) or merely worth a look (warnings).

    ``vcgencmd get_throttled`` has 'now' bits (0-3) and sticky 'since boot' bits (16-19): a sticky bit that is set
    after the run but was clear before means the board throttled or sagged *during* the run, even if it recovered.
    """
    reasons: list[str] = []
    warnings: list[str] = []
    for when, st in (("before", before), ("after", after)):
        flags = st.get("throttled")
        if flags and flags["now"]:
            reasons.append(f"device throttled {when} the run ({flags['raw']})")
    fb, fa = before.get("throttled"), after.get("throttled")
    if fb and fa:
        new = int(fa["raw"], 16) & ~int(fb["raw"], 16) & 0xF0000
        if new:
            reasons.append(f"device throttled or was under-voltage during the run (new flags {hex(new)})")
    if before.get("power_mode") != after.get("power_mode"):
        reasons.append(f"power mode changed during the run ({before.get('power_mode')!r} -> "
                       f"{after.get('power_mode')!r})")
    if before.get("clocks") != after.get("clocks"):
        warnings.append("clocks changed during the run (not pinned? `sudo jetson_clocks` pins them)")
    mhz_before, mhz_after = before.get("cpu_mhz"), after.get("cpu_mhz")
    if mhz_before and mhz_after and mhz_after < 0.85 * mhz_before:
        warnings.append(f"CPU clock fell from {mhz_before:.0f} to {mhz_after:.0f} MHz during the run (thermal or "
                        "power limit?)")
    load, cpus = (before.get("loadavg") or [None])[0], os.cpu_count() or 1
    if load is not None and load > cpus:
        warnings.append(f"load average {load:.1f} on {cpus} CPUs before the run: other processes compete for the "
                        "cores, latency may be inflated")
    if before.get("governor") not in (None, "performance"):
        warnings.append(f"CPU governor is {before.get('governor')!r}, not 'performance': latency may vary")
    return reasons, warnings


def rule_problems(args: argparse.Namespace, n: int) -> list[str]:
    """A figure that did not meet its own minimums, or whose minimums are below the floor, is not valid."""
    reasons = []
    if n < args.min_iterations:
        reasons.append(f"only {n} of {args.min_iterations} iterations within max_seconds={args.max_seconds}")
    if args.max_seconds < args.min_seconds:
        reasons.append(f"stopped at max_seconds={args.max_seconds:g} before min_seconds={args.min_seconds:g}")
    if args.min_iterations < MIN_ITERATIONS_FLOOR or args.min_seconds < MIN_SECONDS_FLOOR:
        reasons.append(f"rules below the floor (min_iterations={args.min_iterations}, min_seconds="
                       f"{args.min_seconds:g}; the floor is {MIN_ITERATIONS_FLOOR} iterations and "
                       f"{MIN_SECONDS_FLOOR:g} s)")
    return reasons


def temperature_problems(before: dict[str, Any], after: dict[str, Any], max_temp_c: float | None) -> list[str]:
    """Hotter than the board's rule before or after the run: the figure includes thermal throttling or will."""
    if not max_temp_c:
        return []
    hot = [(when, st.get("temp_c")) for when, st in (("before", before), ("after", after))
           if isinstance(st.get("temp_c"), (int, float)) and st["temp_c"] >= max_temp_c]
    return [f"device at {t:.1f} °C {when} the run (rule: below {max_temp_c:g} °C)" for when, t in hot]


def environment(session: Session | None = None, threads: int | None = None,
                requested_providers: list[str] | None = None) -> dict[str, Any]:
    """The fingerprint a figure is only meaningful with: OS, kernel, runtime versions, what actually executed."""
    env: dict[str, Any] = {"os": platform.platform(), "kernel": platform.release(), "machine": platform.machine(),
                           "python": platform.python_version(), "numpy": np.__version__, "cpus": os.cpu_count()}
    if session is not None:
        env.update(runtime=f"{session.runtime} {session.version}", providers=session.providers,
                   requested_providers=requested_providers or [], threads=threads)
    return env


def provider_fallback(family: str, requested: list[str], used: list[str]) -> str | None:
    """ONNX Runtime silently drops providers it cannot load (no CUDA, no TensorRT): a CPU figure is not a GPU one."""
    if family != "onnx" or not requested:
        return None
    missing = [p for p in requested if p not in used]
    if not missing:
        return None
    return f"requested execution provider(s) {', '.join(missing)} not used; the session ran on {', '.join(used)}"


def probe(args: argparse.Namespace | None = None) -> dict[str, Any]:
    """What the device offers: used by ``edgepipe doctor``."""
    runtimes: dict[str, str | None] = {}
    for name, loader in (("onnxruntime", lambda: __import__("onnxruntime").__version__),
                         ("openvino", lambda: __import__("openvino").get_version()),
                         ("tflite", lambda: "{1} {2}".format(*_tflite_interpreter()))):
        try:
            runtimes[name] = loader()
        except Exception:  # noqa: BLE001 - absent or broken runtimes are reported, not raised
            runtimes[name] = None
    try:
        import onnxruntime as ort
        providers = ort.get_available_providers()
    except Exception:  # noqa: BLE001
        providers = []
    here = os.path.dirname(os.path.abspath(__file__))  # the job folder, under the profile's workdir
    st = os.statvfs(here)
    tel = (args.thermal, args.throttled_cmd, args.power_mode_cmd, args.clocks_cmd) if args else ()
    return {"protocol": PROTOCOL, "runtimes": runtimes, "onnx_providers": providers, "environment": environment(),
            "state": device_state(*tel), "free_bytes": st.f_bavail * st.f_frsize, "workdir": os.path.dirname(here)}


# --------------------------------------------------------------------------------------------------------- main
def benchmark(args: argparse.Namespace) -> dict[str, Any]:
    providers = [p for p in (args.providers or "").split(",") if p]
    session = load(args.artifact, args.backend, args.threads, providers or None)
    labels = None
    if args.inputs:
        data = np.load(args.inputs)
        inputs = np.asarray(data["x"], dtype=np.float32)
        labels = np.asarray(data["y"]) if "y" in data.files else None
    else:
        rng = np.random.default_rng(0)
        inputs = rng.standard_normal((8, *session.input_shape[1:])).astype(np.float32)
    telemetry = (args.thermal, args.throttled_cmd, args.power_mode_cmd, args.clocks_cmd)
    before = device_state(*telemetry)
    samples = time_session(session, inputs, args.warmup, args.min_iterations, args.min_seconds, args.max_seconds)
    after = device_state(*telemetry)
    result: dict[str, Any] = {
        "protocol": PROTOCOL, "artifact": os.path.basename(args.artifact), "backend": args.backend,
        "latency_ms": latency_stats(samples), "runtime": f"{session.runtime} {session.version}",
        "threads": args.threads, "providers": session.providers, "io": session.io,
        "rules": {"warmup": args.warmup, "min_iterations": args.min_iterations, "min_seconds": args.min_seconds,
                  "max_seconds": args.max_seconds},
        "state": {"before": before, "after": after},
        "environment": {**environment(session, args.threads, providers),  # DESIGN §6 keeps these two here
                        "governor": before.get("governor"), "temp_c": after.get("temp_c")},
    }
    if labels is not None:
        preds = predict(session, inputs).reshape(len(inputs), -1).argmax(axis=1)
        result["accuracy"] = round(float((preds == labels).mean()), 6)
        result["n_eval"] = int(len(labels))
    reasons, warnings = state_problems(before, after)
    reasons[:0] = rule_problems(args, len(samples))
    reasons += temperature_problems(before, after, args.max_temp_c)
    family = (args.backend or SUFFIXES.get(os.path.splitext(args.artifact)[1], "")).split("-")[0]
    fallback = provider_fallback(family, providers, session.providers)
    if fallback:
        reasons.append(fallback)
    result["valid"] = not reasons
    result["invalid_reasons"] = reasons
    result["warnings"] = warnings
    return result


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--artifact")
    ap.add_argument("--backend", default=None, help="onnx | openvino | tflite (default: from the file suffix)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--min-iterations", type=int, default=100)
    ap.add_argument("--min-seconds", type=float, default=10.0)
    ap.add_argument("--max-seconds", type=float, default=120.0)
    ap.add_argument("--inputs", default=None, help=".npz with x (and optionally labels y)")
    ap.add_argument("--providers", default="", help="comma-separated ONNX Runtime execution providers")
    ap.add_argument("--thermal", default=None)
    ap.add_argument("--throttled-cmd", default=None)
    ap.add_argument("--power-mode-cmd", default=None)
    ap.add_argument("--clocks-cmd", default=None)
    ap.add_argument("--max-temp-c", type=float, default=None, help="invalid when the device is this hot or hotter")
    ap.add_argument("--probe", action="store_true", help="report runtimes and device state, then exit")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.probe:
            out = probe(args)
        else:
            if not args.artifact:
                raise RunnerError("--artifact is required")
            out = benchmark(args)
    except RunnerError as exc:
        print(json.dumps({"protocol": PROTOCOL, "error": str(exc)}))
        return 2
    except Exception as exc:  # noqa: BLE001 - the host needs one JSON line whatever broke
        print(json.dumps({"protocol": PROTOCOL, "error": f"{type(exc).__name__}: {exc}"}))
        return 1
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
