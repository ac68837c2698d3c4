"""examples/detect: the canvases' boxes, the detector's static output, decode + NMS on hand-made outputs, mAP."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from tests.examples.conftest import example_module

dd = example_module("detect", "detect_data")
dm = example_module("detect", "detect_models")
db = example_module("detect", "detect_boxes")
dl = example_module("detect", "detect_loss")


@pytest.fixture(scope="module")
def canvases():
    xtr, ytr, _, _ = dd._digit_split()
    return dd.render(xtr, ytr, 40, seed=3), xtr, ytr


def test_canvas_boxes_hold_their_digit_ink_and_nothing_else(canvases):
    data, _, _ = canvases
    for img, boxes in data:
        assert img.shape == (1, dd.CANVAS, dd.CANVAS) and 1 <= len(boxes) <= dd.MAX_DIGITS
        ink = (img[0].numpy() + 1) / 2 > dd.INK
        covered = np.zeros_like(ink)
        for x1, y1, x2, y2, c in boxes.numpy():
            assert 0 <= x1 < x2 <= dd.CANVAS and 0 <= y1 < y2 <= dd.CANVAS and 0 <= c <= 9
            inside = ink[int(y1):int(y2), int(x1):int(x2)]
            # tight: ink touches every edge of the box
            assert inside[0].any() and inside[-1].any() and inside[:, 0].any() and inside[:, -1].any()
            covered[int(y1):int(y2), int(x1):int(x2)] = True
        assert not (ink & ~covered).any()          # no ink outside the boxes


def test_rendering_is_deterministic_per_seed(canvases):
    _, xtr, ytr = canvases
    a, b = dd.render(xtr, ytr, 3, seed=7), dd.render(xtr, ytr, 3, seed=7)
    assert all(torch.equal(a[i][0], b[i][0]) and torch.equal(a[i][1], b[i][1]) for i in range(3))


def test_detectors_return_one_static_raw_tensor_and_student_is_smaller():
    x = torch.zeros(2, 1, dm.IMAGE, dm.IMAGE)
    t, s = dm.teacher().eval(), dm.student().eval()
    anchors = sum((dm.IMAGE // st) ** 2 for st in dm.STRIDES)
    assert t(x).shape == s(x).shape == (2, anchors, 4 + dm.NUM_CLASSES)
    assert sum(p.numel() for p in s.parameters()) < sum(p.numel() for p in t.parameters()) / 1.5


def test_numpy_and_torch_anchors_and_decode_agree():
    raw = torch.randn(1, 80, 14, generator=torch.Generator().manual_seed(0))
    boxes, _ = db.decode(raw[0].numpy())
    np.testing.assert_allclose(boxes, dl.decode(raw)[0].numpy(), rtol=1e-5, atol=1e-4)


def _raw_for(boxes_cls_score: list[tuple[int, tuple[float, float, float, float], int, float]]) -> np.ndarray:
    """Raw outputs (80, 14) that decode to the given (anchor, box, class, score) and to nothing elsewhere."""
    pts, st = db.anchors()
    raw = np.full((80, 14), -10.0, dtype=np.float32)
    for a, (x1, y1, x2, y2), c, score in boxes_cls_score:
        d = np.array([pts[a, 0] - x1, pts[a, 1] - y1, x2 - pts[a, 0], y2 - pts[a, 1]]) / st[a]
        raw[a, :4] = np.log(np.expm1(d))                           # inverse softplus
        raw[a, 4 + c] = np.log(score / (1 - score))               # inverse sigmoid
    return raw


def test_postprocess_keeps_the_best_of_overlapping_boxes_per_class_and_keeps_other_classes():
    # anchors 9 and 10 (stride 8, row 1) both see the same digit; anchor 10 also votes for another class
    raw = _raw_for([(9, (4, 4, 20, 20), 3, 0.9), (10, (5, 4, 21, 20), 3, 0.6), (10, (5, 4, 21, 20), 7, 0.5),
                    (70, (30, 20, 60, 52), 1, 0.8)])
    dets = db.postprocess([raw[None]])[0]
    assert dets.shape == (3, 6)
    np.testing.assert_allclose(dets[0], [4, 4, 20, 20, 0.9, 3], atol=1e-3)
    np.testing.assert_allclose(dets[1], [30, 20, 60, 52, 0.8, 1], atol=1e-3)
    np.testing.assert_allclose(dets[2], [5, 4, 21, 20, 0.5, 7], atol=1e-3)


def test_map_is_one_for_perfect_detections_and_drops_for_a_shifted_box():
    gts = [np.array([[4, 4, 20, 20, 3], [30, 30, 60, 62, 1]], dtype=np.float32)]
    perfect = [np.array([[4, 4, 20, 20, 0.9, 3], [30, 30, 60, 62, 0.8, 1]], dtype=np.float32)]
    assert db.coco_map(perfect, gts) == pytest.approx({"map50_95": 1.0, "map50": 1.0})
    shifted = [np.array([[8, 8, 24, 24, 0.9, 3], [30, 30, 60, 62, 0.8, 1]], dtype=np.float32)]  # IoU 0.39
    assert db.coco_map(shifted, gts)["map50"] == pytest.approx(0.5, abs=0.01)


def test_detection_loss_is_lower_for_outputs_that_decode_to_the_ground_truth():
    gt = [torch.tensor([[4.0, 4, 20, 20, 3]])]
    _, pos = dl.assign(gt[0])
    right = _raw_for([(int(a), (4, 4, 20, 20), 3, 0.95) for a in pos.nonzero()[:, 0]])
    wrong = _raw_for([(int(a), (6, 2, 14, 22), 5, 0.95) for a in pos.nonzero()[:, 0]])
    good = float(dl.kd_loss([torch.from_numpy(right)[None]], None, gt))
    bad = float(dl.kd_loss([torch.from_numpy(wrong)[None]], None, gt))
    assert good < 0.2 < bad
    # with a teacher, the output-matching term is zero for the teacher's own outputs
    t = torch.from_numpy(right)[None]
    assert float(dl.detection_loss(t, gt, t)) == pytest.approx(good + float(dl.output_matching(t, t)), rel=1e-5)


def test_student_prunes_with_its_output_convs_kept():
    from pipeline.stages.prune import structured_prune

    model = dm.student().eval()
    x = torch.zeros(1, 1, dm.IMAGE, dm.IMAGE)
    pruned = structured_prune(copy.deepcopy(model), x, ratio=0.25, round_to=8, ignore=dm.OUTPUT_LAYERS)
    assert pruned(x).shape == model(x).shape
    assert sum(p.numel() for p in pruned.parameters()) < 0.7 * sum(p.numel() for p in model.parameters())
