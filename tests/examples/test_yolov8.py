"""examples/yolov8: the real YOLOv8 layout (C2f chunk, SPPF, Detect + DFL with anchors inside the graph), pruned by
the stage without patching the model, and INT8 that keeps the frozen decode tail in float automatically."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.stages.prune import auto_ignored, structured_prune
from targets._export_common import frozen_modules, keep_frozen_float
from targets.export_config import ExportConfig
from tests.examples.conftest import example_module

ym = example_module("yolov8", "yolo_models")
yt = example_module("yolov8", "yolo_task")

X = torch.randn(2, 1, 64, 64, generator=torch.Generator().manual_seed(0))


def _params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_yolov8_n_and_s_export_layout_and_sizes():
    n, s = ym.yolov8n().eval(), ym.yolov8s().eval()
    with torch.no_grad():
        assert n(X).shape == s(X).shape == (2, 4 + 10, 8 * 8 + 4 * 4 + 2 * 2)   # strides 8, 16, 32 at 64 px
    # yolov8.yaml's channel plan at width 0.25 / 0.5, depth 0.33 -> 1, 2, 2, 1 bottlenecks
    assert [m.conv.out_channels for m in (n.backbone[0], n.backbone[7])] == [16, 256]
    assert [m.conv.out_channels for m in (s.backbone[0], s.backbone[7])] == [32, 512]
    assert [len(n.backbone[i].m) for i in (2, 4, 6, 8)] == [1, 2, 2, 1]
    assert 3.0 < _params(s) / _params(n) < 4.0


def test_c2f_splits_one_conv_with_chunk_as_ultralytics_does():
    c2f = ym.C2f(32, 32, 1, True)
    graph = torch.export.export(c2f.eval(), (torch.randn(1, 32, 8, 8),)).graph
    ops = [str(n.target) for n in graph.nodes if n.op == "call_function"]
    assert sum("chunk" in o or "split" in o for o in ops) == 1 and sum("cat" in o for o in ops) == 1
    assert sum("convolution" in o or "conv2d" in o for o in ops) == 4      # cv1, the bottleneck's two, cv2
    assert not hasattr(c2f, "cv0")   # not Torch-Pruning's hand-written C2f_v2


def test_dfl_and_anchors_are_inside_the_graph_and_decode_to_pixels():
    m = ym.yolov8n().eval()
    feats: list[torch.Tensor] = []
    hook = m.detect.register_forward_pre_hook(lambda _m, args: feats.extend(args[0]))
    with torch.no_grad():
        out = m(X[:1])
    hook.remove()
    det = m.detect
    assert not any(p.requires_grad for p in det.decode.dfl.parameters())
    assert det.decode.dfl.conv.weight.flatten().tolist() == list(range(16))
    # decode by hand: softmax over 16 bins, expectation, distances * stride around the cell centers
    boxes, centers = [], []
    with torch.no_grad():
        for i, (f, s) in enumerate(zip(feats, (8, 16, 32), strict=True)):
            raw = det.cv2[i](f).view(1, 4, 16, -1).softmax(2)
            dist = (raw * torch.arange(16.0).view(1, 1, 16, 1)).sum(2) * s                  # (1, 4, hw)
            h = f.shape[2]
            ys, xs = torch.meshgrid(torch.arange(h), torch.arange(h), indexing="ij")
            c = torch.stack([xs.flatten(), ys.flatten()]).float().add(0.5).mul(s)[None]   # (1, 2, hw)
            boxes.append(torch.cat([c + (dist[:, 2:] - dist[:, :2]) / 2, dist[:, :2] + dist[:, 2:]], 1))
            centers.append(c)
    torch.testing.assert_close(out[:, :4], torch.cat(boxes, 2), rtol=1e-4, atol=1e-3)
    assert float(out[:, 4:].min()) >= 0 and float(out[:, 4:].max()) <= 1            # sigmoid scores


def test_prune_stage_prunes_yolov8_without_patching_and_keeps_the_output():
    m = ym.yolov8n().eval()
    c2f_cv1 = m.backbone[4].cv1.conv.out_channels
    auto = auto_ignored(m, (X[:1],))
    assert m.detect.decode.dfl.conv in auto and m.backbone[2].cv1.conv in auto
    assert m.detect.cv2[0][0].conv not in auto and m.backbone[2].m[0].cv1.conv not in auto
    before = _params(m)
    structured_prune(m, X[:1], ratio=0.3, round_to=8)
    with torch.no_grad():
        assert m(X).shape == (2, 14, 84)
    assert _params(m) < 0.7 * before
    assert m.backbone[4].m[0].cv1.conv.out_channels < c2f_cv1 // 2       # the bottlenecks lost channels
    assert m.backbone[4].cv1.conv.out_channels == c2f_cv1                # the chunk-ed conv kept its width
    assert m.detect.cv2[0][-1].out_channels == 64 and m.detect.cv3[0][-1].out_channels == 10
    assert m.detect.decode.dfl.conv.weight.flatten().tolist() == list(range(16))


def test_frozen_decode_tail_is_the_only_automatic_float_module_and_only_for_int8():
    m = ym.yolov8n()
    assert frozen_modules(m) == ["detect.decode"]
    cfg, added = keep_frozen_float(ExportConfig(precision="int8", keep_float=["backbone.0"]), m)
    assert added == ["detect.decode"] and cfg.keep_float == ["backbone.0", "detect.decode"]
    assert keep_frozen_float(ExportConfig(precision="fp32"), m) == (ExportConfig(precision="fp32"), [])
    assert frozen_modules(torch.nn.Sequential(torch.nn.Conv2d(1, 2, 1))) == []


@pytest.mark.onnx
def test_onnx_int8_keeps_dfl_softmax_and_box_arithmetic_float(tmp_path):
    import onnx

    from targets import export_onnx

    m = ym.yolov8n().eval()
    calib = np.random.default_rng(0).uniform(-1, 1, (16, 1, 64, 64)).astype(np.float32)
    art = export_onnx.export(m, (X[:1],), calib, ExportConfig(precision="int8", calib_samples=16), tmp_path)
    assert art.metadata["keep_float_auto"] == ["detect.decode"]
    graph = onnx.load(str(art.path)).graph
    producer = {o: n for n in graph.node for o in n.output}
    types = {n.op_type for n in graph.node}
    assert "QuantizeLinear" in types and "Softmax" in types
    inits = {i.name for i in graph.initializer}
    dfl = [n for n in graph.node if n.op_type == "Conv" and any(
        i in inits and onnx.numpy_helper.to_array(next(t for t in graph.initializer if t.name == i)).size == 16
        for i in n.input)]
    assert len(dfl) == 1
    final = producer[graph.output[0].name]
    assert final.op_type == "Concat"                               # float boxes + probabilities, no final Q/DQ
    scores = [producer[i] for i in final.input if producer[i].op_type == "Sigmoid"]   # the class probabilities
    assert len(scores) == 1
    for node in [n for n in graph.node if n.op_type == "Softmax"] + dfl + scores + [final]:
        assert all(producer[i].op_type != "DequantizeLinear" for i in node.input if i in producer), node.name


def test_postprocess_turns_xywh_pixels_into_scored_xyxy_and_map_is_one_when_perfect():
    a = 84
    out = np.zeros((1, 14, a), dtype=np.float32)
    out[0, :4, 10] = [20, 30, 10, 16]                  # cx cy w h
    out[0, 4 + 7, 10] = 0.9
    dets = yt.postprocess([out])[0]
    np.testing.assert_allclose(dets, [[15, 22, 25, 38, 0.9, 7]], rtol=1e-6)
    maps = example_module("detect", "detect_boxes").coco_map([dets], [np.array([[15, 22, 25, 38, 7]])])
    assert maps["map50_95"] == pytest.approx(1.0)


def test_loss_is_lower_for_outputs_on_the_ground_truth():
    gt = [torch.tensor([[8.0, 8.0, 24.0, 24.0, 3.0]])]
    good = torch.zeros(1, 14, 84)
    good[:, 4:] = 1e-3
    centers = yt.anchor_centers()
    inside = (centers[:, 0] > 8) & (centers[:, 0] < 24) & (centers[:, 1] > 8) & (centers[:, 1] < 24)
    good[0, :4, inside] = torch.tensor([16.0, 16.0, 16.0, 16.0])[:, None]
    good[0, 7, inside] = 0.99
    bad = good.clone()
    bad[0, :2, inside] += 10
    bad[0, 7, inside] = 1e-3
    assert float(yt.detection_loss(good, gt)) < float(yt.detection_loss(bad, gt))
