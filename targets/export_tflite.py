"""PyTorch -> TFLite (LiteRT) with litert-torch; FP16 as float16 weights (ai-edge-quantizer's fp16 recipe); INT8 as a
full-integer model through litert-torch's PT2E quantizer (symmetric, per-channel weights), calibrated on the
pipeline's calibration array.

The INT8 model takes and returns int8 tensors; the runner quantizes inputs and dequantizes outputs with the tensors'
own scale and zero point, so callers always feed float32.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from targets import weight_only
from targets._export_common import (
    calib_samples,
    export_failure,
    keep_float_not_found,
    keep_frozen_float,
    module_paths,
    resolve_int8_scheme,
)
from targets.artifact import Artifact
from targets.errors import ExportError, MissingDependencyError
from targets.export_config import ExportConfig

os.environ.setdefault("LITERT_TORCH_SHOW_PROGRESS", "n")  # litert-torch prints a progress tree per conversion

import litert_torch  # after the env var; at module level so get_exporter reports a missing extra
from litert_torch import fx_infra
from torch._decomp import decompositions as _torch_decomp

# litert-torch lowers only the core-ATen set, which has no adaptive_max_pool2d (a global max pool: face detectors'
# and re-id heads' "peak" features), so such a model was refused by both tflite backends. torch's own decomposition
# turns a global or evenly dividing one into amax / max_pool2d, which LiteRT has (registered once, for this
# converter's table only).
fx_infra.decomp.add_pre_convert_decomp(torch.ops.aten.adaptive_max_pool2d, _torch_decomp.adaptive_max_pool2d)

# ONNX op type spelling (keep_float_ops) -> the aten ops of the exported graph
_ATEN = {"Add": ("add",), "Mul": ("mul",), "Sub": ("sub", "rsub"), "Div": ("div",), "Where": ("where",),
         "Softmax": ("softmax", "_softmax"), "MatMul": ("matmul", "bmm", "mm"), "Gemm": ("linear", "addmm"),
         "Conv": ("conv2d", "conv1d", "convolution"), "LayerNormalization": ("layer_norm",),
         "Gather": ("embedding", "index_select"), "Concat": ("cat", "concat"), "Transpose": ("permute", "transpose"),
         "Resize": ("upsample_nearest2d", "upsample_bilinear2d"), "Sigmoid": ("sigmoid",)}
_WEIGHT_OPS = ("linear", "conv1d", "conv2d", "convolution", "addmm")


def _aten_name(node: torch.fx.Node) -> str:
    target = node.target
    name = target.name() if hasattr(target, "name") else str(target)
    return name.replace("::", ".").split(".")[1] if "." in name.replace("::", ".") else name


_FUSED_FOLLOWERS = {"batch_norm", "_native_batch_norm_legit_no_training", "getitem", "relu", "relu_", "hardtanh",
                    "hardtanh_", "relu6"}


def _drop_orphaned_shared_specs(model: torch.fx.GraphModule) -> None:
    """Unannotate, until nothing changes, every node whose shared quantization spec points at a node left float: a
    conv kept float while its fused batch norm / ReLU (annotated as one pattern) shares the conv's output spec would
    otherwise fail in prepare_pt2e with a bare ``KeyError: conv2d``."""
    from torchao.quantization.pt2e.quantizer import SharedQuantizationSpec

    def refers_to_float(spec: Any) -> bool:
        if not isinstance(spec, SharedQuantizationSpec):
            return False
        ref = spec.edge_or_node
        nodes = ref if isinstance(ref, tuple) else (ref,)
        return any("quantization_annotation" not in n.meta for n in nodes)

    changed = True
    while changed:
        changed = False
        for node in model.graph.nodes:
            ann = node.meta.get("quantization_annotation")
            if ann is None:
                continue
            specs = [ann.output_qspec, *ann.input_qspec_map.values()]
            if any(refers_to_float(s) for s in specs):
                node.meta.pop("quantization_annotation")
                changed = True


# TFLite's int8 kernels of these ops accept only one output scale / zero point (tflite/kernels/activations.cc: "output->
# params.scale not near 1.f / 256"): the quantizer's own fixed-qparams annotator matches ``_softmax`` and ``sigmoid``
# alone, and only after an annotated producer, so a ``softmax.int`` between a conv and a mul (a soft-argmax box head)
# got its consumer's observed scale and the .tflite failed to load.
_FIXED_QPARAMS = {"softmax": (1 / 256, -128), "_softmax": (1 / 256, -128), "sigmoid": (1 / 256, -128),
                  "tanh": (1 / 128, 0)}


def _fix_output_qparams(model: torch.fx.GraphModule, floated: set[int]) -> None:
    """Give every softmax / sigmoid / tanh not kept float the output quantization TFLite's int8 kernel demands."""
    from torchao.quantization.pt2e.quantizer import FixedQParamsQuantizationSpec, QuantizationAnnotation

    for node in model.graph.nodes:
        op = _aten_name(node) if node.op == "call_function" else ""
        if op not in _FIXED_QPARAMS or id(node) in floated:
            continue
        scale, zero = _FIXED_QPARAMS[op]
        spec = FixedQParamsQuantizationSpec(dtype=torch.int8, scale=scale, zero_point=zero, quant_min=-128,
                                            quant_max=127, qscheme=torch.per_tensor_affine)
        ann = node.meta.get("quantization_annotation")
        node.meta["quantization_annotation"] = QuantizationAnnotation(
            input_qspec_map=dict(ann.input_qspec_map) if ann else {}, output_qspec=spec, _annotated=True)


