"""Attention-head bookkeeping for Torch-Pruning's head pruning (``num_heads`` / ``prune_num_heads``).

Torch-Pruning removes whole heads when it is told which ``nn.Linear`` layers project the queries, keys and values and
how many heads each carries; it rewrites the weights but not the attention module's own ``num_heads`` and
``head_dim`` attributes, which the forward uses to reshape. ``attention_qkv`` finds those layers in any module that
exposes an integer ``num_heads`` (timm's ``qkv``, Hugging Face's ``query/key/value`` or ``q_proj/k_proj/v_proj``);
``sync_heads`` writes the pruner's counts back so the pruned model's forward matches its weights.
"""

from __future__ import annotations

from torch import nn

_FUSED = ("qkv", "in_proj", "Wqkv")
_SEPARATE = (("q_proj", "k_proj", "v_proj"), ("query", "key", "value"), ("q", "k", "v"))


def _linears(module: nn.Module, names: tuple[str, ...]) -> list[nn.Linear] | None:
    layers = [getattr(module, n, None) for n in names]
    return layers if all(isinstance(m, nn.Linear) for m in layers) else None  # type: ignore[return-value]


def attention_qkv(model: nn.Module) -> dict[nn.Module, tuple[list[nn.Linear], bool]]:
    """Attention modules -> (their q/k/v projections, fused?) for every module with an integer ``num_heads``."""
    found: dict[nn.Module, tuple[list[nn.Linear], bool]] = {}
    for module in model.modules():
        heads = getattr(module, "num_heads", None)
        if not isinstance(heads, int) or isinstance(module, nn.MultiheadAttention) or heads < 1:
            continue
        for name in _FUSED:
            layer = getattr(module, name, None)
            if isinstance(layer, nn.Linear):
                found[module] = ([layer], True)
                break
        else:
            for names in _SEPARATE:
                layers = _linears(module, names)
                if layers:
                    found[module] = (layers, False)
                    break
    return found


def num_heads_map(model: nn.Module) -> dict[nn.Module, int]:
    """Torch-Pruning's ``num_heads`` argument: every q/k/v projection -> the head count of its attention."""
    return {layer: int(att.num_heads) for att, (layers, _) in attention_qkv(model).items() for layer in layers}


def head_counts(model: nn.Module) -> dict[str, int]:
    """Head count per attention module, by module name (what a report or a test compares before and after)."""
    names = {m: n for n, m in model.named_modules()}
    return {names[att]: int(att.num_heads) for att in attention_qkv(model)}


def sync_heads(model: nn.Module, pruned_heads: dict[nn.Module, int]) -> None:
    """Write the pruner's head counts back into each attention module (``num_heads``, and ``head_dim`` /
    ``all_head_size`` / ``num_attention_heads`` where the module keeps them)."""
    for att, (layers, fused) in attention_qkv(model).items():
        heads = pruned_heads.get(layers[0], att.num_heads)
        width = layers[0].out_features // (3 if fused else 1)
        if heads < 1 or width % heads:
            raise RuntimeError(f"head pruning left {width} channels for {heads} heads in {type(att).__name__}")
        att.num_heads = heads
        if hasattr(att, "head_dim"):
            att.head_dim = width // heads
        if hasattr(att, "num_attention_heads"):
            att.num_attention_heads = heads
        if hasattr(att, "all_head_size"):
            att.all_head_size = width
