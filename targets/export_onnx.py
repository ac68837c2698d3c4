"""PyTorch -> ONNX with the dynamo exporter; FP16 by exporting a half model behind float32 casts; INT8 with ONNX
Runtime static quantization (QDQ, per-channel weights, calibrated on the pipeline's calibration array).

Why the INT8 scheme is chosen per target CPU: ORT's default (int8 activations, "S8S8") leaves most convolutions in
float on x86 and gives no speed-up, ``quantize_dynamic`` is slower than FP32 on CNNs, while uint8 activations with
int8 weights ("U8S8") hit ORT's fast integer kernels. On x86 CPUs without VNNI, U8S8 can saturate in VPMADDUBSW, so
weights are then quantized with ``reduce_range`` (7 bits), as ORT's documentation advises.

Biases stay float32 in the file (``QuantizeBias: False``). ORT's QDQ fusion still turns every Conv into QLinearConv
and quantizes the bias itself (same speed and accuracy, measured), TensorRT's explicit-quantization rules want float
biases anyway, and a quantized bias costs three per-channel tensors (int32 values, float scales, int32 zero points)
where one will do: on MobileNetV2 that took the INT8 file from 0.278x to 0.266x of FP32.
"""

from __future__ import annotations

import copy
import platform
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from targets import export_decoder, weight_only
from targets._export_common import (
    calib_samples,
    count_outputs,
    export_failure,
    first_line,
    io_names,
    is_transformer,
    keep_float_not_found,
    keep_frozen_float,
    resolve_int8_scheme,
)
from targets.artifact import Artifact
from targets.errors import ExportError
from targets.export_config import ExportConfig

X86_ARCHES = {"x86_64", "amd64", "i686", "i386", "x86"}


def host_has_vnni() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return bool(re.search(r"\b(avx512_vnni|avx_vnni|amx_int8)\b", flags))


def choose_int8_scheme(cfg: ExportConfig) -> dict[str, Any]:
    """Activation type and reduce_range for the target CPU; the choice is recorded in the artifact's metadata."""
    host = platform.machine().lower()
    arch = (cfg.target_arch or host).lower()
    x86 = arch in X86_ARCHES
    vnni = cfg.target_vnni
    if vnni is None:
        vnni = host_has_vnni() if (x86 and arch == host) else False
    activation = cfg.onnx_activation_type
    if activation == "auto":
        activation = "uint8"  # U8S8: ORT's fast path on x86 (VNNI or not) and on ARM64 (both kernels exist there)
    reduce_range = cfg.reduce_range
    if reduce_range is None:
        reduce_range = x86 and not vnni and activation == "uint8"
    why = (f"target {arch}{' with VNNI' if vnni else ''}: activations {activation}, weights int8"
           f"{' (7-bit, reduce_range)' if reduce_range else ''}")
    return {"arch": arch, "vnni": vnni, "activation_type": activation, "weight_type": "int8",
            "reduce_range": reduce_range, "bias": "float32", "format": "QDQ", "per_channel": cfg.per_channel,
            "why": why}


def _slim(path: Path) -> None:
    """Store the file compactly: drop what only the export needed (per-node debug strings -- Python stack traces with
    the build machine's paths, FX dumps, module scopes, ~1 KB a node -- and intermediate shape annotations). They ship
    to every device and were several percent of a small INT8 file; the runtime re-infers shapes, and the sidecar keeps
    the lineage."""
    import onnx

    proto = onnx.load(str(path))
    for node in proto.graph.node:
        del node.metadata_props[:]
    del proto.graph.value_info[:]
    onnx.save(proto, str(path))