def _keep_float_quantizer(base: type, graph: torch.fx.GraphModule, keep_float: list[str],
                          keep_ops: list[str] | None = None) -> Any:
    """litert-torch's PT2EQuantizer with the ``keep_float`` layers left unannotated, so they stay float between a
    DEQUANTIZE and a QUANTIZE. Its own ``set_module_name`` refuses ``None`` and matches names by rewriting ``_`` to
    ``.``, which breaks on module names with underscores; the exported graph's module stack names them exactly."""
    calls = [n for n in graph.graph.nodes if n.op == "call_function"]
    ops_here = {_aten_name(n) for n in calls}
    transformer = bool({"softmax", "_softmax"} & ops_here) and bool({"matmul", "bmm", "mm"} & ops_here)
    missing = [k for k in keep_float if not any(k in module_paths(n) for n in calls)]
    if missing:
        raise keep_float_not_found("tflite", missing)
    kept = set(keep_float)
    float_ops = {a for o in keep_ops or [] for a in _ATEN.get(o, (o.lower(),))}
    only_weights = keep_ops is None and transformer   # transformer default: only weight products in INT8

    class KeepFloat(base):  # type: ignore[misc, valid-type]
        def annotate(self, model: torch.fx.GraphModule) -> torch.fx.GraphModule:
            model = super().annotate(model)
            floated = []
            for node in model.graph.nodes:
                op = _aten_name(node) if node.op == "call_function" else ""
                if kept.intersection(module_paths(node)) or op in float_ops \
                        or (only_weights and node.op == "call_function" and op not in _WEIGHT_OPS):
                    node.meta.pop("quantization_annotation", None)
                    floated.append(node)
            # a kept conv's fused batch norm and activation (one pattern, one output quantizer) stay float with it
            kept_ids = {id(n) for n in floated}        # before the walk below empties ``floated``
            while floated:
                for user in floated.pop().users:
                    if user.op == "call_function" and _aten_name(user) in _FUSED_FOLLOWERS \
                            and "quantization_annotation" in user.meta:
                        user.meta.pop("quantization_annotation")
                        floated.append(user)
                        kept_ids.add(id(user))
            _drop_orphaned_shared_specs(model)
            # (an empty set here re-quantized every kept-float sigmoid with the fixed 1/256 scale: the YOLOv8 output
            # concat then shared it and the pixel boxes clipped at 1.0, mAP 0)
            _fix_output_qparams(model, kept_ids)
            return model

    return KeepFloat()


def _batched_export(model: torch.nn.Module,
                    example_inputs: tuple[torch.Tensor, ...]) -> tuple[torch.fx.GraphModule, bool]:
    """The model's graph with a dynamic batch dimension on every input, so calibration runs in batches; litert-torch
    re-exports it at the example's batch of 1. A model that will not export with a dynamic batch is exported as it
    is."""
    try:
        wide = tuple(x[:1].expand(2, *x.shape[1:]).contiguous() for x in example_inputs)
        batch = torch.export.Dim("batch", min=1, max=4096)
        dims = tuple({0: batch} for _ in example_inputs)
        return torch.export.export(model.eval(), wide, dynamic_shapes=dims).module(), True
    except Exception:  # noqa: BLE001 - a batch-specialised model still quantizes, one sample a call
        return torch.export.export(model.eval(), example_inputs).module(), False


