"""Weight-only quantization per backend (issue 24): weights stored in 4 or 8 bits, activations stay float.

Why weight-only for language models: a decoder's decode step multiplies one token's activations by every weight
matrix, so it is bound by reading the weights from memory; fewer bits per weight is fewer bytes per token, while
activation quantization (static INT8) gains little there and costs perplexity (outliers in the residual stream).

- ONNX: ONNX Runtime's ``MatMulNBitsQuantizer`` (round-to-nearest, block-wise along the input dimension): every
  MatMul with a constant 2-D weight becomes ``com.microsoft.MatMulNBits`` (4 or 8 bits, ``block_size``, symmetric or
  with zero points, ``accuracy_level``). At 4 bits the embedding ``Gather`` becomes ``GatherBlockQuantized`` (ORT
  quantizes Gather at 4 bits only, so at 8 bits the table stays float). ``accuracy_level`` 4 (the default) lets the
  kernel quantize activation blocks to int8 on the fly -- the graph's activations are float; measured 3-10x faster
  than accuracy_level 0 at one token, same perplexity (docs/backends.md). A tied head arrives as
  ``MatMul(h, Transpose(table))``; the transpose of the constant is folded into its own initializer first so the head
  is quantized too (the file then holds the table twice, each copy quantized). As NNCF does by default, the head --
  the MatMul producing a graph output -- stays at 8 bits in an int4 model.
- OpenVINO: NNCF ``compress_weights`` (INT4_SYM/INT4_ASYM with ``group_size`` and ``ratio``; INT8_SYM/INT8_ASYM
  per channel), with NNCF's defaults for the embedding and the last layer (kept at INT8 in an INT4 model); AWQ and
  scale estimation over calibration inputs where asked (``ExportConfig.wo_data_aware``).
- TFLite: dynamic-range INT8 in ``targets/export_tflite.py`` (litert-torch's ``full_dynamic_recipe``).

Each returns the record stored in the artifact metadata as ``"weight_only"`` (LM_CONTRACT.md): scheme, bits,
block_size, symmetric, kept_float, kept_8bit, quantizer.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import numpy as np

from targets.errors import ExportError
from targets.export_config import ExportConfig
from targets.ov_scope import MODULE_NAME, ignored_scope


def bits_for(cfg: ExportConfig) -> int | None:
    """4 for precision int4; 8 for int8 when its scheme is weight-only (explicitly, or "auto" for task lm); None
    when the exporter's own scheme applies."""
    if cfg.precision == "int4":
        return 4
    if cfg.precision == "int8" and (cfg.int8_scheme == "weight_only"
                                    or (cfg.int8_scheme == "auto" and cfg.task == "lm")):
        return 8
    return None


def _record(bits: int, cfg: ExportConfig, block_size: int | None, kept_float: list[str], kept_8bit: list[str],
            quantizer: str, **extra: Any) -> dict[str, Any]:
    return {"scheme": "weight_only", "bits": bits, "block_size": block_size, "symmetric": cfg.wo_symmetric,
            "kept_float": kept_float, "kept_8bit": kept_8bit, "quantizer": quantizer,
            "activations": "float32", **extra}


# ---------------------------------------------------------------------------------------------------------------- onnx
def _fold_weight_transposes(proto: Any) -> list[str]:
    """Replace ``Transpose(constant 2-D)`` by a transposed constant (a tied head reads the embedding table that way),
    so the MatMul behind it has a constant weight the quantizer can take. Returns the folded constants' names."""
    from onnx import numpy_helper

    inits = {i.name: i for i in proto.graph.initializer}
    users: dict[str, int] = {}
    for n in proto.graph.node:
        for i in n.input:
            users[i] = users.get(i, 0) + 1
    folded = []
    for n in list(proto.graph.node):
        if n.op_type != "Transpose" or n.input[0] not in inits or len(inits[n.input[0]].dims) != 2:
            continue
        perm = next((list(a.ints) for a in n.attribute if a.name == "perm"), [1, 0])
        if perm != [1, 0]:
            continue
        arr = numpy_helper.to_array(inits[n.input[0]])
        proto.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(arr.T), n.output[0]))
        proto.graph.node.remove(n)
        folded.append(n.input[0])
        if users.get(n.input[0]) == 1:             # nothing else reads the original: drop it
            proto.graph.initializer.remove(inits[n.input[0]])
    return folded


