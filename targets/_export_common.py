"""What every export adapter shares: turning an exporter's failure into an ExportError that names the op and layer.

Exporters report an unsupported op in their own words (the ONNX dispatcher, OpenVINO's frontend, the LiteRT
lowering); we pull the op out of the text and then find the layer that calls it in ``torch.export``'s graph, whose
nodes carry the module path they came from.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import torch

from targets.errors import ExportError

_OP_PATTERNS = (
    r"No ONNX function found for <OpOverload\(op='([\w.]+)'",                   # torch.onnx dynamo
    r"No conversion rule found for operations:\s*([\w:.]+)",                    # OpenVINO torch frontend
    r"[Nn]o lowering (?:found |registered )?for\s*[`'\"]?(?:torch\.ops\.)?([\w.:]+)",  # LiteRT
    r"(?:[Uu]nsupported|not supported)[^\n]*?(?:torch\.ops\.)?\b((?:aten|prims|[a-z_]+)[.:]{1,2}[\w.]+)",
    r"target=torch\.ops\.([\w.]+?)(?:\.default)?\]",
)


def error_text(exc: BaseException) -> str:
    parts, seen = [], set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        parts.append(str(cur))
        cur = cur.__cause__ or cur.__context__
    return re.sub(r"\x1b\[[0-9;]*m", "", "\n".join(parts))


def find_op(text: str) -> str | None:
    for pat in _OP_PATTERNS:
        m = re.search(pat, text)
        if m:
            op = m.group(1).replace("::", ".")
            return op[: -len(".default")] if op.endswith(".default") else op
    return None


def find_layer(model: torch.nn.Module, example_inputs: tuple[torch.Tensor, ...], op: str) -> str | None:
    """The module path (``named_modules`` style) whose forward calls ``op``; ``<root>`` for the top-level forward."""
    try:
        graph = torch.export.export(model.eval(), example_inputs).graph
    except Exception:  # noqa: BLE001 - the model does not even export: the op alone has to do
        return None
    wanted = op.split(".")[-1]
    for node in graph.nodes:
        if node.op != "call_function":
            continue
        target = node.target
        name = (target.name() if hasattr(target, "name") else str(target)).replace("::", ".").split(".")
        # the exporters see decomposed ops (linalg_inv_ex) where torch.export's graph still has linalg_inv
        if not any(part == wanted or wanted.startswith(part + "_") for part in name[1:]):
            continue
        paths = module_paths(node)
        return paths[-1] if paths and paths[-1] else "<root>"
    return None


def module_paths(node: torch.fx.Node) -> list[str]:
    """The ``named_modules`` paths of the modules a torch.export node sits in, outermost first (``""`` is the root),
    whichever spelling the exporter used (``L['self'].fc``, ``self.fc``, ``_modules['fc']``)."""
    out = []
    for raw, _ in (node.meta.get("nn_module_stack") or {}).values():
        path = re.sub(r"^L\['self'\]\.?|^self\.?", "", str(raw))
        out.append(path.replace("_modules['", "").replace("']", ""))
    return out


def keep_float_not_found(backend: str, missing: list[str], hint: str = "") -> ExportError:
    """The one error every INT8 exporter gives for a ``keep_float`` name that matches no layer of the model."""
    return ExportError(backend, f"keep_float layers not found in the model: {', '.join(missing)}",
                       hint="use module paths from model.named_modules(), e.g. 'fc' or 'layers.3.conv1'" + hint)


def first_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in error_text(exc).splitlines() if ln.strip()]
    return lines[0] if lines else type(exc).__name__


def export_failure(backend: str, exc: BaseException, model: torch.nn.Module,
                   example_inputs: tuple[torch.Tensor, ...]) -> ExportError:
    """An ExportError naming the backend, the unsupported op and its layer where they can be found."""
    text = error_text(exc)
    op = find_op(text)
    if op is None:
        return ExportError(backend, first_line(exc),
                           hint=f"see the exporter's message; drop the {backend} backends from the recipe to go on")
    layer = find_layer(model, example_inputs, op)
    return ExportError(backend, f"{backend} has no conversion for {op}", op=op, layer=layer,
                       hint=f"replace {op} with supported ops, or drop the {backend} backends from the recipe")


# ------------------------------------------------------------------------------------------------ inputs and outputs
def io_names(cfg: Any, example_inputs: tuple[torch.Tensor, ...], n_outputs: int) -> tuple[list[str], list[str]]:
    """The artifact's input and output names: the recipe's (``cfg.input_names`` / ``output_names``), else
    ``input`` (``input0, input1...`` for several) and ``output`` (``output0...``)."""
    ins = list(cfg.input_names) or (["input"] if len(example_inputs) == 1
                                     else [f"input{i}" for i in range(len(example_inputs))])
    outs = list(cfg.output_names) or (["output"] if n_outputs == 1 else [f"output{i}" for i in range(n_outputs)])
    if len(ins) != len(example_inputs):
        raise ExportError("export", f"{len(example_inputs)} example inputs but {len(ins)} input names {ins}")
    if len(outs) != n_outputs:
        raise ExportError("export", f"the model returns {n_outputs} outputs but model.outputs names {len(outs)}: "
                          f"{outs}", hint="list one name per output in model.outputs, in forward() order")
    return ins, outs


def count_outputs(model: torch.nn.Module, example_inputs: tuple[torch.Tensor, ...]) -> int:
    with torch.no_grad():
        out = model.eval()(*example_inputs)
    if isinstance(out, torch.Tensor):
        return 1
    if isinstance(out, dict):
        return len(out)
    return len(out)


def calib_samples(calib: Any, names: list[str], limit: int) -> list[dict[str, np.ndarray]]:
    """Calibration inputs as one ``{input name: (1, ...) array}`` per sample: every input fed by name. A plain array
    is the single-input shorthand."""
    if isinstance(calib, np.ndarray):
        calib = {names[0]: calib}
    missing = [n for n in names if n not in calib]
    if missing:
        raise ExportError("int8", f"calibration data lacks input(s) {missing} (has {sorted(calib)})")
    n = min(limit, *(len(calib[k]) for k in names))
    return [{k: np.ascontiguousarray(calib[k][i:i + 1]) for k in names} for i in range(n)]


def is_transformer(op_types: set[str]) -> bool:
    """Attention-shaped: a Softmax feeding matrix products (ONNX spelling of the op types in the graph)."""
    return "Softmax" in op_types and "MatMul" in op_types


# ------------------------------------------------------------------------------------------------ INT8 scheme choice
# What each backend offers (ExportConfig.int8_scheme) and what "auto" picks for an attention model. Convolutional
# nets always resolve to "static" (calibrated activations: the fast integer conv kernels need fixed scales). For
# attention, the per-token activation ranges of a transformer's MatMuls vary too much for one calibrated scale:
# ONNX Runtime quantizes them per call (``quantize_dynamic``), NNCF smooths them into the weights (SmoothQuant) with
# asymmetric activations, and LiteRT keeps its static full-integer model (measured best of its two on the attention
# benchmark, benchmarks/transformer_int8.py; its dynamic-range model is offered explicitly).
INT8_OFFERED = {"onnx": ("static", "dynamic"), "openvino": ("static", "smoothquant"), "tflite": ("static", "dynamic")}
ATTENTION_DEFAULT = {"onnx": "dynamic", "openvino": "smoothquant", "tflite": "static"}
_WHY = {
    "onnx": "attention model: weight MatMuls quantized dynamically (activation scale computed per call, int8 "
            "weights per channel), kept faithful where one calibrated activation scale is not",
    "openvino": "attention model: NNCF transformer scheme with SmoothQuant (activation outliers moved into the "
                "weights) and asymmetric activations",
    "tflite": "attention model: LiteRT's static full-integer model kept (its dynamic-range model measured slower "
              "on the attention benchmark)",
}


def resolve_int8_scheme(backend: str, requested: str, transformer: bool) -> dict[str, str]:
    """The INT8 scheme an exporter applies, and why, for the artifact's metadata (``int8.scheme`` / ``scheme_why``).

    ``auto`` resolves by model family and backend (see ``ATTENTION_DEFAULT``); an explicit scheme the backend does
    not offer is a one-line ExportError naming the ones it does."""
    family = "attention" if transformer else "convolutional"
    if requested == "auto":
        if not transformer:
            return {"scheme": "static", "requested": "auto",
                    "scheme_why": "no attention in the graph: static calibrated INT8 (fast integer kernels)"}
        return {"scheme": ATTENTION_DEFAULT[backend], "requested": "auto", "scheme_why": _WHY[backend]}
    if requested not in INT8_OFFERED[backend]:
        raise ExportError(backend, f"int8_scheme {requested!r} is not implemented for this backend",
                          hint=f"{backend} offers {', '.join(('auto', *INT8_OFFERED[backend]))}")
    return {"scheme": requested, "requested": requested,
            "scheme_why": f"int8_scheme: {requested} asked for ({family} model)"}


# ------------------------------------------------------------------------------------------- INT8: what stays float
def frozen_modules(model: torch.nn.Module) -> list[str]:
    """Module paths of the outermost modules whose weights are all frozen (``requires_grad=False``), e.g. a YOLOv8
    decode tail holding the DFL integral (a 1x1 conv of fixed weights 0..15).

    Why: frozen weights are fixed arithmetic, not learned features, and what such a tail computes -- box corners in
    pixels, probabilities, a softmax over distance bins -- shares no value range with the features before it; one
    INT8 scale over pixel coordinates and probabilities together wipes out the scores. Ultralytics keeps DFL and the
    decode out of INT8 with hand-written scopes; this finds them from the weights alone."""
    out: list[str] = []
    for name, module in model.named_modules():
        if not name or any(name.startswith(o + ".") for o in out):
            continue
        params = list(module.parameters())
        if params and not any(p.requires_grad for p in params):
            out.append(name)
    return out


def keep_frozen_float(cfg: Any, model: torch.nn.Module) -> tuple[Any, list[str]]:
    """``cfg`` with every frozen module (``frozen_modules``) added to ``keep_float`` for an INT8 export, and the
    names added (the exporters record them as ``keep_float_auto`` in the artifact's metadata)."""
    if getattr(cfg, "precision", None) != "int8":
        return cfg, []
    extra = [n for n in frozen_modules(model)
             if not any(n == k or n.startswith(k + ".") for k in cfg.keep_float)]
    if not extra:
        return cfg, []
    return cfg.model_copy(update={"keep_float": [*cfg.keep_float, *extra]}), extra
