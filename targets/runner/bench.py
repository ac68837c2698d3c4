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
import re
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


CACHE_INPUT = re.compile(r"past_(key|value)_\d+")      # a decoder's cache graph (LM_CONTRACT.md)
CACHE_OUTPUT = re.compile(r"present_(key|value)_\d+")


class RunnerError(Exception):
    """A failure the runner reports as ``{"error": ...}`` instead of a traceback."""


# --------------------------------------------------------------------------------------------------------- runtimes
_ONNX_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
               "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int8)": np.int8,
               "tensor(uint8)": np.uint8, "tensor(bool)": np.bool_}


class Session:
    """A loaded model: ``run({name: array})`` feeds every input by name (cast to the artifact's own dtype) and
    returns every output in order (float outputs as float32, integer outputs as they are)."""

    def __init__(self, fn: Callable[[dict[str, np.ndarray]], list[np.ndarray]], *, inputs: list[dict[str, Any]],
                 runtime: str, version: str, providers: list[str] | None = None,
                 io: dict[str, Any] | None = None, outputs: list[str] | None = None) -> None:
        self._fn = fn
        self.outputs = outputs or []                # output names in order, where the runtime names them
        self.inputs = inputs                       # [{"name", "shape", "dtype"}] in the artifact's order
        self.input_shape = inputs[0]["shape"] if inputs else []
        self.runtime = runtime
        self.version = version
        self.providers = providers or []
        self.io = io or {}

    @property
    def input_names(self) -> list[str]:
        return [i["name"] for i in self.inputs]

    @property
    def cache_inputs(self) -> list[dict[str, Any]]:
        """The key/value-cache inputs of a decoder's cache graph (``past_key_<i>``, ``past_value_<i>``)."""
        return [i for i in self.inputs if CACHE_INPUT.fullmatch(i["name"])]

    def run(self, feeds: dict[str, np.ndarray] | np.ndarray) -> list[np.ndarray]:
        if isinstance(feeds, np.ndarray):           # one unnamed array: the single-input shorthand
            feeds = {self.inputs[0]["name"]: feeds}
        return self._fn(feeds)


def _static_shape(shape: list[Any]) -> list[int]:
    return [d if isinstance(d, int) and d > 0 else 1 for d in shape]


def _float_out(y: Any) -> np.ndarray:
    y = np.asarray(y)
    return y.astype(np.float32) if np.issubdtype(y.dtype, np.floating) else y.copy()