def _rtn_error(w: np.ndarray, bits: int, block: int, symmetric: bool) -> float:
    """Relative Frobenius error of round-to-nearest block quantization along the input dimension (axis 0): how much
    a layer loses at ``bits``, the data-free sensitivity that picks the 8-bit layers when ``wo_ratio < 1``."""
    k, n = w.shape
    pad = (-k) % block
    blocks = np.pad(w, ((0, pad), (0, 0))).reshape(-1, block, n)
    if symmetric:
        scale = np.abs(blocks).max(1, keepdims=True) / (2 ** (bits - 1) - 1)
        scale[scale == 0] = 1
        q = np.clip(np.round(blocks / scale), -(2 ** (bits - 1)), 2 ** (bits - 1) - 1) * scale
    else:
        lo, hi = blocks.min(1, keepdims=True), blocks.max(1, keepdims=True)
        scale = (hi - lo) / (2 ** bits - 1)
        scale[scale == 0] = 1
        q = np.round((blocks - lo) / scale) * scale + lo
    err = q.reshape(-1, n)[:k] - w
    return float(np.linalg.norm(err) / max(np.linalg.norm(w), 1e-12))


def _onnx_layer_nodes(proto: Any, layers: list[str]) -> set[str]:
    """Names of the nodes inside the given torch modules, read from the dynamo exporter's name scopes (a node of
    ``blocks.1.fc2`` lists ``['', 'blocks.1', 'blocks.1.fc2', 'linear_7']``); a layer that matches nothing is an
    error, as keep_float is everywhere."""
    from targets._export_common import keep_float_not_found

    if not layers:
        return set()
    found: dict[str, set[str]] = {k: set() for k in layers}
    for node in proto.graph.node:
        meta = {p.key: p.value for p in node.metadata_props}
        scopes = re.findall(r"'([^']*)'", meta.get("pkg.torch.onnx.name_scopes", ""))
        for layer in layers:
            if any(s == layer or s.startswith(layer + ".") for s in scopes):
                found[layer].add(node.name)
    missing = [k for k, v in found.items() if not v]
    if missing:
        raise keep_float_not_found("onnx", missing)
    return {n for v in found.values() for n in v}


