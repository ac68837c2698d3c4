"""Each built-in metric against a value computed by hand, mAP against pycocotools itself, and the protocol checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline.recipe.metrics import BoxMAP, resolve_metric
from targets.errors import ConfigError

LOGITS = np.array([[0.1, 0.9, 0.0, 0.0, 0.0, 0.0],    # top-1: 1
                   [0.8, 0.1, 0.05, 0.03, 0.02, 0.0],  # top-1: 0
                   [0.2, 0.3, 0.1, 0.15, 0.25, 0.0],   # top-1: 1, top-5 excludes 5
                   [0.0, 0.0, 0.0, 0.0, 0.1, 0.9]])    # top-1: 5
LABELS = np.array([1, 2, 5, 5])


def _score(name: str, outputs, targets=None, reference=None) -> dict:
    return resolve_metric(name, Path(".")).score(outputs, targets, reference)


def test_top1_is_the_share_of_argmax_hits():
    # hits: sample 0 (1) and sample 3 (5) -> 2 of 4
    assert _score("top1", [LOGITS], LABELS)["value"] == pytest.approx(0.5)


def test_top5_counts_a_label_among_the_five_best():
    # sample 1: label 2 is third best -> hit; sample 2: label 5 is the worst of six -> miss
    result = _score("top5", [LOGITS], LABELS)
    assert result["value"] == pytest.approx(0.75) and result["values"]["top1"] == pytest.approx(0.5)


def test_cosine_is_the_worst_outputs_mean_cosine_to_the_original():
    ref = [np.array([[1.0, 0.0], [0.0, 2.0]]), np.array([[3.0, 4.0], [1.0, 1.0]])]
    out = [np.array([[1.0, 1.0], [0.0, 5.0]]), np.array([[3.0, 4.0], [-1.0, -1.0]])]
    # output 0: cos 1/sqrt(2) and 1 -> 0.85355; output 1: 1 and -1 -> 0.0; primary = the worst
    result = _score("cosine", out, reference=ref)
    assert result["values"]["cosine[0]"] == pytest.approx((1 / np.sqrt(2) + 1) / 2)
    assert result["value"] == pytest.approx(0.0) and result["higher_is_better"] is True


def test_mse_is_the_worst_outputs_mean_squared_error_and_lower_is_better():
    ref = [np.array([[0.0, 0.0], [1.0, 1.0]]), np.array([[1.0], [2.0]])]
    out = [np.array([[1.0, 1.0], [1.0, 3.0]]), np.array([[1.0], [2.5]])]
    # output 0: rows (1+1)/2=1 and (0+4)/2=2 -> 1.5; output 1: 0 and 0.25 -> 0.125
    result = _score("mse", out, reference=ref)
    assert result["value"] == pytest.approx(1.5) and result["higher_is_better"] is False


def test_top1_refuses_labels_outside_the_outputs_classes():
    with pytest.raises(ValueError, match="does not fit"):
        _score("top1", [LOGITS], np.array([1, 2, 7, 0]))


def _coco_reference(preds: list[np.ndarray], gts: list[np.ndarray]) -> tuple[float, float]:
    """The same case fed to pycocotools directly, in its own json format."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    coco = COCO()
    coco.dataset = {"images": [{"id": 1}, {"id": 2}], "categories": [{"id": 1}, {"id": 2}],
                    "annotations": [{"id": k + 1, "image_id": i + 1, "category_id": int(c) + 1, "iscrowd": 0,
                                     "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1)}
                                    for k, (i, (x1, y1, x2, y2, c)) in
                                    enumerate((i, g) for i, gs in enumerate(gts) for g in gs)]}
    coco.createIndex()
    dets = coco.loadRes([{"image_id": i + 1, "category_id": int(c) + 1, "bbox": [x1, y1, x2 - x1, y2 - y1],
                          "score": s} for i, ps in enumerate(preds) for x1, y1, x2, y2, s, c in ps])
    ev = COCOeval(coco, dets, "bbox")
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    return float(ev.stats[1]), float(ev.stats[0])


def test_map_matches_pycocotools_on_a_small_known_case():
    gts = [np.array([[10, 10, 50, 50, 0], [60, 60, 90, 90, 1]], float), np.array([[5, 5, 40, 45, 0]], float)]
    preds = [np.array([[12, 12, 50, 52, 0.9, 0], [60, 62, 88, 90, 0.8, 1], [0, 0, 20, 20, 0.3, 0]], float),
             np.array([[30, 30, 70, 70, 0.7, 0], [6, 5, 40, 44, 0.6, 0]], float)]
    m50, m5095 = _coco_reference(preds, gts)
    ours = BoxMAP("50")
    ours.update(preds, gts)
    values = ours.compute()
    assert values["map50"] == pytest.approx(m50) and values["map50_95"] == pytest.approx(m5095)
    assert 0 < values["map50_95"] < values["map50"] <= 1.0
    # the built-in names go through the same code: map50 on the perfect case is 1
    perfect = _score("map50", [np.stack([np.pad(g[:1], ((0, 0), (0, 1)))[:, [0, 1, 2, 3, 5, 4]] + [0, 0, 0, 0, 1, 0]
                                         for g in gts])], [g[:1] for g in gts])
    assert perfect["value"] == pytest.approx(1.0)


def test_a_user_metric_without_the_protocol_is_a_config_error(tmp_path):
    (tmp_path / "m.py").write_text("class Half:\n    def update(self, o, t):\n        pass\n")
    with pytest.raises(ConfigError, match=r"lacks compute, primary, higher_is_better"):
        resolve_metric("m:Half", tmp_path)


def test_a_user_module_does_not_shadow_an_installed_library(tmp_path):
    (tmp_path / "yaml.py").write_text("BROKEN = True\n")
    (tmp_path / "m.py").write_text("import yaml\nclass M:\n    primary = 'x'\n    higher_is_better = True\n"
                                   "    def update(self, o, t):\n        self.v = float(o[0].mean())\n"
                                   "    def compute(self):\n"
                                   "        return {'x': self.v, 'lib': hasattr(yaml, 'safe_load')}\n")
    spec = resolve_metric("m:M", tmp_path)
    assert spec.score([np.ones((2, 3))], [0, 0])["values"] == {"x": 1.0, "lib": 1.0}