class _HalfBody(torch.nn.Module):
    """Runs the model in float16 while the artifact's float inputs and outputs stay float32 (callers feed float32);
    integer inputs (token ids, masks) are never cast."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, *xs: torch.Tensor) -> Any:
        out = self.model(*(x.half() if x.is_floating_point() else x for x in xs))
        if isinstance(out, torch.Tensor):
            return out.float() if out.is_floating_point() else out
        values = out.values() if isinstance(out, dict) else out
        return tuple(o.float() if o.is_floating_point() else o for o in values)


def _export_graph(model: torch.nn.Module, example_inputs: tuple[torch.Tensor, ...], path: Path, opset: int,
                  cfg: ExportConfig | None = None, *, half: bool = False) -> None:
    """The graph of ``model`` (``half``: in float16 behind float32 edges); for task ``lm`` the key/value-cache graph
    of the decoder (targets/export_decoder.py) with B, S and P dynamic."""
    cfg = cfg or ExportConfig()
    dynamic_shapes = None
    if export_decoder.is_lm(cfg):
        layout = export_decoder.cache_layout(model)
        model = export_decoder.CacheGraph(copy.deepcopy(model).half() if half else model, half=half)
        example_inputs = export_decoder.example_inputs(layout)
        dynamic_shapes = export_decoder.onnx_dynamic_shapes(layout)
        names_in, names_out = export_decoder.io_names(layout["layers"])
    else:
        if half:
            model = _HalfBody(copy.deepcopy(model).eval().half())
        names_in, names_out = io_names(cfg, example_inputs, count_outputs(model, example_inputs))
    try:
        program = torch.onnx.export(model.eval(), example_inputs, dynamo=True, opset_version=opset, verbose=False,
                                    dynamic_shapes=dynamic_shapes)
        program.save(str(path))
    except Exception as exc:  # exporter failures come in many types
        raise export_failure("onnx", exc, model, example_inputs) from exc
    _rename_io(path, names_in, names_out)


def _rename_io(path: Path, names_in: list[str], names_out: list[str]) -> None:
    """Give the graph's inputs and outputs the recipe's names. Done on the proto, not by the exporter: a user's
    output called ``embedding`` would otherwise collide with the exporter's own value of that name (an invalid
    model); an internal value that holds a wanted name is renamed out of the way first."""
    import onnx

    proto = onnx.load(str(path))
    g = proto.graph
    wanted = dict(zip([v.name for v in g.input], names_in, strict=True))
    wanted.update(zip([v.name for v in g.output], names_out, strict=True))
    taken = set(wanted.values())
    mapping: dict[str, str] = {}
    values = {o for n in g.node for o in n.output} | {i.name for i in g.initializer} | {v.name for v in g.input}
    for v in values:
        if v in taken and wanted.get(v) != v:
            mapping[v] = f"{v}__edgepipe_internal"
    mapping.update({old: new for old, new in wanted.items() if old != new})
    if not mapping:
        return

    def rn(name: str) -> str:
        return mapping.get(name, name)

    for n in g.node:
        n.input[:] = [rn(x) for x in n.input]
        n.output[:] = [rn(x) for x in n.output]
    for coll in (g.input, g.output, g.value_info):
        for v in coll:
            v.name = rn(v.name)
    for init in g.initializer:
        init.name = rn(init.name)
    onnx.save(proto, str(path))


def _nodes_to_exclude(model_path: Path, keep_float: list[str]) -> list[str]:
    """ONNX node names that belong to the given torch layers: by the exporter's name scopes or their weights."""
    if not keep_float:
        return []
    import onnx

    proto = onnx.load(str(model_path), load_external_data=False)
    inits = {i.name for i in proto.graph.initializer}
    found: dict[str, list[str]] = {k: [] for k in keep_float}
    producer: dict[str, str] = {}
    for node in proto.graph.node:
        meta = {p.key: p.value for p in node.metadata_props}
        scopes = re.findall(r"'([^']*)'", meta.get("pkg.torch.onnx.name_scopes", ""))
        # torch 2.13 writes every scope as the full module path ('', 'a', 'a.b', ...); older ones a segment each
        paths = [s for s in scopes[1:-1] if s] + [".".join(s for s in scopes[1:-1] if s)]
        weights = [i for i in node.input if i in inits]
        for name in keep_float:
            if any(m == name or m.startswith(name + ".") for m in paths) or \
                    any(w.startswith(name + ".") for w in weights):
                found[name].append(node.name)
        if "pkg.torch.onnx.name_scopes" not in meta:   # a decomposed op without a scope (Split of split_with_sizes)
            feeds = [producer.get(i) for i in node.input if i not in inits and i]
            for name in keep_float:
                if feeds and all(f in found[name] for f in feeds):
                    found[name].append(node.name)   # fed only by a float layer's nodes: part of that layer
        for o in node.output:
            producer[o] = node.name
    missing = [k for k, v in found.items() if not v]
    if missing:
        raise keep_float_not_found("onnx", missing)
    return sorted({n for v in found.values() for n in v})


class _CalibReader:
    """ORT's CalibrationDataReader protocol: one sample per call, every input of the graph fed by its name."""

    def __init__(self, samples: list[dict[str, np.ndarray]]) -> None:
        self._data = samples
        self._i = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._i >= len(self._data):
            return None
        x = self._data[self._i]
        self._i += 1
        return x

    def rewind(self) -> None:
        self._i = 0