def quantize_onnx(fp32_path: str | Path, out_path: str | Path, cfg: ExportConfig) -> dict[str, Any]:
    """Write the weight-only model of ``fp32_path`` (a torch.onnx export, name scopes still in it) to ``out_path``."""
    import onnx
    import onnxruntime
    from onnx import numpy_helper
    from onnxruntime.quantization import QuantFormat
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    bits = bits_for(cfg) or 8
    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.ERROR)
    proto = onnx.load(str(fp32_path))
    keep = _onnx_layer_nodes(proto, cfg.wo_keep_float)
    folded = _fold_weight_transposes(proto)
    for i, node in enumerate(proto.graph.node):
        node.name = node.name or f"{node.op_type}_{i}"
    inits = {i.name: i for i in proto.graph.initializer}
    outputs = {o.name for o in proto.graph.output}
    matmuls = [n for n in proto.graph.node if n.op_type == "MatMul" and len(n.input) > 1 and n.input[1] in inits
               and len(inits[n.input[1]].dims) == 2]
    gathers = [n for n in proto.graph.node if n.op_type == "Gather" and n.input[0] in inits
               and len(inits[n.input[0]].dims) == 2]
    if not matmuls:
        raise ExportError("onnx", f"int{bits} weight-only: the graph has no MatMul with a constant weight",
                          hint="weight-only quantization is for models made of Linear layers (language models)")
    kept_float = sorted(n.name for n in matmuls + gathers if n.name in keep)
    eight: set[str] = set()
    if bits == 4:
        heads = {n.name for n in matmuls if n.output[0] in outputs and n.name not in keep}
        eight |= heads
        rest = [n for n in matmuls if n.name not in keep and n.name not in heads]
        if cfg.wo_ratio < 1.0:   # the most sensitive layers (4-bit RTN error) at 8 bits, by parameter count
            sizes = {n.name: int(np.prod(inits[n.input[1]].dims)) for n in rest}
            ranked = sorted(rest, key=lambda n: -_rtn_error(numpy_helper.to_array(inits[n.input[1]]), 4,
                                                            cfg.wo_block_size, cfg.wo_symmetric))
            budget = (1.0 - cfg.wo_ratio) * sum(sizes.values())
            for n in ranked:
                if budget <= 0:
                    break
                eight.add(n.name)
                budget -= sizes[n.name]
        four = {n.name for n in rest} - eight
        four_gather = {n.name for n in gathers if n.name not in keep}
    else:
        four, four_gather = set(), set()
        eight = {n.name for n in matmuls if n.name not in keep}
        kept_float = sorted({*kept_float, *(n.name for n in gathers)})   # ORT quantizes Gather at 4 bits only
    candidates = {n.name for n in matmuls + gathers}
    accuracy = cfg.wo_accuracy_level or None
    try:
        for nbits, chosen, types in ((4, four | four_gather, ("MatMul", "Gather")), (8, eight, ("MatMul",))):
            if not chosen:
                continue
            q = MatMulNBitsQuantizer(proto, bits=nbits, block_size=cfg.wo_block_size, is_symmetric=cfg.wo_symmetric,
                                     accuracy_level=accuracy, nodes_to_exclude=sorted(candidates - chosen),
                                     quant_format=QuantFormat.QOperator, op_types_to_quantize=types)
            q.process()
            proto = q.model.model
    except Exception as exc:
        raise ExportError("onnx", f"int{bits} weight-only quantization failed: {type(exc).__name__}: {exc}"[:300],
                          hint="try wo_block_size 32/64/128 (a power of two >= 16)") from exc
    onnx.save(proto, str(out_path))
    eight_bit = sorted(eight) if bits == 4 else []
    return _record(bits, cfg, cfg.wo_block_size, kept_float, eight_bit,
                   f"onnxruntime {onnxruntime.__version__} MatMulNBits",
                   accuracy_level=cfg.wo_accuracy_level, ops={"MatMulNBits": len(four) + len(eight),
                                                              "GatherBlockQuantized": len(four_gather)},
                   folded_transposes=folded)


# ------------------------------------------------------------------------------------------------------------ openvino
_OV_INT = {"u4": 4, "i4": 4, "u8": 8, "i8": 8}


def _ov_weight_bits(ov_model: Any) -> dict[str, int | None]:
    """Friendly name of every MatMul/Gather with a constant weight -> the bits it is stored in (None: float). The
    weight path is Constant -> Convert -> (Subtract) -> Multiply -> (Reshape) for a compressed weight."""
    out: dict[str, int | None] = {}
    for op in ov_model.get_ordered_ops():
        kind = op.get_type_name()
        if kind not in ("MatMul", "Gather"):
            continue
        node = op.input_value(1 if kind == "MatMul" else 0).get_node()
        seen, found, stack, float_const = 0, None, [node], False
        while stack and seen < 12:
            cur = stack.pop()
            seen += 1
            if cur.get_type_name() == "Constant":
                et = cur.get_element_type().get_type_name()
                if et in _OV_INT:
                    found = _OV_INT[et]
                    break
                big = int(np.prod(list(cur.get_output_shape(0)))) > 1
                float_const = float_const or (et in ("f32", "f16", "bf16") and big)
                continue
            if cur.get_type_name() in ("Convert", "Subtract", "Multiply", "Reshape", "Transpose"):
                stack.extend(cur.input_value(i).get_node() for i in range(cur.get_input_size()))
        if found is not None or float_const:
            out[op.get_friendly_name()] = found
    return out