def load_onnx(path: str, threads: int, providers: list[str] | None = None, optimization: str = "all",
              provider_options: dict[str, dict[str, Any]] | None = None) -> Session:
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise RunnerError("onnxruntime is not installed on this device (pip install onnxruntime)") from exc
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = {"all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
                                     "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC}[optimization]
    available = ort.get_available_providers()
    wanted = [p for p in (providers or ["CPUExecutionProvider"]) if p in available] or ["CPUExecutionProvider"]
    with_options = [(p, provider_options[p]) if p in (provider_options or {}) else p for p in wanted]
    sess = ort.InferenceSession(path, sess_options=opts, providers=with_options)
    ins = [{"name": i.name, "shape": _static_shape(i.shape), "dtype": np.dtype(_ONNX_TYPES.get(i.type, np.float32))}
           for i in sess.get_inputs()]

    def run(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        out = sess.run(None, {i["name"]: np.asarray(feeds[i["name"]]).astype(i["dtype"], copy=False) for i in ins})
        return [_float_out(o) for o in out]

    return Session(run, inputs=ins, runtime="onnxruntime", version=ort.__version__,
                   providers=list(sess.get_providers()), outputs=[o.name for o in sess.get_outputs()],
                   io={"input_dtype": sess.get_inputs()[0].type, "requested": wanted,
                       "inputs": {i.name: i.type for i in sess.get_inputs()},
                       "outputs": [o.name for o in sess.get_outputs()]})


def load_openvino(path: str, threads: int, precision_hint: str | None = None) -> Session:
    try:
        import openvino as ov
    except ImportError as exc:
        raise RunnerError("openvino is not installed on this device (pip install openvino)") from exc
    core = ov.Core()
    model = core.read_model(path)
    if precision_hint is None:  # an IR saved with float16 weights asks for f16 compute, any other one for f32
        consts = {op.get_element_type() for op in model.get_ops() if op.get_type_name() == "Constant"}
        # NNCF's weight-only IRs (int4/int8 weights) store their decompression scales in f16: still f32 compute
        packed = consts & {ov.Type.u4, ov.Type.i4, ov.Type.u8, ov.Type.i8}
        precision_hint = "f16" if ov.Type.f16 in consts and not packed else "f32"
    # OpenVINO's CPU plugin silently runs "FP32" models in bf16 on CPUs that support it; pin what was asked for.
    config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads,
              "INFERENCE_PRECISION_HINT": precision_hint}
    compiled = core.compile_model(model, "CPU", config)
    request = compiled.create_infer_request()
    ins = []
    for k, port in enumerate(compiled.inputs):
        names = port.get_names()
        ins.append({"name": port.get_any_name() if names else f"input{k}", "index": k,
                    "shape": _static_shape(list(port.get_partial_shape().get_min_shape())),
                    "dtype": np.dtype(port.get_element_type().to_dtype())})
    n_out = len(compiled.outputs)
    out_names = [port.get_any_name() if port.get_names() else f"output{j}" for j, port in enumerate(compiled.outputs)]

    def run(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        request.infer({i["index"]: np.asarray(feeds[i["name"]]).astype(i["dtype"], copy=False) for i in ins})
        return [_float_out(request.get_output_tensor(j).data) for j in range(n_out)]

    try:  # what the plugin actually compiled for, read back (the CPU plugin may override a hint it cannot honour)
        effective = compiled.get_property("INFERENCE_PRECISION_HINT").to_string()
    except Exception:  # noqa: BLE001 - older OpenVINO releases: report the requested hint
        effective = precision_hint
    return Session(run, inputs=ins, runtime="openvino", version=ov.get_version(), providers=["CPU"], outputs=out_names,
                   io={"precision_hint": effective, "precision_requested": precision_hint,
                       "inputs": {i["name"]: i["dtype"].name for i in ins}})


def tflite_interpreter() -> tuple[Any, str, str]:
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


def _ordered(details: dict[str, Any]) -> list[tuple[str, Any]]:
    """Signature tensors in forward() order: litert-torch names them ``args_0, args_1, ...`` / ``output_0, ...``."""
    def key(name: str) -> tuple[int, str]:
        tail = name.rsplit("_", 1)[-1]
        return (int(tail), name) if tail.isdigit() else (1 << 30, name)
    return sorted(details.items(), key=lambda kv: key(kv[0]))


def load_tflite(path: str, threads: int, input_names: list[str] | None = None) -> Session:
    """Inputs are matched by signature name when the file uses the recipe's names, else by position
    (``args_<i>`` is the i-th forward() argument); integer tensors with a scale are quantized values, integer tensors
    without one are raw integers (ids, masks) and pass through."""
    interpreter_cls, runtime, version = tflite_interpreter()
    interp = _tflite_build(interpreter_cls, runtime, model_path=path, num_threads=threads)
    sigs = interp.get_signature_list() if hasattr(interp, "get_signature_list") else {}
    if sigs:
        runner = interp.get_signature_runner(next(iter(sigs)))
        in_details = _ordered(runner.get_input_details())
        out_details = [d for _, d in _ordered(runner.get_output_details())]
    else:
        in_details = [(d["name"], d) for d in interp.get_input_details()]
        out_details = interp.get_output_details()
    ins = []
    for k, (sig_name, d) in enumerate(in_details):
        scale, zero = d.get("quantization", (0.0, 0))
        name = sig_name if not input_names or sig_name in input_names else \
            (input_names[k] if k < len(input_names) else sig_name)
        ins.append({"name": name, "index": d["index"], "shape": [int(x) for x in d["shape"]],
                    "dtype": np.dtype(d["dtype"]), "scale": float(scale), "zero": int(zero),
                    "quantized": bool(np.issubdtype(d["dtype"], np.integer) and scale > 0)})
    outs = []
    for d in out_details:
        scale, zero = d.get("quantization", (0.0, 0))
        outs.append({"index": d["index"], "scale": float(scale), "zero": int(zero),
                     "quantized": bool(np.issubdtype(d["dtype"], np.integer) and scale > 0)})

    def run(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        for i in ins:
            x = np.asarray(feeds[i["name"]])
            if i["quantized"]:  # full-integer models take quantized input: q = round(x / scale) + zero_point
                info = np.iinfo(i["dtype"])
                x = np.clip(np.round(x / i["scale"]) + i["zero"], info.min, info.max)
            interp.set_tensor(i["index"], x.astype(i["dtype"], copy=False))
        interp.invoke()
        res = []
        for o in outs:
            y = interp.get_tensor(o["index"])
            res.append((y.astype(np.float32) - o["zero"]) * o["scale"] if o["quantized"] else _float_out(y))
        return res

    first = in_details[0][1] if in_details else {}
    first_out = out_details[0] if out_details else {}
    return Session(run, inputs=ins, runtime=runtime, version=version, providers=["cpu"],
                   io={"input_dtype": np.dtype(first.get("dtype", np.float32)).name,
                       "input_quantization": list(map(float, first.get("quantization", (0.0, 0)))),
                       "output_dtype": np.dtype(first_out.get("dtype", np.float32)).name,
                       "output_quantization": list(map(float, first_out.get("quantization", (0.0, 0)))),
                       "inputs": {i["name"]: i["dtype"].name for i in ins}})


NUMPY1_BUILD = "tflite_runtime was built for NumPy 1.x: install numpy<2 or ai-edge-litert"
# A float32 [1] -> [1] model computing x + 1 (812 bytes, zlib + base64): doctor builds and runs an interpreter on it,
# because a broken runtime/numpy pair imports fine and fails only when the first interpreter is made.
PROBE_TFLITE = (
    "eNptUs1KAlEUPtqklxQTEnMh5bKFSJFBUNAiCAPdhPuL5dWGdEbGO657lOgBWvUQPkRLFz1ENH3nzrGCGvg455455zu/dSLqX3WPK9QgjxQVqUwV2"
    "GpUd3IDOAcOgU6G8J/oVd454D1LtAIs8AYo+Cxhz3BcJpVLkWXibwuyiEwetJSvDjSAbWBuooUfjPXQjAbxxLq4ivAdAEpiFXSkg0ZOD2M7i63msm"
    "jvM0k8qW8QjedsZd+O+C+TJOGYTWAXeDBmpud2cDsx95NQ34UBHoGlkfAwbBQbzs2ZleRk+w4w9QMdxYH1p0YvTDT3w4CeJZZ7PmqdtFxh8nGfve7"
    "1TeMyDOBvzbAFSwkz/9lACZZToCmzqUg+xnTgByQzaYvMiiTZWRGPJ96ts5RcPHPnwV5K3Qo1mT9zrlDvmicrPBnZl3Iy3RfbRpgfq23JpeQe9v/u"
    "T6/3IoqLZ/TB8SI8DcmppNcCoDV3qXWrd/Yd42Gjnqsl524g92smRI8XRFXMULmu0ivmLw9r2k5TeJTcUvWfetf3ss75kfAePZfjC5xNcRA=")


def _tflite_build(interpreter_cls: Any, runtime: str, **kwargs: Any) -> Any:
    """Make and allocate an interpreter. Every tflite_runtime wheel (the last is 2.14, 2023) was compiled against
    NumPy 1.x; under NumPy 2 its extension fails on the first interpreter with an opaque ``SystemError ...
    CreateWrapperFromFile`` (cause: ``numpy.core.multiarray failed to import``): say what it is and what to install."""
    try:
        interp = interpreter_cls(**kwargs)
        interp.allocate_tensors()
    except (SystemError, ImportError, AttributeError) as exc:
        chain, cause = [], exc
        while cause is not None and len(chain) < 5:
            chain.append(str(cause))
            cause = cause.__cause__ or cause.__context__
        numpy2 = int(np.__version__.split(".")[0]) >= 2
        if runtime == "tflite_runtime" and numpy2 and any("_ARRAY_API" in t or "numpy" in t.lower() for t in chain):
            raise RunnerError(f"{NUMPY1_BUILD} (this device has numpy {np.__version__})") from exc
        raise
    return interp


def tflite_selftest() -> str:
    """Build an interpreter on PROBE_TFLITE and run it once: 'runtime version' when it computes 2 + 1 = 3."""
    import base64
    import zlib

    interpreter_cls, runtime, version = tflite_interpreter()
    interp = _tflite_build(interpreter_cls, runtime, model_content=zlib.decompress(base64.b64decode(PROBE_TFLITE)))
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    interp.set_tensor(inp["index"], np.array([2.0], dtype=np.float32))
    interp.invoke()
    got = float(np.asarray(interp.get_tensor(out["index"])).reshape(-1)[0])
    if abs(got - 3.0) > 1e-6:
        raise RunnerError(f"{runtime} {version} computed 2 + 1 = {got}: this TFLite runtime is broken on this device")
    return f"{runtime} {version}"


def load(path: str, backend: str | None = None, threads: int = 1, providers: list[str] | None = None,
         input_names: list[str] | None = None, **onnx_options: Any) -> Session:
    family = (backend or SUFFIXES.get(os.path.splitext(path)[1], "")).split("-")[0]
    if family == "onnx":
        return load_onnx(path, threads, providers, **onnx_options)
    if family == "openvino":
        return load_openvino(path, threads)
    if family == "tflite":
        return load_tflite(path, threads, input_names)
    raise RunnerError(f"unknown backend {backend!r} for {path}")


def empty_past(session: Session, batch: int) -> dict[str, np.ndarray]:
    """A decoder's empty cache (P = 0: zero-size arrays [B, H_i, 0, D_i]): what prefill and perplexity feed."""
    return {i["name"]: np.zeros((batch, i["shape"][1], 0, i["shape"][3]), dtype=i["dtype"])
            for i in session.cache_inputs}


def _feeds(session: Session, inputs: dict[str, np.ndarray] | np.ndarray) -> dict[str, np.ndarray]:
    """Match the given arrays to the artifact's inputs by name; a single unnamed array feeds a single input. A
    cache graph's past inputs that are not given are the empty past: the graph then is the plain forward (the
    whole window, no cache), as perplexity and the host's check run it."""
    if isinstance(inputs, np.ndarray):
        inputs = {session.inputs[0]["name"]: inputs}
    if len(inputs) == 1 and len(session.inputs) == 1:
        return {session.inputs[0]["name"]: next(iter(inputs.values()))}
    missing_cache = [i["name"] for i in session.cache_inputs if i["name"] not in inputs]
    if missing_cache and len(missing_cache) == len(session.cache_inputs) and inputs:
        inputs = {**inputs, **empty_past(session, count(inputs))}
    missing = [n for n in session.input_names if n not in inputs]
    if missing:
        raise RunnerError(f"the artifact's input(s) {missing} are not in the inputs file (it has {sorted(inputs)})")
    return {n: inputs[n] for n in session.input_names}


def count(inputs: dict[str, np.ndarray]) -> int:
    return len(next(iter(inputs.values()))) if inputs else 0


def predict(session: Session, inputs: dict[str, np.ndarray] | np.ndarray,
            batch_axes: list[int] | None = None) -> list[np.ndarray]:
    """Run every sample one at a time (artifacts have a static batch of 1); every output stacked samples first:
    output j's batch axis is ``batch_axes[j]`` (0 when not given; 1 for a time-major ``(T, B, C)``). A cache
    graph's presents are its cache, not its prediction: only its other outputs (the logits) are returned."""
    feeds = _feeds(session, inputs)
    batch = session.input_shape[0] if session.input_shape else 1
    axes = list(batch_axes or [])
    keep = [j for j, name in enumerate(session.outputs) if not CACHE_OUTPUT.fullmatch(name)] \
        if session.cache_inputs and session.outputs else None

    def first(o: np.ndarray, j: int) -> np.ndarray:
        axis = axes[j] if j < len(axes) else 0
        return np.moveaxis(o, axis, 0) if axis and o.ndim > axis else o
    def run(x: dict[str, np.ndarray]) -> list[np.ndarray]:
        out = session.run(x)
        return out if keep is None else [out[j] for j in keep]
    outs = [[first(o, j) for j, o in enumerate(run({k: v[i:i + batch] for k, v in feeds.items()}))]
            for i in range(0, count(feeds), batch)]
    return [np.concatenate([o[j] for o in outs], axis=0) for j in range(len(outs[0]))] if outs else []


def read_inputs(path: str) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """An inputs file: one array per input name (``x`` alone is the single-input shorthand) and optional ``y``.
    ``allow_pickle=False``: the file holds arrays, never objects."""
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: np.asarray(data[k]) for k in data.files}
    labels = arrays.pop("y", None)
    arrays.pop("__batch_axes__", None)   # read_batch_axes: how outputs are stacked, not an input
    order = arrays.pop("__order__", None)
    if order is not None:
        arrays = {str(k): arrays[str(k)] for k in order}
    return arrays, labels


def read_batch_axes(path: str) -> list[int] | None:
    """Each output's batch axis as the host wrote it into the inputs file (``__batch_axes__``), else None (all 0)."""
    with np.load(path, allow_pickle=False) as data:
        return [int(a) for a in data["__batch_axes__"]] if "__batch_axes__" in data.files else None


#: Raw outputs the runner writes at most (the host checks the eval set against it before any export), and the raw
#: size of one outputs part: outputs are written in parts of whole samples, so no single file is large.
MAX_OUTPUT_MB = 2048.0
OUTPUT_PART_MB = 32.0


def part_path(path: str, k: int) -> str:
    """Part ``k`` of an outputs file: the file itself for part 0 (it says how many parts there are), else
    ``<stem>-<k>.npz`` beside it."""
    return path if k == 0 else f"{path[:-4] if path.endswith('.npz') else path}-{k}.npz"


def write_outputs(path: str, outputs: list[np.ndarray], max_bytes: int,
                  part_bytes: int = int(OUTPUT_PART_MB * 2**20)) -> tuple[int, int]:
    """Every output as ``out0, out1, ...`` (samples first) in compressed .npz parts of at most ``part_bytes`` raw
    each (whole samples; part 0 holds ``__parts__``), refused above ``max_bytes`` in all so a board never fills its
    disk or the link. Each part is written under a temporary name and renamed, part 0 last, so a half-written set
    never looks complete. Returns (raw bytes, parts)."""
    raw = sum(int(o.nbytes) for o in outputs)
    if raw > max_bytes:
        raise RunnerError(f"the outputs are {raw / 2**20:.1f} MiB, over the {max_bytes / 2**20:.0f} MiB limit: "
                          "lower data.eval_samples in the recipe")
    n = len(outputs[0]) if outputs and outputs[0].ndim else 1
    per_sample = max(1, raw // max(n, 1))
    step = max(1, part_bytes // per_sample)
    starts = list(range(0, max(n, 1), step))
    for k in reversed(range(len(starts))):
        chunk = {f"out{i}": (o[starts[k]:starts[k] + step] if o.ndim else o) for i, o in enumerate(outputs)}
        if k == 0:
            chunk["__parts__"] = np.asarray(len(starts))
        final = part_path(path, k)
        with open(final + ".part", "wb") as fh:
            np.savez_compressed(fh, **chunk)
        os.replace(final + ".part", final)
    return raw, len(starts)


def read_outputs(path: str) -> list[np.ndarray]:
    """The outputs ``write_outputs`` wrote, part by part, each output concatenated along its samples."""
    with np.load(path, allow_pickle=False) as data:
        keys = sorted((k for k in data.files if k.startswith("out")), key=lambda k: int(k[3:]))
        parts = int(data["__parts__"]) if "__parts__" in data.files else 1
        chunks = [[np.asarray(data[k]) for k in keys]]
    for k in range(1, parts):
        with np.load(part_path(path, k), allow_pickle=False) as data:
            chunks.append([np.asarray(data[key]) for key in keys])
    if parts == 1:
        return chunks[0]
    return [np.concatenate([c[j] for c in chunks], axis=0) for j in range(len(keys))]


# --------------------------------------------------------------------------------------------------------- statistics
def latency_stats(samples_ms: list[float]) -> dict[str, float]:
    arr = np.asarray(samples_ms, dtype=np.float64)
    if arr.size == 0:
        raise RunnerError("no timed iterations")
    p50, p90, p99 = np.percentile(arr, [50, 90, 99])
    return {"p50": round(float(p50), 4), "p90": round(float(p90), 4), "p99": round(float(p99), 4),
            "mean": round(float(arr.mean()), 4), "std": round(float(arr.std(ddof=1)) if arr.size > 1 else 0.0, 4),
            "min": round(float(arr.min()), 4), "max": round(float(arr.max()), 4), "n": int(arr.size)}


def time_session(session: Session, inputs: dict[str, np.ndarray] | np.ndarray, warmup: int, min_iterations: int,
                 min_seconds: float, max_seconds: float) -> list[float]:
    """Warm up, then time whole calls (every input fed, every output read) until both the iteration and the time
    minimum are met (or the cap). ``max_seconds`` bounds the warm-up too: a slow model on a slow board must not run
    its warm-up past the cap (and into the job timeout); at least one call is always timed."""
    feeds = _feeds(session, inputs)
    batch = session.input_shape[0] if session.input_shape else 1
    n = max(1, count(feeds) // batch)
    slices = [{k: v[j * batch:(j + 1) * batch] for k, v in feeds.items()} for j in range(min(n, 64))]
    begin = time.perf_counter()
    for i in range(warmup):
        if time.perf_counter() - begin >= max_seconds:
            break
        session.run(slices[i % len(slices)])
    samples: list[float] = []
    start = time.perf_counter()
    i = 0
    while True:
        x = slices[i % len(slices)]
        t0 = time.perf_counter_ns()
        session.run(x)
        samples.append((time.perf_counter_ns() - t0) / 1e6)
        i += 1
        elapsed = time.perf_counter() - start
        if (len(samples) >= min_iterations and elapsed >= min_seconds) or time.perf_counter() - begin >= max_seconds:
            return samples


def first_inference_ms(session: Session, inputs: dict[str, np.ndarray] | np.ndarray) -> float:
    feeds = _feeds(session, inputs)
    batch = session.input_shape[0] if session.input_shape else 1
    t0 = time.perf_counter()
    session.run({k: v[:batch] for k, v in feeds.items()})
    return (time.perf_counter() - t0) * 1000


# --------------------------------------------------------------------------------------------------------- generation
def read_prompts(path: str, prompt_len: int) -> np.ndarray:
    """``prompt_ids`` int64 [n, PROMPT_LEN] from the prompts file (arrays only, never objects)."""
    with np.load(path, allow_pickle=False) as data:
        if "prompt_ids" not in data.files:
            raise RunnerError(f"the prompts file has no prompt_ids array (it has {sorted(data.files)})")
        ids = np.asarray(data["prompt_ids"])
    if ids.ndim != 2 or ids.shape[1] != prompt_len or not len(ids) or not np.issubdtype(ids.dtype, np.integer):
        raise RunnerError(f"prompt_ids is {ids.dtype} {list(ids.shape)}: expected integer [n, {prompt_len}] for "
                          f"--generate {prompt_len},...")
    return ids.astype(np.int64)


def greedy(session: Session, prompt: np.ndarray, new_tokens: int) -> tuple[list[int], float, float]:
    """Greedy decoding of one prompt (int64 [PROMPT_LEN]) through the cache graph: one prefill call (S = PROMPT_LEN,
    empty past) gives the first token, then ``new_tokens - 1`` decode calls (S = 1) feed each call's presents back.
    Returns (tokens, time to first token in s, decode time in s). ``present_key_i`` feeds ``past_key_i`` by name
    (where the runtime gives no output names: every output after the logits, in the past inputs' order)."""
    cache = [i["name"] for i in session.cache_inputs]
    ids_name = next(i["name"] for i in session.inputs if i["name"] not in cache)
    by_name = {name: j for j, name in enumerate(session.outputs)}
    source = [by_name.get(name.replace("past_", "present_", 1), 1 + k) for k, name in enumerate(cache)]
    t0 = time.perf_counter()
    out = session.run({ids_name: prompt[None, :], **empty_past(session, 1)})
    tokens = [int(np.argmax(out[0][0, -1]))]
    t1 = time.perf_counter()
    for _ in range(new_tokens - 1):
        past = {name: out[source[k]] for k, name in enumerate(cache)}
        out = session.run({ids_name: np.array([[tokens[-1]]], dtype=np.int64), **past})
        tokens.append(int(np.argmax(out[0][0, -1])))
    return tokens, t1 - t0, time.perf_counter() - t1


def peak_rss_mb() -> float | None:
    """This process's peak resident memory: /proc/self/status VmHWM (kB), else getrusage (KiB on Linux, bytes on
    macOS)."""
    text = _read("/proc/self/status") or ""
    for line in text.splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 2)
    try:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    except (ImportError, OSError):
        return None
    return round(peak / (2**20 if sys.platform == "darwin" else 1024), 2)


def generation(session: Session, prompts: np.ndarray, new_tokens: int, args: argparse.Namespace) -> dict[str, Any]:
    """Time greedy generation under the latency bench's rules: every prompt once untimed (its tokens are the
    record's, for the host to compare with PyTorch; also the first warm-up), more warm-up up to ``args.warmup``
    generations, then timed generations cycling the prompts until ``min_iterations`` and ``min_seconds`` are both met
    or ``max_seconds`` (warm-up included) is reached. Each timed generation gives one TTFT and one decode tokens/s
    (``new_tokens - 1`` decode calls over their time); a prompt that decodes differently when repeated is a
    non-deterministic runtime and invalidates the figures. Validity as the latency bench: rule_problems, the device
    state before and after, the temperature rule."""
    if not session.cache_inputs:
        raise RunnerError("--generate needs the key/value-cache graph (inputs past_key_<i>, past_value_<i>); this "
                          "artifact has none (TFLite lm artifacts are the plain graph: perplexity only)")
    if new_tokens < 2:
        raise RunnerError("--generate PROMPT_LEN,NEW_TOKENS: NEW_TOKENS must be at least 2 (one prefill, one decode)")
    telemetry = (args.thermal, args.throttled_cmd, args.power_mode_cmd, args.clocks_cmd)
    before = device_state(*telemetry)
    begin = time.perf_counter()
    tokens = [greedy(session, p, new_tokens)[0] for p in prompts]
    for i in range(max(0, args.warmup - len(prompts))):
        if time.perf_counter() - begin >= args.max_seconds:
            break
        greedy(session, prompts[i % len(prompts)], new_tokens)
    ttft: list[float] = []
    rate: list[float] = []
    drift: list[str] = []
    start = time.perf_counter()
    i = 0
    while True:
        k = i % len(prompts)
        got, first_s, decode_s = greedy(session, prompts[k], new_tokens)
        ttft.append(first_s * 1000)
        rate.append((new_tokens - 1) / decode_s if decode_s > 0 else float("inf"))
        if got != tokens[k] and len(drift) < 3:
            drift.append(f"prompt {k} decoded differently when repeated (non-deterministic runtime)")
        i += 1
        if (i >= args.min_iterations and time.perf_counter() - start >= args.min_seconds) or \
                time.perf_counter() - begin >= args.max_seconds:
            break
    after = device_state(*telemetry)
    reasons, _ = state_problems(before, after)
    reasons[:0] = rule_problems(args, len(ttft))
    reasons += temperature_problems(before, after, args.max_temp_c) + drift
    return {"prompt_len": int(prompts.shape[1]), "new_tokens": int(new_tokens), "prompts": int(len(prompts)),
            "ttft_ms": latency_stats(ttft), "decode_tokens_per_s": latency_stats(rate), "peak_rss_mb": peak_rss_mb(),
            "valid": not reasons, "why": "; ".join(reasons), "invalid_reasons": reasons,
            "state": {"before": before, "after": after}, "tokens": tokens}


def artifact_precision(args: argparse.Namespace) -> str | None:
    """--precision, else the exporters' file naming (``<name>.<precision>.<suffix>``)."""
    if args.precision:
        return args.precision
    parts = os.path.basename(args.artifact).split(".")
    return parts[-2] if len(parts) >= 3 and parts[-2] in ("fp32", "fp16", "int8", "int4") else None


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
                           "python": platform.python_version(), "numpy": np.__version__, "cpus": os.cpu_count(),
                           "board": board_facts()}
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
    errors: dict[str, str] = {}
    for name, loader in (("onnxruntime", lambda: __import__("onnxruntime").__version__),
                         ("openvino", lambda: __import__("openvino").get_version()),
                         ("tflite", tflite_selftest)):
        try:
            runtimes[name] = loader()
        except RunnerError as exc:  # present but unusable (or absent), with what to do about it
            runtimes[name] = None
            errors[name] = str(exc)
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
    return {"protocol": PROTOCOL, "runtimes": runtimes, "runtime_errors": errors, "onnx_providers": providers,
            "environment": environment(),
            "state": device_state(*tel), "free_bytes": st.f_bavail * st.f_frsize, "workdir": os.path.dirname(here)}


# --------------------------------------------------------------------------------------------------------- board facts
ARM_CORES = {"0xd03": "Cortex-A53", "0xd04": "Cortex-A35", "0xd05": "Cortex-A55", "0xd07": "Cortex-A57",
             "0xd08": "Cortex-A72", "0xd09": "Cortex-A73", "0xd0a": "Cortex-A75", "0xd0b": "Cortex-A76",
             "0xd0c": "Neoverse-N1", "0xd0d": "Cortex-A77", "0xd41": "Cortex-A78", "0xd42": "Cortex-A78AE",
             "0xd4b": "Cortex-A78C", "0xd46": "Cortex-A510", "0xd47": "Cortex-A710", "0xd80": "Cortex-A520",
             "0xd81": "Cortex-A720"}


def board_facts() -> dict[str, Any]:
    """What the board says about itself. ``platform`` reports the kernel the process runs under -- the host's under
    emulation or in some containers -- while /proc/cpuinfo, the device tree and L4T's release file are the board's."""
    fields = [(k.strip(), v.strip()) for k, _, v in
              (ln.partition(":") for ln in (_read("/proc/cpuinfo") or "").splitlines() if ":" in ln)]
    names = sorted({v for k, v in fields if k == "model name"})
    cores = sorted({ARM_CORES.get(v.lower(), f"Arm part {v}") for k, v in fields if k == "CPU part"})
    model = (_read("/proc/device-tree/model") or "").replace("\x00", "").strip()
    model = model or next((v for k, v in fields if k in ("Model", "Hardware")), "")
    tegra = (_read("/etc/nv_tegra_release") or "").splitlines()
    return {"model": model or None, "cpu": ", ".join(names or cores) or None,
            "cpu_count": sum(1 for k, _ in fields if k == "processor") or None,
            "l4t": tegra[0].lstrip("# ").strip() if tegra else None}


# --------------------------------------------------------------------------------------------------------- TensorRT
TRT = "TensorrtExecutionProvider"
ENGINE_CACHE_MAX_AGE_DAYS = 30


def tensorrt_version() -> str:
    """The TensorRT the EP will load: its Python module if present, else libnvinfer's own getInferLibVersion()."""
    try:
        import tensorrt

        return str(tensorrt.__version__)
    except Exception:  # noqa: BLE001 - JetPack images often lack the Python bindings
        pass
    import ctypes

    for lib in ("libnvinfer.so.10", "libnvinfer.so.8", "libnvinfer.so"):
        try:
            v = int(ctypes.CDLL(lib).getInferLibVersion())
        except (OSError, AttributeError):
            continue
        major, rest = (v // 10000, v % 10000) if v >= 100000 else (v // 1000, v % 1000)  # TRT 10 vs 8 encoding
        return f"{major}.{rest // 100}.{rest % 100}"
    return "unknown"


def tensorrt_options(precision: str | None, cache_dir: str) -> dict[str, Any]:
    """The EP's options for an artifact: the precision the file was made for (without the flag TensorRT builds an
    fp16 file's layers in fp32 and rejects INT8 Q/DQ) and an engine + timing cache, so later jobs skip the build."""
    return {"trt_fp16_enable": precision == "fp16", "trt_int8_enable": precision == "int8",
            "trt_engine_cache_enable": True, "trt_engine_cache_path": cache_dir,
            "trt_timing_cache_enable": True, "trt_timing_cache_path": cache_dir}


def _engines(folder: str) -> dict[str, float]:
    try:
        return {e.name: e.stat().st_mtime for e in os.scandir(folder) if e.name.endswith(".engine")}
    except OSError:
        return {}


def engine_cache(artifact: str, root: str, max_age_days: float = ENGINE_CACHE_MAX_AGE_DAYS) -> dict[str, Any]:
    """The artifact's engine folder under ``root`` (the device workdir, kept across jobs), keyed by the file's
    sha256 and the TensorRT version (an engine is only valid for the exact build that made it); folders unused for
    ``max_age_days`` are removed."""
    import hashlib
    import shutil

    h = hashlib.sha256()
    with open(artifact, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    version = tensorrt_version()
    key = f"{h.hexdigest()[:16]}-trt{version}"
    path = os.path.join(root, key)
    os.makedirs(path, exist_ok=True)
    os.utime(path)
    removed = []
    for entry in os.scandir(root):
        if entry.is_dir() and entry.path != path and time.time() - entry.stat().st_mtime > max_age_days * 86400:
            shutil.rmtree(entry.path, ignore_errors=True)
            removed.append(entry.name)
    return {"path": path, "key": key, "tensorrt": version, "before": _engines(path), "removed": removed}


def engine_cache_result(cache: dict[str, Any], used: list[str]) -> dict[str, Any]:
    """A hit: TensorRT ran and the session reused engines that were there before (none built or rewritten)."""
    after = _engines(cache["path"])
    hit = TRT in used and bool(cache["before"]) and after == cache["before"]
    return {"path": cache["path"], "key": cache["key"], "tensorrt": cache["tensorrt"], "hit": hit,
            "engines": sorted(after), "removed_stale": cache["removed"]}


# --------------------------------------------------------------------------------------------------------- main
def benchmark(args: argparse.Namespace) -> dict[str, Any]:
    providers = [p for p in (args.providers or "").split(",") if p]
    inputs: dict[str, np.ndarray] | None = None
    if args.inputs:
        inputs, _ = read_inputs(args.inputs)
    family = (args.backend or SUFFIXES.get(os.path.splitext(args.artifact)[1], "")).split("-")[0]
    trt_cache, onnx_options = None, {}
    if family == "onnx" and TRT in providers:
        job = os.path.dirname(os.path.abspath(args.artifact))
        trt_cache = engine_cache(args.artifact, os.path.join(os.path.dirname(job), "tensorrt-cache"))
        onnx_options["provider_options"] = {TRT: tensorrt_options(artifact_precision(args), trt_cache["path"])}
    t0 = time.perf_counter()
    session = load(args.artifact, args.backend, args.threads, providers or None,
                   input_names=list(inputs) if inputs else None, **onnx_options)
    load_ms = (time.perf_counter() - t0) * 1000
    if inputs is None:   # no data: zeros of each input's shape and dtype (valid ids and masks, unlike noise); a
        # cache graph's past is left out, so it is empty (_feeds): the forward of one token from scratch
        cache = {i["name"] for i in session.cache_inputs}
        inputs = {i["name"]: np.zeros((8, *i["shape"][1:]), dtype=i["dtype"]) for i in session.inputs
                  if i["name"] not in cache}
    first_ms = first_inference_ms(session, inputs)  # an engine build or JIT lands here, not in the figures
    gen = None
    if args.generate:   # before the latency bench and the outputs: peak memory is the model's and generation's
        prompt_len, new_tokens = parse_generate(args.generate)
        if not args.prompts:
            raise RunnerError("--generate needs --prompts (an .npz with int64 prompt_ids [n, PROMPT_LEN])")
        gen = generation(session, read_prompts(args.prompts, prompt_len), new_tokens, args)
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
        "startup_ms": {"load": round(load_ms, 3), "first_inference": round(first_ms, 3)},
        "environment": {**environment(session, args.threads, providers),  # DESIGN §6 keeps these two here
                        "governor": before.get("governor"), "temp_c": after.get("temp_c")},
    }
    if args.inputs and args.outputs:   # raw outputs for the host to score: the runner knows no metric
        outs = predict(session, inputs, read_batch_axes(args.inputs))
        raw, parts = write_outputs(args.outputs, outs, int(args.max_output_mb * 2**20),
                                   int(args.output_part_mb * 2**20))
        result["outputs"] = {"file": os.path.basename(args.outputs), "n": count(inputs), "count": len(outs),
                             "bytes": raw, "parts": parts}
    reasons, warnings = state_problems(before, after)
    reasons[:0] = rule_problems(args, len(samples))
    reasons += temperature_problems(before, after, args.max_temp_c)
    if trt_cache is not None:
        result["tensorrt"] = {"options": onnx_options["provider_options"][TRT],
                              "engine_cache": engine_cache_result(trt_cache, session.providers)}
    fallback = provider_fallback(family, providers, session.providers)
    if fallback:
        reasons.append(fallback)
    result["valid"] = not reasons
    result["invalid_reasons"] = reasons
    result["warnings"] = warnings
    if gen is not None:
        if fallback:
            gen["invalid_reasons"].append(fallback)
            gen["valid"], gen["why"] = False, "; ".join(gen["invalid_reasons"])
        result["generation"] = gen
    return result


def parse_generate(text: str) -> tuple[int, int]:
    """``--generate PROMPT_LEN,NEW_TOKENS`` -> (prompt_len, new_tokens)."""
    try:
        prompt_len, new_tokens = (int(v) for v in text.split(","))
    except ValueError:
        raise RunnerError(f"--generate {text!r}: give PROMPT_LEN,NEW_TOKENS, e.g. 16,32") from None
    if prompt_len < 1 or new_tokens < 2:
        raise RunnerError(f"--generate {text!r}: PROMPT_LEN >= 1 and NEW_TOKENS >= 2")
    return prompt_len, new_tokens


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--artifact")
    ap.add_argument("--backend", default=None, help="onnx | openvino | tflite (default: from the file suffix)")
    ap.add_argument("--precision", default=None, help="fp32 | fp16 | int8: sets TensorRT's precision flags")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--min-iterations", type=int, default=100)
    ap.add_argument("--min-seconds", type=float, default=10.0)
    ap.add_argument("--max-seconds", type=float, default=120.0)
    ap.add_argument("--inputs", default=None, help=".npz with one array per input name (or x for a single input)")
    ap.add_argument("--outputs", default=None, help="write every output on --inputs to this .npz (out0, out1, ...)")
    ap.add_argument("--max-output-mb", type=float, default=MAX_OUTPUT_MB, help="refuse to write more raw output "
                    "than this in all")
    ap.add_argument("--output-part-mb", type=float, default=OUTPUT_PART_MB, help="raw size of one outputs part")
    ap.add_argument("--providers", default="", help="comma-separated ONNX Runtime execution providers")
    ap.add_argument("--thermal", default=None)
    ap.add_argument("--throttled-cmd", default=None)
    ap.add_argument("--power-mode-cmd", default=None)
    ap.add_argument("--clocks-cmd", default=None)
    ap.add_argument("--max-temp-c", type=float, default=None, help="invalid when the device is this hot or hotter")
    ap.add_argument("--generate", default=None, metavar="PROMPT_LEN,NEW_TOKENS",
                    help="a decoder's cache graph: time greedy generation of --prompts (TTFT, decode tokens/s, peak "
                         "memory) and return the tokens")
    ap.add_argument("--prompts", default=None, help=".npz with int64 prompt_ids [n, PROMPT_LEN] for --generate")
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
