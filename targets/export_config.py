"""The typed config every export adapter takes; the pipeline fills it from the recipe's quantize stage."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from targets.schema import StrictModel


class ExportConfig(StrictModel):
    precision: Literal["fp32", "fp16", "int8", "int4"] = "fp32"   # int4: weight-only (onnx, openvino)
    name: str = "model"                      # file stem: <name>.<precision>.<suffix>
    parent: str | None = None                # sha256 or name of what this was exported from (lineage)
    opset: int = Field(default=18, ge=13)
    calibration: Literal["minmax", "percentile", "entropy"] = "minmax"
    calib_samples: int = Field(default=256, ge=1)
    per_channel: bool = True
    keep_float: list[str] = Field(default_factory=list)  # layer names (module paths, e.g. "fc") to leave in float
    # The CPU the artifact will run on: the device profile's ``arch`` ("x86_64", "aarch64", ...); None = this host.
    # ONNX INT8 picks its activation type and reduce_range from it (see export_onnx.choose_int8_scheme).
    target_arch: str | None = None
    # Whether the target x86 CPU has VNNI (AVX512-VNNI / AVX-VNNI); None = read it from this host when the target
    # is this host's arch, otherwise assume none (reduce_range is then the safe choice).
    target_vnni: bool | None = None
    onnx_activation_type: Literal["auto", "uint8", "int8"] = "auto"
    reduce_range: bool | None = None         # None = auto (x86 without VNNI)
    ov_preset: Literal["performance", "mixed"] = "performance"   # NNCF preset: symmetric / asymmetric activations
    # NNCF's bias correction after PTQ: "fast" (its default), "full" (BiasCorrection: layer by layer on the
    # calibration set, slower) or "none" (what ONNX Runtime and TFLite do). On the multi-head example "fast" took the
    # ink regression from 0.977 to 0.927 (within 0.1) while "full" kept 0.977 and "none" 0.970.
    ov_bias_correction: Literal["fast", "full", "none"] = "fast"
    # every input and output by name, in forward() order (the recipe's model.inputs / model.outputs); empty = one
    # input "input" and outputs "output", "output1", ...
    input_names: list[str] = Field(default_factory=list)
    output_names: list[str] = Field(default_factory=list)
    # op types (ONNX spelling: Add, Mul, Where, Softmax...) kept in float by every INT8 exporter; None = automatic:
    # nothing for CNNs, and for transformer-shaped graphs (Softmax attention) everything but MatMul/Gemm weights
    keep_float_ops: list[str] | None = None
    # openvino-int8 from the model (NNCF PTQ), or from the onnx-int8 QDQ artifact (after QAT: its scales as decided
    # there); the latter declares a dependency on onnx-int8 (targets.REQUIRES), exported first whatever the order.
    ov_int8_from: Literal["model", "onnx-qdq"] = "model"
    # How INT8 quantizes: "auto" = by model family and backend -- weight-only for task "lm" (targets/weight_only.py:
    # 8-bit weights, float activations); static for convolutional nets; for attention models onnx "dynamic" (ORT
    # quantize_dynamic of the weight MatMuls), openvino "smoothquant" (NNCF transformer scheme + SmoothQuant),
    # tflite "static" (targets._export_common.resolve_int8_scheme); recorded in the artifact's metadata
    # (int8.scheme / scheme_why, or weight_only).
    int8_scheme: Literal["auto", "static", "dynamic", "smoothquant", "weight_only"] = "auto"
    # the recipe's task kind; "lm" (a decoder, LM_CONTRACT.md) exports ONNX and OpenVINO as the key/value-cache graph
    # (targets/export_decoder.py) and TFLite as the plain static-shape forward; it also picks int8_scheme "auto"
    task: str | None = None
    # Weight-only quantization (precision int4, or int8 with the weight_only scheme): block (group) size along the
    # input dimension, symmetric or asymmetric, the fraction of the ratio-defining layers at 4 bit (the rest at 8),
    # and layers (module paths) kept in float.
    wo_block_size: int = Field(default=32, ge=16)
    wo_symmetric: bool = True
    wo_ratio: float = Field(default=1.0, ge=0.0, le=1.0)
    wo_keep_float: list[str] = Field(default_factory=list)
    # ORT MatMulNBits accuracy_level: the compute type inside the kernel (the graph's activations stay float either
    # way). 4 = the kernel quantizes each activation block to int8 on the fly (like TFLite's dynamic-range kernels);
    # 0 = float compute. Measured (benchmarks/lm_weight_only.py, docs/backends.md): at 0 ORT's int8 MatMulNBits was
    # 6-11x SLOWER than FP32 and int4 barely faster, at 4 int4 decoded 3-10x faster with the same perplexity (+0.4%).
    wo_accuracy_level: Literal[0, 1, 2, 3, 4] = 4
    # OpenVINO int4: NNCF's data-aware AWQ + scale estimation over the calibration inputs (when given)
    wo_data_aware: bool = False