def _ov_layer(name: str) -> str:
    m = MODULE_NAME.match(name)
    return m.group(1) if m else name


def quantize_openvino(ov_model: Any, cfg: ExportConfig, calib: list[dict[str, np.ndarray]] | None = None
                      ) -> tuple[Any, dict[str, Any]]:
    """NNCF weight compression of an OpenVINO model; ``calib`` (one feed dict per sample) turns on AWQ and scale
    estimation for INT4 (NNCF's data-aware methods; they need activations to weigh the channels by)."""
    try:
        import nncf
    except ImportError as exc:
        from targets.errors import MissingDependencyError

        raise MissingDependencyError("nncf", "openvino", purpose=f"openvino-{cfg.precision}") from exc

    bits = bits_for(cfg) or 8
    sym = cfg.wo_symmetric
    mode = getattr(nncf.CompressWeightsMode, f"INT{bits}_{'SYM' if sym else 'ASYM'}")
    ignored = ignored_scope(ov_model, cfg.wo_keep_float)
    kwargs: dict[str, Any] = {"mode": mode}
    if ignored:
        kwargs["ignored_scope"] = nncf.IgnoredScope(names=ignored)
    data_aware = bits == 4 and bool(calib)
    if bits == 4:
        kwargs.update(group_size=cfg.wo_block_size, ratio=cfg.wo_ratio)
        if data_aware:
            kwargs.update(dataset=nncf.Dataset(calib), awq=True, scale_estimation=True, subset_size=len(calib))
    nncf_log = logging.getLogger("nncf")
    level = nncf_log.level
    nncf_log.setLevel(logging.WARNING)   # its per-call bit-width table goes to the pipeline's log otherwise
    try:
        compressed = nncf.compress_weights(ov_model, **kwargs)
    except Exception as exc:
        raise ExportError("openvino", f"NNCF weight compression failed: {type(exc).__name__}: {exc}"[:300],
                          hint="try another wo_block_size, or wo_data_aware: false") from exc
    finally:
        nncf_log.setLevel(level)
    stored = _ov_weight_bits(compressed)
    kept_float = sorted({_ov_layer(n) for n, b in stored.items() if b is None})
    kept_8bit = sorted({_ov_layer(n) for n, b in stored.items() if b == 8}) if bits == 4 else []
    return compressed, _record(bits, cfg, cfg.wo_block_size if bits == 4 else None, kept_float, kept_8bit,
                               f"nncf {nncf.__version__} compress_weights", mode=mode.name,
                               ratio=cfg.wo_ratio if bits == 4 else None,
                               data_aware=("awq+scale_estimation" if data_aware else None),
                               per_channel=bits == 8)


# -------------------------------------------------------------------------------------------------------------- tflite
def tflite_record(model: Any, quantizer: str) -> dict[str, Any]:
    """The record of litert-torch's dynamic-range INT8: fully connected / conv / batch-matmul weights int8 per
    channel (symmetric), activations float (quantized on the fly inside the hybrid kernels); embedding tables read
    by a lookup stay float."""
    import torch

    emb = sorted(name for name, mod in model.named_modules() if isinstance(mod, torch.nn.Embedding))
    return {"scheme": "weight_only", "bits": 8, "block_size": None, "symmetric": True, "kept_float": emb,
            "kept_8bit": [], "quantizer": quantizer, "activations": "float32 (dynamic-range: quantized per call "
            "inside the int8 kernels)", "per_channel": True}
