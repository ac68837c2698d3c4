"""The key/value-cache graph a decoder (task ``lm``) is exported as, for ONNX and OpenVINO (LM_CONTRACT.md).

One graph serves prefill, decode and perplexity: inputs ``input_ids`` int64 [B, S] then ``past_key_i``,
``past_value_i`` float32 [B, H_i, P, D_i]; outputs ``logits`` [B, S, V] and ``present_key_i``, ``present_value_i``
[B, H_i, P+S, D_i], with B, S and P dynamic. Prefill and perplexity feed an empty past (P = 0: zero-size arrays,
which ONNX Runtime and OpenVINO's CPU plugin both take -- checked in tests/targets/test_generation.py), decode feeds
the previous call's presents with S = 1. One file instead of a prefill and a decode graph: the weights ship once.

Why the example is B=2, S=3, P=4: ``torch.export`` specialises a dimension whose example size is 0 or 1 to that
constant, so an example with one token or an empty past would bake that shape into the graph.

TFLite has static shapes only: an ``lm`` model goes there as its plain ``forward`` (input_ids [1, T] -> logits),
for perplexity; no generation figures (targets/export_tflite.py).
"""

from __future__ import annotations

from typing import Any

import torch

from targets.errors import ExportError

EXAMPLE_B, EXAMPLE_S, EXAMPLE_P = 2, 3, 4


def is_lm(cfg: Any) -> bool:
    return getattr(cfg, "task", None) == "lm"


def cache_layout(model: torch.nn.Module) -> dict[str, Any]:
    """The model's cache as the protocol returns it (one forward of two tokens with no past): layers, heads and head
    size per layer (they differ per layer after head pruning), and the position table's size. This is the artifact's
    ``"generation"`` metadata."""
    if not callable(getattr(model, "forward_with_cache", None)) or not isinstance(
            getattr(model, "max_positions", None), int):
        raise ExportError("export", "task lm exports the key/value-cache graph, but the model has no "
                          "forward_with_cache(input_ids, *past) and integer max_positions",
                          hint="implement the decoder protocol of LM_CONTRACT.md (examples/lm/models.py)")
    with torch.no_grad():
        out = model.eval().forward_with_cache(torch.zeros(1, 2, dtype=torch.long))
    if not isinstance(out, (tuple, list)) or len(out) < 3 or len(out) % 2 == 0:
        raise ExportError("export", f"forward_with_cache returned {type(out).__name__} of {len(out)} tensors; "
                          "expected (logits, k_0, v_0, k_1, v_1, ...)")
    layers = (len(out) - 1) // 2
    heads = [int(out[1 + 2 * i].shape[1]) for i in range(layers)]
    head_dim = [int(out[1 + 2 * i].shape[3]) for i in range(layers)]
    for i in range(layers):
        k, v = out[1 + 2 * i], out[2 + 2 * i]
        if k.dim() != 4 or tuple(k.shape) != tuple(v.shape) or k.shape[2] != 2:
            raise ExportError("export", f"layer {i}'s cache is k {list(k.shape)}, v {list(v.shape)}: expected "
                              "[B, H, P+S, D] each, equal")
    ins, outs = io_names(layers)
    return {"cache_inputs": ins[1:], "cache_outputs": outs[1:], "layers": layers, "heads": heads,
            "head_dim": head_dim, "max_positions": int(model.max_positions), "vocab": int(out[0].shape[-1])}


def io_names(layers: int) -> tuple[list[str], list[str]]:
    ins, outs = ["input_ids"], ["logits"]
    for i in range(layers):
        ins += [f"past_key_{i}", f"past_value_{i}"]
        outs += [f"present_key_{i}", f"present_value_{i}"]
    return ins, outs


class CacheGraph(torch.nn.Module):
    """``forward_with_cache`` as the graph's forward. ``half``: weights and compute in float16 while the cache and
    logits at the graph's edges stay float32 (what callers feed and read), as export_onnx's fp16 does."""

    def __init__(self, model: torch.nn.Module, half: bool = False) -> None:
        super().__init__()
        self.model = model
        self.half = half

    def forward(self, input_ids: torch.Tensor, *past: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.half:
            past = tuple(p.half() for p in past)
        out = self.model.forward_with_cache(input_ids, *past)
        return tuple(o.float() for o in out) if self.half else tuple(out)


def example_inputs(layout: dict[str, Any]) -> tuple[torch.Tensor, ...]:
    """Non-degenerate example sizes (see the module docstring); ids stay inside the vocabulary."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, layout["vocab"], (EXAMPLE_B, EXAMPLE_S), generator=g)
    past = []
    for h, d in zip(layout["heads"], layout["head_dim"], strict=True):
        past += [torch.randn(EXAMPLE_B, h, EXAMPLE_P, d, generator=g) for _ in range(2)]
    return (ids, *past)


def onnx_dynamic_shapes(layout: dict[str, Any]) -> tuple[Any, ...]:
    """torch.export's spec for ``CacheGraph.forward(input_ids, *past)``: one entry per parameter, the varargs as a
    tuple. P+S is bounded by the position table."""
    from torch.export import Dim

    n = layout["max_positions"]
    b, s, p = Dim("B", min=1), Dim("S", min=1, max=n), Dim("P", min=0, max=n)
    return ({0: b, 1: s}, tuple({0: b, 2: p} for _ in layout["cache_inputs"]))


def openvino_inputs(layout: dict[str, Any]) -> list[tuple[Any, Any]]:
    """``ov.convert_model``'s input spec: B, S, P dynamic, heads and head size static."""
    import openvino as ov

    spec = [(ov.PartialShape([-1, -1]), ov.Type.i64)]
    for h, d in zip(layout["heads"], layout["head_dim"], strict=True):
        spec += [(ov.PartialShape([-1, h, -1, d]), ov.Type.f32)] * 2
    return spec


def generation_metadata(layout: dict[str, Any]) -> dict[str, Any]:
    """The sidecar's ``"generation"`` record (LM_CONTRACT.md), plus the output names and vocabulary size."""
    return {k: layout[k] for k in ("cache_inputs", "cache_outputs", "layers", "heads", "head_dim", "max_positions",
                                   "vocab")}