def _quantized_program(model: torch.nn.Module, example_inputs: tuple[torch.Tensor, ...], calib: Any,
                       cfg: ExportConfig) -> tuple[Any, Any]:
    from litert_torch.quantize import pt2e_quantizer as pq
    from litert_torch.quantize.quant_config import QuantConfig

    try:
        from torchao.quantization.pt2e import quantize_pt2e
    except ImportError as exc:
        raise MissingDependencyError("torchao", "tflite", purpose="tflite-int8 (PT2E quantization)") from exc

    graph, batched = _batched_export(model, example_inputs)
    quantizer = _keep_float_quantizer(pq.PT2EQuantizer, graph, cfg.keep_float, cfg.keep_float_ops)
    quantizer.set_global(pq.get_symmetric_quantization_config(is_per_channel=cfg.per_channel))
    prepared = quantize_pt2e.prepare_pt2e(graph, quantizer)
    names = list(cfg.input_names) or (["input"] if len(example_inputs) == 1
                                      else [f"input{i}" for i in range(len(example_inputs))])
    samples = calib_samples(calib, names, cfg.calib_samples)   # every input, by name
    step = 32 if batched else 1
    with torch.no_grad():  # observers are python per call: 32 samples a call where the graph allows (minutes -> s)
        for i in range(0, len(samples), step):
            chunk = samples[i:i + step]
            prepared(*(torch.from_numpy(np.concatenate([c[n] for c in chunk])) for n in names))
    converted = quantize_pt2e.convert_pt2e(prepared, fold_quantize=False)
    # litert-torch warned "converted in training mode" because an exported GraphModule keeps nn.Module's default
    # ``training=True``. The graph itself was traced from the model in eval mode: batch norm is already
    # ``_native_batch_norm_legit_no_training`` and prepare_pt2e folds it into the preceding convolution (no
    # batch_norm node survives convert_pt2e, and the .tflite holds no separate MUL/ADD per BN), so the warning cost
    # nothing but a false alarm. ``.eval()`` is refused on exported modules, so the flag is cleared directly.
    for module in converted.modules():
        module.training = False
    return converted, QuantConfig(pt2e_quantizer=quantizer)


def simulate(model: torch.nn.Module, example_inputs: tuple[torch.Tensor, ...], calib: Any,
             cfg: ExportConfig) -> Any:
    """The INT8 program exactly as ``export`` quantizes it (same quantizer, keep_float and calibration), run in torch
    with its quantize/dequantize pairs, 64 samples a call: what the mixed-precision search ranks with, because a
    LiteRT conversion costs about a minute a try on 2 cores and this costs seconds. The search checks its final
    choice in LiteRT itself."""
    program, _ = _quantized_program(model, example_inputs, calib, cfg)
    names = list(cfg.input_names) or (["input"] if len(example_inputs) == 1
                                      else [f"input{i}" for i in range(len(example_inputs))])

    def run(feeds: dict[str, np.ndarray], batch_axes: list[int] | None = None) -> list[np.ndarray]:
        """Every output samples first, as ``bench.predict`` returns the runtime's: output j's samples lie on
        ``batch_axes[j]`` (0 when not given; 1 for a time-major ``(T, B, C)``), so each chunk is moved before it is
        stacked (stacking a time-major output on axis 0 gave ``(T * chunks, 64, C)``)."""
        axes = list(batch_axes or [])
        n = len(next(iter(feeds.values())))

        def call(lo: int, hi: int) -> list[np.ndarray]:
            got = program(*(torch.from_numpy(np.ascontiguousarray(feeds[k][lo:hi])) for k in names))
            got = got if isinstance(got, (tuple, list)) else [got]
            return [np.moveaxis(t.numpy(), axes[j], 0) if j < len(axes) and axes[j] and t.ndim > axes[j]
                    else t.numpy() for j, t in enumerate(got)]

        outs: list[list[np.ndarray]] = []
        with torch.no_grad():
            for i in range(0, n, 64):
                try:
                    outs.append(call(i, min(n, i + 64)))
                except Exception:  # noqa: BLE001 - a batch-specialised graph: one sample a call
                    outs.extend(call(k, k + 1) for k in range(i, min(n, i + 64)))
        return [np.concatenate([o[j] for o in outs]) for j in range(len(outs[0]))]

    return run


def _is_attention(model: torch.nn.Module, example_inputs: tuple[torch.Tensor, ...]) -> bool:
    """Softmax feeding matrix products in the exported graph: the model family INT8's "auto" scheme goes by."""
    try:
        graph = torch.export.export(model.eval(), example_inputs).graph
    except Exception:  # noqa: BLE001 - the conversion itself will report what does not export
        return False
    ops = {_aten_name(n) for n in graph.nodes if n.op == "call_function"}
    return bool({"softmax", "_softmax"} & ops) and bool({"matmul", "bmm", "mm"} & ops)


