"""Which OpenVINO ops belong to which torch module: the one reading of the torch frontend's op names, shared by NNCF's
INT8 ignored scope (targets/export_openvino.py) and weight compression's (targets/weight_only.py)."""

from __future__ import annotations

import re
from typing import Any

from targets._export_common import keep_float_not_found

MODULE_NAME = re.compile(r"__module\.([^/]+)/")


def module_paths(ov_model: Any) -> dict[str, str]:
    """Friendly name -> torch module path for every non-constant op. OpenVINO's torch frontend names ops
    ``__module.<path>/aten::...``, but a convolution fused with its batch norm comes out as an unnamed
    ``Multiply_NNNN``: such an op inherits the path of its first named consumer (the batch norm's Add), so keeping a
    module in float keeps its BN-folded convolutions, and with them their input quantizers, in float too."""
    ops = [op for op in ov_model.get_ordered_ops() if op.get_type_name() not in ("Constant", "Parameter", "Result")]
    paths: dict[str, str] = {}
    for op in reversed(ops):
        name = op.get_friendly_name()
        m = MODULE_NAME.match(name)
        if m:
            paths[name] = m.group(1)
            continue
        for out in op.outputs():
            consumer = next((t.get_node().get_friendly_name() for t in out.get_target_inputs()
                             if t.get_node().get_friendly_name() in paths), None)
            if consumer is not None:
                paths[name] = paths[consumer]
                break
    return paths


def ignored_scope(ov_model: Any, keep_float: list[str]) -> list[str]:
    """Exact op names (NNCF ``IgnoredScope(names=...)``) of every op under the kept torch modules, BN-folded
    convolutions included (see ``module_paths``)."""
    if not keep_float:
        return []
    paths = module_paths(ov_model)
    chosen = {layer: [n for n, p in paths.items() if p == layer or p.startswith(f"{layer}.")] for layer in keep_float}
    missing = [layer for layer, names in chosen.items() if not names]
    if missing:
        raise keep_float_not_found("openvino", missing, "; a conv fused with its batch norm is named after the "
                                   "batch norm")
    return sorted({n for names in chosen.values() for n in names})
