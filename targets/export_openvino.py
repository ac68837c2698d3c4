"""PyTorch -> OpenVINO IR (``ov.convert_model`` with a static input shape), INT8 through NNCF post-training
quantization over the pipeline's calibration array.

Why a static shape: an INT8 model with a dynamic batch dimension failed to compile on the CPU plugin and the static
one was the fastest we measured; batch is 1 in this pipeline anyway. FP32 weights are saved uncompressed
(``compress_to_fp16=False``) so "fp32" means fp32 on disk; the runner pins ``INFERENCE_PRECISION_HINT=f32`` so the
CPU plugin does not silently run it in bf16. "fp16" is the IR with float16 weights (half the file, what Intel GPUs,
NPUs and ARM CPUs run natively); the runner asks for f16 inference on it and records what the plugin actually used:
an x86 CPU without native float16 substitutes its own half-precision path (bf16 on this AVX512-BF16 host) or f32.

INT8 from the QDQ ONNX artifact (``ov_int8_from: onnx-qdq``, what QAT asks for): measured on the digits demo's QAT
student, the QAT weights keep 99.17% top-1 through ORT static QDQ and LiteRT PT2E, but NNCF post-training
quantization of the same weights gives 98.33% (both presets, with or without keep_float). OpenVINO reading the QDQ
model executes the convolutions in u8/i8 with the scales already decided (and checked) there, and keeps 99.17%.
This path declares its dependency in ``targets.REQUIRES``; the orchestrator exports onnx-int8 first.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import openvino as ov  # at module level: a missing runtime surfaces in get_exporter as the extra to install
import torch

from targets import export_decoder, weight_only
from targets._export_common import (
    calib_samples,
    count_outputs,
    export_failure,
    first_line,
    io_names,
    keep_frozen_float,
    resolve_int8_scheme,
)
from targets.artifact import Artifact
from targets.errors import ExportError, MissingDependencyError
from targets.export_config import ExportConfig
from targets.ov_scope import ignored_scope

_OV_TYPES = {torch.float32: ov.Type.f32, torch.float16: ov.Type.f16, torch.int64: ov.Type.i64,
             torch.int32: ov.Type.i32, torch.uint8: ov.Type.u8, torch.bool: ov.Type.boolean}
# ONNX op type spelling (what keep_float_ops uses everywhere) -> OpenVINO op types
_OV_OPS = {"Add": ["Add"], "Mul": ["Multiply"], "Sub": ["Subtract"], "Div": ["Divide"], "Where": ["Select"],
           "Softmax": ["SoftMax", "Softmax"], "MatMul": ["MatMul"], "Gemm": ["MatMul"], "Conv": ["Convolution"],
           "LayerNormalization": ["MVN"], "Gather": ["Gather"], "Resize": ["Interpolate"]}


def _convert(model: torch.nn.Module, example_inputs: tuple[torch.Tensor, ...],
             cfg: ExportConfig | None = None) -> Any:
    """Static shapes, every input typed as the example (int64 ids stay int64) and every input/output named; for task
    ``lm`` the key/value-cache graph (targets/export_decoder.py) with B, S and P dynamic."""
    cfg = cfg or ExportConfig()
    if export_decoder.is_lm(cfg):
        layout = export_decoder.cache_layout(model)
        model = export_decoder.CacheGraph(model)
        example_inputs = export_decoder.example_inputs(layout)
        shapes = export_decoder.openvino_inputs(layout)
        names_in, names_out = export_decoder.io_names(layout["layers"])
    else:
        names_in, names_out = io_names(cfg, example_inputs, count_outputs(model, example_inputs))
        shapes = [(ov.PartialShape([int(d) for d in x.shape]), _OV_TYPES.get(x.dtype, ov.Type.f32))
                  for x in example_inputs]
    try:
        ov_model = ov.convert_model(model.eval(), example_input=example_inputs, input=shapes)
    except Exception as exc:  # the frontend raises OpConversionFailure, RuntimeError, GeneralFailure...
        raise export_failure("openvino", exc, model, example_inputs) from exc
    for port, name in zip(ov_model.inputs, names_in, strict=True):
        port.get_tensor().set_names({name})
    for port, name in zip(ov_model.outputs, names_out, strict=True):
        port.get_tensor().set_names({name})
    return ov_model


# ExportConfig.calibration -> NNCF's activation range estimator. NNCF's own default (the mean over calibration
# samples of each sample's min and max) clips every value beyond an average sample's range: on the multi-head
# example, whose ink regression must stay within 0.1, it cost 13 points of "ink right" (0.98 -> 0.84) where the
# global min/max that ONNX Runtime's MinMax calibrator uses cost 2 (0.95), with every other head unchanged.
_RANGES = {"minmax": "MINMAX", "percentile": "MEAN_QUANTILE", "entropy": "HISTOGRAM"}


def _activation_matmuls(ov_model: Any) -> list[str]:
    """Names of the MatMuls with no constant operand: attention's scores (Q x K^T) and context (P x V).

    NNCF's ``ModelType.TRANSFORMER`` still puts activation quantizers on both of their inputs; on the tokens encoder
    that alone took top-1 agreement with FP32 from 0.98 to 0.87 (cosine 0.999 -> 0.973). Keeping them float makes the
    OpenVINO plan the one ONNX Runtime uses for transformers: INT8 only where a MatMul multiplies by weights."""
    def constant(node: Any) -> bool:
        while node.get_type_name() in ("Convert", "Reshape", "Transpose", "Unsqueeze", "FakeQuantize"):
            node = node.input_value(0).get_node()
        return node.get_type_name() == "Constant"

    return sorted(op.get_friendly_name() for op in ov_model.get_ops() if op.get_type_name() == "MatMul"
                  and not any(constant(op.input_value(i).get_node()) for i in range(2)))


# SmoothQuant's migration strength for MatMuls (NNCF's own transformer default): the share of each activation
# channel's range moved into the weights before quantization.
SMOOTH_QUANT_ALPHA = 0.95


def _smooth_quant(on: bool) -> dict[str, Any]:
    """NNCF's SmoothQuant parameters for the "smoothquant" scheme; nothing (NNCF's defaults, today's static scheme)
    otherwise."""
    if not on:
        return {}
    from nncf.quantization.advanced_parameters import AdvancedSmoothQuantParameters

    return {"smooth_quant_alphas": AdvancedSmoothQuantParameters(matmul=SMOOTH_QUANT_ALPHA)}


def _quantize(ov_model: Any, calib: Any, cfg: ExportConfig) -> tuple[Any, dict[str, Any]]:
    """NNCF post-training INT8; every input fed by name. A transformer-shaped model (Softmax attention) uses NNCF's
    transformer scheme (weights of MatMuls in INT8, mask/residual/score arithmetic in float); ``keep_float_ops``
    keeps op types in float."""
    try:
        import nncf
    except ImportError as exc:
        raise MissingDependencyError("nncf", "openvino", purpose="openvino-int8") from exc
    names = [p.get_any_name() for p in ov_model.inputs]
    data = calib_samples(calib, names, cfg.calib_samples)
    types = {op.get_type_name() for op in ov_model.get_ops()}
    transformer = "MatMul" in types and bool({"SoftMax", "Softmax"} & types)
    resolved = resolve_int8_scheme("openvino", cfg.int8_scheme, transformer)
    smooth = resolved["scheme"] == "smoothquant"
    preset = nncf.QuantizationPreset.PERFORMANCE if cfg.ov_preset == "performance" and not smooth \
        else nncf.QuantizationPreset.MIXED
    ignored = ignored_scope(ov_model, cfg.keep_float)
    ops = [t for o in cfg.keep_float_ops or [] for t in _OV_OPS.get(o, [o]) if t in types]
    plan: dict[str, Any] = {"transformer": transformer, "keep_float_ops": list(cfg.keep_float_ops or []),
                            **resolved}
    if transformer and cfg.keep_float_ops is None:
        attention = _activation_matmuls(ov_model)
        ignored = sorted({*ignored, *attention})
        plan["float_attention_matmuls"] = attention
    scope = nncf.IgnoredScope(names=ignored, types=ops) if ignored or ops else None
    kwargs: dict[str, Any] = {"model_type": nncf.ModelType.TRANSFORMER} if transformer or smooth else {}
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    estimator = getattr(RangeEstimatorParametersSet, _RANGES[cfg.calibration])
    kwargs["advanced_parameters"] = AdvancedQuantizationParameters(
        activations_range_estimator_params=estimator, disable_bias_correction=cfg.ov_bias_correction == "none",
        **_smooth_quant(smooth))
    if smooth:
        plan.update(preset="mixed (asymmetric activations)", smooth_quant_alpha_matmul=SMOOTH_QUANT_ALPHA)
    kwargs["fast_bias_correction"] = cfg.ov_bias_correction != "full"
    plan.update(activation_ranges=_RANGES[cfg.calibration], bias_correction=cfg.ov_bias_correction)
    try:
        return nncf.quantize(ov_model, nncf.Dataset(data), preset=preset, subset_size=len(data),
                             ignored_scope=scope, **kwargs), plan
    except ExportError:
        raise
    except Exception as exc:  # NNCF raises many internal types
        raise ExportError("openvino", f"NNCF INT8 quantization failed: {first_line(exc)}",
                          hint="keep the failing layer in float (keep_float) or use another backend") from exc


def _from_qdq(sources: dict[str, Artifact] | None) -> tuple[Any, Artifact]:
    qdq = (sources or {}).get("onnx-int8")
    if qdq is None:
        raise ExportError("openvino", "ov_int8_from: onnx-qdq needs the onnx-int8 artifact, and there is none",
                          hint="export onnx-int8 first (the pipeline does, in dependency order), or set "
                               "ov_int8_from: model")
    scheme = (qdq.metadata.get("int8") or {}).get("scheme", "static")
    if scheme != "static":
        raise ExportError("openvino", f"ov_int8_from: onnx-qdq needs a static QDQ onnx-int8, and it was made with "
                          f"int8_scheme {scheme}", hint="set quantize.int8_scheme: static (or auto) with mode: qat")
    try:
        return ov.convert_model(str(qdq.path)), qdq
    except Exception as exc:  # the frontend raises many types
        raise ExportError("openvino", f"cannot read the QDQ ONNX model {qdq.path}: {first_line(exc)}",
                          hint="set ov_int8_from: model to quantize with NNCF instead") from exc


def export(model: torch.nn.Module, example_inputs: tuple[torch.Tensor, ...], calib: Any,
           cfg: ExportConfig, out_dir: Path, *, sources: dict[str, Artifact] | None = None) -> Artifact:
    """Write ``<name>.<precision>.xml`` and ``.bin`` into ``out_dir`` (atomically) with the sidecar record.

    ``sources`` holds the artifacts a declared dependency (``targets.REQUIRES``) produced: ``onnx-int8`` for INT8
    read from the QDQ ONNX model.
    """
    cfg, auto_float = keep_frozen_float(cfg, model)   # frozen decode tails (YOLOv8 DFL) stay float
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / f"{cfg.name}.{cfg.precision}.xml"
    metadata: dict[str, Any] = {"openvino": ov.get_version(), "input_shape": list(example_inputs[0].shape),
                                "inputs": {n: [list(x.shape), str(x.dtype).replace("torch.", "")] for n, x in
                                           zip(cfg.input_names or [f"input{i}" for i in range(len(example_inputs))],
                                               example_inputs, strict=False)},
                                "weights_on_disk": cfg.precision}
    if export_decoder.is_lm(cfg):
        metadata["generation"] = export_decoder.generation_metadata(export_decoder.cache_layout(model))
    parent = cfg.parent
    if weight_only.bits_for(cfg) is not None:   # int4, or int8 of a language model: NNCF weight compression
        ov_model = _convert(model, example_inputs, cfg)
        data = None
        if cfg.wo_data_aware and calib is not None and len(calib):
            data = calib_samples(calib, [p.get_any_name() for p in ov_model.inputs], cfg.calib_samples)
        ov_model, metadata["weight_only"] = weight_only.quantize_openvino(ov_model, cfg, data)
    elif cfg.precision == "int8" and cfg.ov_int8_from == "onnx-qdq":
        ov_model, qdq = _from_qdq(sources)
        ov_model.outputs[0].get_tensor().set_names({"output"})
        parent = qdq.sha256
        metadata.update(source=f"onnx-int8 QDQ model {Path(qdq.path).name} (sha256 {qdq.sha256[:12]})",
                        keep_float=list(qdq.metadata.get("keep_float", [])),
                        **({"mixed_precision": qdq.metadata["mixed_precision"]}
                           if "mixed_precision" in qdq.metadata else {}))
    elif cfg.precision == "int8":
        ov_model = _convert(model, example_inputs, cfg)
        if calib is None or len(calib) == 0:
            raise ExportError("openvino", "INT8 needs calibration inputs", hint="give data.calib in the recipe")
        ov_model, plan = _quantize(ov_model, calib, cfg)
        import nncf

        n_calib = len(calib) if isinstance(calib, np.ndarray) else min(len(v) for v in calib.values())
        metadata.update(quantizer=f"nncf {nncf.__version__}", op_plan=plan,
                        preset="mixed" if plan["scheme"] == "smoothquant" else cfg.ov_preset,
                        int8={k: plan[k] for k in ("scheme", "requested", "scheme_why")},
                        calibration=f"{cfg.calibration}: nncf activation ranges {plan['activation_ranges']}, weights "
                                    "per-channel min/max",
                        calib_samples=int(min(n_calib, cfg.calib_samples)), keep_float=list(cfg.keep_float))
        if auto_float:
            metadata["keep_float_auto"] = auto_float
    else:
        ov_model = _convert(model, example_inputs, cfg)
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".openvino-") as tmp:
        tmp_xml = Path(tmp) / final.name
        ov.save_model(ov_model, str(tmp_xml), compress_to_fp16=cfg.precision == "fp16")
        tmp_xml.with_suffix(".bin").replace(final.with_suffix(".bin"))  # .bin first: a visible .xml is complete
        tmp_xml.replace(final)
    art = Artifact.from_files(final, backend="openvino", precision=cfg.precision, parent=parent,
                              extra_files=[final.with_suffix(".bin")], produced_by="targets.export_openvino",
                              config=cfg.model_dump(), metadata=metadata)
    art.save()
    return art