def _op_plan(fp32_path: Path, cfg: ExportConfig) -> tuple[list[str] | None, list[str], dict[str, Any]]:
    """Which nodes ORT quantizes: (nodes_to_quantize or None for all, extra nodes to exclude, what was decided).

    A transformer-shaped graph (Softmax attention) quantizes only the weight products -- MatMul/Gemm/Conv with a
    constant weight -- and keeps mask, residual and score arithmetic (Add/Mul/Where, Q@K^T) in float: quantizing
    those took a sentence embedder's cosine to the original from 0.94 to 0.37. ``keep_float_ops`` names op types
    to keep in float explicitly (ONNX spelling)."""
    import onnx

    proto = onnx.load(str(fp32_path), load_external_data=False)
    inits = {i.name for i in proto.graph.initializer}
    types = {n.op_type for n in proto.graph.node}
    plan: dict[str, Any] = {"transformer": is_transformer(types)}
    only: list[str] | None = None
    ops = cfg.keep_float_ops
    if ops is None and plan["transformer"]:
        only = [n.name for n in proto.graph.node
                if n.op_type in ("MatMul", "Gemm", "Conv") and any(i in inits for i in n.input)]
        plan["quantized"] = "MatMul/Gemm/Conv with constant weights only (transformer default)"
    exclude = [n.name for n in proto.graph.node if ops and n.op_type in ops]
    if ops:
        unknown = [o for o in ops if o not in types]
        if unknown:
            raise ExportError("onnx", f"keep_float op type(s) {unknown} do not occur in the graph",
                              hint=f"op types here: {', '.join(sorted(types))}")
        plan["keep_float_ops"] = list(ops)
    return only, exclude, plan


def _quantize_int8(fp32_path: Path, out_path: Path, calib: Any, cfg: ExportConfig,
                   scheme: dict[str, Any]) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = out_path.with_name(out_path.stem + ".pre.onnx")
    try:
        quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)
    except Exception:  # noqa: BLE001 - pre-processing is an optimisation; quantize the plain graph if it fails
        pre = fp32_path
    method = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
              "entropy": CalibrationMethod.Entropy}[cfg.calibration]
    qtype = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
    exclude = _nodes_to_exclude(fp32_path, cfg.keep_float)
    # the plan reads the graph ORT will quantize: pre-processing fuses MatMul+Add into Gemm under new node names
    only, by_type, plan = _op_plan(pre, cfg)
    scheme["op_plan"] = plan
    exclude = sorted(set(exclude) | set(by_type))
    import onnx

    names = [i.name for i in onnx.load(str(fp32_path), load_external_data=False).graph.input]
    try:
        quantize_static(str(pre), str(out_path), _CalibReader(calib_samples(calib, names, cfg.calib_samples)),
                        quant_format=QuantFormat.QDQ, per_channel=cfg.per_channel, reduce_range=scheme["reduce_range"],
                        activation_type=qtype[scheme["activation_type"]], weight_type=QuantType.QInt8,
                        nodes_to_exclude=exclude or None, nodes_to_quantize=only, calibrate_method=method,
                        extra_options={"CalibMovingAverage": False, "QuantizeBias": False})
    except Exception as exc:  # ORT raises plain exceptions
        raise ExportError("onnx", f"INT8 quantization failed: {first_line(exc)}",
                          hint="try calibration: minmax, or keep the failing layer in float (keep_float)") from exc


def _graph_is_transformer(path: Path) -> bool:
    import onnx

    return is_transformer({n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node})