def _convert(model: torch.nn.Module, example_inputs: tuple[torch.Tensor, ...], calib: Any,
             cfg: ExportConfig, scheme: dict[str, str] | None = None) -> Any:
    if cfg.precision == "int8" and scheme is not None and scheme["scheme"] == "dynamic":
        # dynamic-range: int8 weights, activations quantized per call inside each kernel, float32 I/O
        if cfg.keep_float or cfg.keep_float_ops:
            raise ExportError("tflite", "keep_float is not applied by the dynamic-range scheme",
                              hint="use int8_scheme: static (or auto) with keep_float")
        from litert_torch.generative.quantize import quant_recipes

        return litert_torch.convert(model.eval(), example_inputs, quant_config=quant_recipes.full_dynamic_recipe())
    if cfg.precision == "fp32":
        return litert_torch.convert(model.eval(), example_inputs)
    if cfg.precision == "fp16":
        from litert_torch.generative.quantize import quant_recipes

        return litert_torch.convert(model.eval(), example_inputs, quant_config=quant_recipes.full_fp16_recipe())
    if weight_only.bits_for(cfg) == 8:   # dynamic-range INT8: int8 weights, float activations and I/O
        from litert_torch.generative.quantize import quant_recipes

        return litert_torch.convert(model.eval(), example_inputs, quant_config=quant_recipes.full_dynamic_recipe())
    program, qcfg = _quantized_program(model, example_inputs, calib, cfg)
    return litert_torch.convert(program, example_inputs, quant_config=qcfg)


def export(model: torch.nn.Module, example_inputs: tuple[torch.Tensor, ...], calib: Any,
           cfg: ExportConfig, out_dir: Path) -> Artifact:
    """Write ``<name>.<precision>.tflite`` into ``out_dir`` (atomically) with its sidecar record."""
    cfg, auto_float = keep_frozen_float(cfg, model)   # frozen decode tails (YOLOv8 DFL) stay float
    if cfg.precision == "int8" and weight_only.bits_for(cfg) is None:
        if calib is None or len(calib) == 0:
            raise ExportError("tflite", "INT8 needs calibration inputs", hint="give data.calib in the recipe")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / f"{cfg.name}.{cfg.precision}.tflite"
    scheme = resolve_int8_scheme("tflite", cfg.int8_scheme, _is_attention(model, example_inputs)) \
        if cfg.precision == "int8" and weight_only.bits_for(cfg) is None else None
    try:
        edge_model = _convert(model, example_inputs, calib, cfg, scheme)
    except (ExportError, MissingDependencyError):
        raise
    except Exception as exc:  # torch.export, PT2E and the MLIR lowering all raise their own types
        raise export_failure("tflite", exc, model, example_inputs) from exc
    metadata: dict[str, Any] = {"converter": f"litert-torch {litert_torch.__version__}"}
    if weight_only.bits_for(cfg) == 8:
        metadata["weight_only"] = weight_only.tflite_record(model, f"litert_torch {litert_torch.__version__} "
                                                            "full_dynamic_recipe")
    elif scheme is not None and scheme["scheme"] == "dynamic":
        metadata.update(int8=scheme, scheme="dynamic-range int8: int8 weights (per channel), activations "
                        "quantized per call, float32 I/O", quantizer="litert_torch full_dynamic_recipe",
                        calibration="none (activations quantized per call)", calib_samples=0,
                        keep_float=list(cfg.keep_float), keep_float_ops=cfg.keep_float_ops)
    elif cfg.precision == "int8":
        metadata.update(int8=scheme, scheme="full-integer int8 (int8 I/O), symmetric, "
                        + ("per-channel" if cfg.per_channel else "per-tensor") + " weights",
                        quantizer="litert_torch PT2EQuantizer",
                        calibration="the PT2E config's observers (ExportConfig.calibration: onnx and openvino)",
                        calib_samples=int(min(len(calib) if isinstance(calib, np.ndarray)
                                              else min(len(v) for v in calib.values()), cfg.calib_samples)),
                        keep_float=list(cfg.keep_float), keep_float_ops=cfg.keep_float_ops)
        if auto_float:
            metadata["keep_float_auto"] = auto_float
    elif cfg.precision == "fp16":
        metadata["fp16"] = "float16 weights dequantized at load; float32 compute and I/O"
    metadata["inputs"] = list(cfg.input_names) or None   # the runner matches args_<i> to these, in order
    if cfg.task == "lm":   # static shapes: no key/value cache graph (targets/export_decoder.py)
        metadata["lm"] = ("plain graph input_ids [1, T] -> logits (static shapes): perplexity only, no generation "
                          "figures")
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".tflite-") as tmp:
        tmp_path = Path(tmp) / final.name
        edge_model.export(str(tmp_path))
        tmp_path.replace(final)
    art = Artifact.from_files(final, backend="tflite", precision=cfg.precision, parent=cfg.parent,
                              produced_by="targets.export_tflite", config=cfg.model_dump(), metadata=metadata)
    art.save()
    return art
