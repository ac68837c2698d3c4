"""Where the time goes in a quantized artifact: which compute ops its runtime did not run in integer arithmetic.

A slow INT8 model is almost always an INT8 model that is not INT8 where it matters: convolutions the runtime left in
float between QuantizeLinear/DequantizeLinear pairs (ONNX Runtime fuses a QDQ group into QLinearConv only for the
patterns it knows), ops the plugin executes in f32 (OpenVINO reports ``runtimePrecision`` per executed node), or a
LiteRT graph of float kernels wrapped in QUANTIZE/DEQUANTIZE. Each reader asks the runtime itself, the same one the
runner uses: ORT's optimized graph as the session wrote it, OpenVINO's runtime model, LiteRT's op list with tensor
types.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

# shape and bookkeeping ops that cost nothing worth reporting, whatever their type
_FREE = {"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Shape", "Identity", "Constant", "Gather", "Concat",
         "Transpose", "Parameter", "Result", "Const", "Input", "Output", "RESHAPE", "SQUEEZE", "SHAPE",
         "CONCATENATION", "TRANSPOSE", "Slice", "STRIDED_SLICE", "Cast"}
# ORT's fused integer kernels of dynamic quantization (DynamicQuantizeLinear + MatMulInteger [+ scale]): integer
# arithmetic inside, float at their edges
# and weight-only kernels (block-wise int4/int8 weights: MatMulNBits, GatherBlockQuantized), whose weights are
# integer in the file whatever the compute type
_INTEGER_FUSED = {"DynamicQuantizeMatMul", "MatMulIntegerToFloat", "DynamicQuantizeLSTM", "MatMulNBits",
                  "GatherBlockQuantized"}
_CONVERT = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "QUANTIZE", "DEQUANTIZE", "FakeQuantize",
            "Convert", "Reorder"}


def _summary(float_ops: list[tuple[str, str]], quantized: int, converts: int, runtime: str) -> dict[str, Any]:
    counts = Counter(t for t, _ in float_ops)
    return {"runtime": runtime, "quantized_ops": quantized, "float_ops": len(float_ops), "conversions": converts,
            "float_by_type": dict(counts.most_common()), "float_names": [n for _, n in float_ops][:50],
            "text": (", ".join(f"{t} x{c}" for t, c in counts.most_common()) or "none")
            + f" in float; {quantized} ops quantized; {converts} quantize/dequantize conversions"}


def onnx_ops(path: str) -> dict[str, Any]:
    """ORT's graph after its own optimizations (what it executes on the CPU provider)."""
    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="edgepipe-ops-") as tmp:
        opt = Path(tmp) / "optimized.onnx"
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.optimized_model_filepath = str(opt)
        ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        graph = onnx.load(str(opt)).graph
    float_ops, quantized, converts = [], 0, 0
    for node in graph.node:
        t = node.op_type
        if t in _CONVERT:
            converts += 1
        elif t.startswith("QLinear") or t.startswith("QGemm") or t.endswith("Integer") or t.startswith("Q") \
                or t in _INTEGER_FUSED:
            quantized += 1
        elif t not in _FREE:
            float_ops.append((t, node.name))
    return _summary(float_ops, quantized, converts, f"onnxruntime {ort.__version__} (optimized graph)")


def openvino_ops(path: str) -> dict[str, Any]:
    """OpenVINO CPU plugin's runtime model: every executed node with its ``runtimePrecision``."""
    import openvino as ov

    core = ov.Core()
    compiled = core.compile_model(core.read_model(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    float_ops, quantized, converts = [], 0, 0
    for op in compiled.get_runtime_model().get_ordered_ops():
        rt = op.get_rt_info()
        layer = rt["layerType"].astype(str) if "layerType" in rt else op.get_type_name()
        prec = rt["runtimePrecision"].astype(str) if "runtimePrecision" in rt else ""
        if layer in _CONVERT:
            converts += 1
        elif layer in _FREE:
            continue
        elif prec in ("u8", "i8", "i32"):
            quantized += 1
        else:
            float_ops.append((layer, op.get_friendly_name()))
    return _summary(float_ops, quantized, converts, f"openvino {ov.get_version()} (runtime model, CPU)")


def tflite_ops(path: str) -> dict[str, Any]:
    """LiteRT's op list (before XNNPACK swallows it into one DELEGATE node); an op runs in float when its first input
    tensor is float."""
    from targets.runner.bench import tflite_interpreter

    interpreter_cls, name, version = tflite_interpreter()
    try:
        from ai_edge_litert.interpreter import OpResolverType

        interp = interpreter_cls(model_path=path,
                                 experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    except (ImportError, TypeError, ValueError):
        interp = interpreter_cls(model_path=path)
    interp.allocate_tensors()
    dtypes = {t["index"]: str(t["dtype"]) for t in interp.get_tensor_details()}
    float_ops, quantized, converts = [], 0, 0
    for op in interp._get_ops_details():  # the interpreter's only op listing
        kind = op["op_name"]
        ins = [i for i in op["inputs"] if i >= 0]
        dtype = dtypes.get(ins[0], "") if ins else ""
        if kind in _CONVERT:
            converts += 1
        elif kind in _FREE:
            continue
        elif "int8" in dtype or "int16" in dtype:
            quantized += 1
        else:
            float_ops.append((kind, f"#{op['index']}"))
    return _summary(float_ops, quantized, converts, f"{name} {version} (op list)")


def float_ops(path: str, backend: str) -> dict[str, Any]:
    """Which ops of this artifact its runtime runs in float, by type, plus the quantized and conversion counts."""
    reader = {"onnx": onnx_ops, "openvino": openvino_ops, "tflite": tflite_ops}[backend]
    return reader(path)