def _quantize_dynamic(fp32_path: Path, out_path: Path, cfg: ExportConfig, scheme: dict[str, Any]) -> None:
    """ORT dynamic quantization for attention models: int8 weights (per channel where ``per_channel``) on the
    MatMuls with a constant weight, each activation quantized per call by a DynamicQuantizeLinear that ORT fuses with
    the MatMulInteger into one DynamicQuantizeMatMul kernel. No calibration: a transformer's activation ranges vary
    per token and per input more than one calibrated scale holds (static QDQ reached cosine 0.946 on an embedder).

    The graph is not pre-processed: ORT's optimizer there fuses MatMul+Add into Gemm, which dynamic quantization
    leaves in float. Attention's activation x activation MatMuls, Gemm (a 2-D head) and Gather stay float."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    proto = onnx.load(str(fp32_path), load_external_data=False)
    inits = {i.name for i in proto.graph.initializer}
    ops = cfg.keep_float_ops
    if ops:
        types = {n.op_type for n in proto.graph.node}
        unknown = [o for o in ops if o not in types]
        if unknown:
            raise ExportError("onnx", f"keep_float op type(s) {unknown} do not occur in the graph",
                              hint=f"op types here: {', '.join(sorted(types))}")
    exclude = set(_nodes_to_exclude(fp32_path, cfg.keep_float))
    only = [n.name for n in proto.graph.node if n.op_type == "MatMul" and len(n.input) > 1
            and n.input[1] in inits and n.name not in exclude and not (ops and "MatMul" in ops)]
    scheme.update(activation_type="uint8 (dynamic, per call)", format="dynamic (DynamicQuantizeLinear + "
                  "MatMulInteger)", op_plan={"transformer": True, "quantized": f"{len(only)} MatMul(s) with "
                                             "constant weights; attention scores, Gemm, Gather in float"})
    scheme.pop("bias", None)
    try:
        quantize_dynamic(str(fp32_path), str(out_path), op_types_to_quantize=["MatMul"], per_channel=cfg.per_channel,
                         reduce_range=scheme["reduce_range"], weight_type=QuantType.QInt8,
                         nodes_to_quantize=only or None, extra_options={"MatMulConstBOnly": True})
    except Exception as exc:  # ORT raises plain exceptions
        raise ExportError("onnx", f"INT8 dynamic quantization failed: {first_line(exc)}",
                          hint="set quantize: {int8_scheme: static} to calibrate instead") from exc
    if not only:
        raise ExportError("onnx", "int8_scheme dynamic found no MatMul with a constant weight to quantize",
                          hint="use int8_scheme: static (or auto) for this model")


def export(model: torch.nn.Module, example_inputs: tuple[torch.Tensor, ...], calib: Any,
           cfg: ExportConfig, out_dir: Path) -> Artifact:
    """Write ``<name>.<precision>.onnx`` into ``out_dir`` (atomically) with its sidecar record."""
    cfg, auto_float = keep_frozen_float(cfg, model)   # frozen decode tails (YOLOv8 DFL) stay float
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / f"{cfg.name}.{cfg.precision}.onnx"
    metadata: dict[str, Any] = {"opset": cfg.opset, "exporter": f"torch.onnx dynamo (torch {torch.__version__})"}
    if export_decoder.is_lm(cfg):
        metadata["generation"] = export_decoder.generation_metadata(export_decoder.cache_layout(model))
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".onnx-") as tmp:
        tmp_path = Path(tmp) / final.name
        if cfg.precision == "fp32":
            _export_graph(model, example_inputs, tmp_path, cfg.opset, cfg)
        elif cfg.precision == "fp16":
            _export_graph(model, example_inputs, tmp_path, cfg.opset, cfg, half=True)
            metadata["fp16"] = ("weights and compute in float16, float32 input/output (casts at the edges); "
                                "integer inputs are not cast")
        elif weight_only.bits_for(cfg) is not None:   # int4, or int8 of a language model: weights only
            fp32 = Path(tmp) / "fp32.onnx"
            _export_graph(model, example_inputs, fp32, cfg.opset, cfg)
            metadata["weight_only"] = weight_only.quantize_onnx(fp32, tmp_path, cfg)
        else:
            if calib is None or len(calib) == 0:
                raise ExportError("onnx", "INT8 needs calibration inputs", hint="give data.calib in the recipe")
            fp32 = Path(tmp) / "fp32.onnx"
            _export_graph(model, example_inputs, fp32, cfg.opset, cfg)
            scheme = choose_int8_scheme(cfg)
            scheme.update(resolve_int8_scheme("onnx", cfg.int8_scheme, _graph_is_transformer(fp32)))
            import onnxruntime

            if scheme["scheme"] == "dynamic":
                _quantize_dynamic(fp32, tmp_path, cfg, scheme)
                metadata.update(int8=scheme, calibration="none (activations quantized per call)", calib_samples=0,
                                keep_float=list(cfg.keep_float),
                                quantizer=f"onnxruntime {onnxruntime.__version__} quantize_dynamic")
            else:
                _quantize_int8(fp32, tmp_path, calib, cfg, scheme)
                n_calib = len(calib) if isinstance(calib, np.ndarray) else min(len(v) for v in calib.values())
                metadata.update(int8=scheme, calibration=cfg.calibration,
                                calib_samples=int(min(n_calib, cfg.calib_samples)), keep_float=list(cfg.keep_float),
                                quantizer=f"onnxruntime {onnxruntime.__version__} quantize_static")
            if auto_float:
                metadata["keep_float_auto"] = auto_float
        _slim(tmp_path)
        tmp_path.replace(final)
    art = Artifact.from_files(final, backend="onnx", precision=cfg.precision, parent=cfg.parent,
                              produced_by="targets.export_onnx", config=cfg.model_dump(), metadata=metadata)
    art.save()
    return art
