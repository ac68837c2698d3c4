"""examples/vit: the ViT's shapes, and Torch-Pruning head pruning through the prune stage removing whole heads."""

from __future__ import annotations

import copy

import pytest
import torch

from pipeline.stages.heads import head_counts, num_heads_map
from pipeline.stages.prune import structured_prune
from tests.examples.conftest import example_module

vm = example_module("vit", "vit_models")


@pytest.fixture(scope="module")
def parent() -> torch.nn.Module:
    torch.manual_seed(0)
    return vm.ViT(dim=48, depth=2, num_heads=4, mlp_dim=96).eval()


def _x(n: int = 3) -> torch.Tensor:
    return torch.randn(n, 1, vm.IMAGE, vm.IMAGE, generator=torch.Generator().manual_seed(1))


def test_vit_teacher_and_student_give_logits_and_student_is_smaller():
    t, s = vm.teacher().eval(), vm.student().eval()
    assert t(_x(2)).shape == s(_x(2)).shape == (2, 10)
    assert sum(p.numel() for p in s.parameters()) < sum(p.numel() for p in t.parameters()) / 1.5


def test_num_heads_map_finds_every_fused_qkv(parent):
    heads = num_heads_map(parent)
    assert sorted(heads.values()) == [4, 4]
    assert all(isinstance(m, torch.nn.Linear) and m.out_features == 3 * 48 for m in heads)


def test_head_pruning_removes_whole_heads_and_forward_equals_parent_without_them(parent):
    """Heads only (no channel ratio): the pruned model must compute exactly the parent with the removed heads'
    contributions cut (their columns of proj zeroed) -- only true if q, k and v lost the same whole heads and the
    module's num_heads/head_dim bookkeeping was updated."""
    pruned = structured_prune(copy.deepcopy(parent), _x(1), ratio=0.0, head_ratio=0.5, round_to=None)
    assert head_counts(pruned) == {"blocks.0.attn": 2, "blocks.1.attn": 2}
    masked = copy.deepcopy(parent)
    for blk_p, blk_m in zip(pruned.blocks, masked.blocks, strict=True):
        att_p, att_m = blk_p.attn, blk_m.attn
        assert att_p.head_dim == att_m.head_dim == 12 and att_p.qkv.out_features == 3 * 2 * 12
        q_parent = att_m.qkv.weight[:48].reshape(4, 12, 48)
        q_pruned = att_p.qkv.weight[:24].reshape(2, 12, 48)
        kept = [int(torch.cdist(q_pruned[i].flatten()[None], q_parent.flatten(1)).argmin()) for i in range(2)]
        assert all(torch.equal(q_pruned[i], q_parent[k]) for i, k in enumerate(kept))
        with torch.no_grad():
            for h in set(range(4)) - set(kept):
                att_m.proj.weight[:, h * 12:(h + 1) * 12] = 0
        assert blk_p.fc1.out_features == blk_m.fc1.out_features  # ratio 0: the MLP is untouched
    with torch.no_grad():
        torch.testing.assert_close(pruned(_x()), masked(_x()), rtol=1e-4, atol=1e-5)


def test_head_and_channel_pruning_shrinks_mlp_and_heads_and_still_runs(parent):
    pruned = structured_prune(copy.deepcopy(parent), _x(1), ratio=0.5, head_ratio=0.5, round_to=None)
    assert set(head_counts(pruned).values()) == {2}
    assert all(b.fc1.out_features == 48 for b in pruned.blocks)
    assert sum(p.numel() for p in pruned.parameters()) < 0.6 * sum(p.numel() for p in parent.parameters())
    assert pruned(_x()).shape == (3, 10)


def test_channel_pruning_alone_keeps_every_head(parent):
    pruned = structured_prune(copy.deepcopy(parent), _x(1), ratio=0.5, round_to=None)
    assert head_counts(pruned) == head_counts(parent)
    assert pruned(_x()).shape == (3, 10)


@pytest.mark.onnx
def test_pruned_vit_exports_to_onnx_with_fewer_heads_in_the_graph(parent, tmp_path):
    import onnx
    import onnxruntime as ort

    from targets.export_config import ExportConfig
    from targets.export_onnx import export

    pruned = structured_prune(copy.deepcopy(parent), _x(1), ratio=0.25, head_ratio=0.5, round_to=None)
    art = export(pruned, (_x(1),), None, ExportConfig(precision="fp32", name="vit"), tmp_path)
    graph = onnx.shape_inference.infer_shapes(onnx.load(art.path)).graph
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in graph.value_info}
    softmax = [shapes[n.output[0]] for n in graph.node if n.op_type == "Softmax"]
    assert softmax == [[1, 2, 16, 16]] * 2        # (batch, heads, tokens, tokens): 2 heads left of 4
    sess = ort.InferenceSession(art.path, providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: _x(1).numpy()})[0]
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(got), pruned(_x(1)), rtol=1e-3, atol=1e-4)
