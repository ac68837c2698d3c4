"""Host-side detection post-processing in numpy (decode + class-wise NMS) and COCO mAP with pycocotools.

``postprocess`` is the recipe's ``task.postprocess``: it takes the list of raw model outputs for a batch (one array
(N, anchors, 4 + classes), whatever backend produced it) and returns one (K, 6) array per image with rows
``x1, y1, x2, y2, score, class`` -- what ``task.metric: map50_95`` scores. Nothing here needs torch, so the same
code scores a PyTorch model, an ONNX file or a TFLite file.
"""

from __future__ import annotations

import contextlib
import io
from typing import Any

import numpy as np

STRIDES = (8, 16)
IMAGE = 64
SCORE_THRESHOLD = 0.01
IOU_THRESHOLD = 0.6
MAX_DETECTIONS = 100


def anchors(image: int = IMAGE, strides: tuple[int, ...] = STRIDES) -> tuple[np.ndarray, np.ndarray]:
    """Anchor-point centers (A, 2) and strides (A,): the same order as the model's output (and detect_loss)."""
    pts, st = [], []
    for s in strides:
        n = image // s
        ys, xs = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
        pts.append((np.stack([xs.ravel(), ys.ravel()], 1) + 0.5) * s)
        st.append(np.full(n * n, float(s)))
    return np.concatenate(pts).astype(np.float32), np.concatenate(st).astype(np.float32)


def decode(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(A, 4 + C) raw outputs of one image -> boxes (A, 4) and class probabilities (A, C)."""
    pts, st = anchors()
    d = np.logaddexp(0.0, raw[:, :4].astype(np.float64)) * st[:, None]      # softplus, overflow-safe
    boxes = np.concatenate([pts - d[:, :2], pts + d[:, 2:]], 1)
    scores = 1.0 / (1.0 + np.exp(-raw[:, 4:].astype(np.float64)))
    return boxes, scores


def iou_one_to_many(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    lt = np.maximum(box[:2], boxes[:, :2])
    rb = np.minimum(box[2:], boxes[:, 2:])
    inter = np.clip(rb - lt, 0, None).prod(1)
    area = np.clip(box[2:] - box[:2], 0, None).prod()
    areas = np.clip(boxes[:, 2:] - boxes[:, :2], 0, None).prod(1)
    return inter / np.maximum(area + areas - inter, 1e-9)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float = IOU_THRESHOLD) -> np.ndarray:
    """Greedy NMS: indices of the kept boxes, best score first."""
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size:
        i = order[0]
        keep.append(i)
        if order.size == 1:
            break
        rest = order[1:]
        order = rest[iou_one_to_many(boxes[i], boxes[rest]) <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)


def detect(raw: np.ndarray, score_threshold: float = SCORE_THRESHOLD, iou_threshold: float = IOU_THRESHOLD,
           max_detections: int = MAX_DETECTIONS) -> np.ndarray:
    """One image's raw outputs -> (K, 6) detections ``x1, y1, x2, y2, score, class``, class-wise NMS."""
    boxes, scores = decode(raw)
    a, c = np.nonzero(scores > score_threshold)          # every (anchor, class) pair above the threshold
    out = []
    for k in np.unique(c):
        sel = a[c == k]
        keep = nms(boxes[sel], scores[sel, k], iou_threshold)
        b = boxes[sel][keep]
        out.append(np.concatenate([b, scores[sel[keep], k][:, None], np.full((len(keep), 1), k)], 1))
    if not out:
        return np.zeros((0, 6), dtype=np.float32)
    dets = np.concatenate(out)
    dets = dets[np.argsort(-dets[:, 4], kind="stable")[:max_detections]]
    np.clip(dets[:, :4], 0, IMAGE, out=dets[:, :4])
    return dets.astype(np.float32)


def postprocess(outputs: list[np.ndarray]) -> list[np.ndarray]:
    """The recipe's ``task.postprocess``: raw outputs of a batch -> one (K, 6) detection array per image."""
    raw = np.asarray(outputs[0])
    return [detect(r) for r in raw.reshape(len(raw), -1, raw.shape[-1])]


def coco_map(detections: list[np.ndarray], targets: list[Any]) -> dict[str, float]:
    """COCO box mAP@0.5:0.95 and mAP@0.5 with pycocotools (the reference implementation). ``targets``: one (M, 5)
    ``x1, y1, x2, y2, class`` per image. The pipeline's ``task.metric: map50_95`` computes the same thing."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt: dict[str, Any] = {"images": [{"id": i + 1} for i in range(len(targets))],
                          "categories": [{"id": c + 1} for c in range(10)], "annotations": []}
    for i, t in enumerate(targets):
        for x1, y1, x2, y2, c in np.asarray(t, dtype=np.float64).reshape(-1, 5):
            gt["annotations"].append({"id": len(gt["annotations"]) + 1, "image_id": i + 1,
                                      "category_id": int(c) + 1, "bbox": [x1, y1, x2 - x1, y2 - y1],
                                      "area": float((x2 - x1) * (y2 - y1)), "iscrowd": 0})
    dets = [{"image_id": i + 1, "category_id": int(c) + 1, "bbox": [float(x1), float(y1), float(x2 - x1),
                                                                     float(y2 - y1)], "score": float(s)}
            for i, d in enumerate(detections) for x1, y1, x2, y2, s, c in d]
    if not dets:
        return {"map50_95": 0.0, "map50": 0.0}
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = gt
        coco.createIndex()
        ev = COCOeval(coco, coco.loadRes(dets), "bbox")
        ev.params.maxDets = [1, 10, MAX_DETECTIONS]
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {"map50_95": max(float(ev.stats[0]), 0.0), "map50": max(float(ev.stats[1]), 0.0)}


def evaluate(predict: Any, dataset: Any, batch: int = 100) -> dict[str, float]:
    """mAP of ``predict`` (numpy batch (N, 1, 64, 64) -> raw outputs (N, A, 4 + C)) on a detection dataset."""
    images = np.stack([np.asarray(dataset[i][0]) for i in range(len(dataset))]).astype(np.float32)
    targets = [np.asarray(dataset[i][1]) for i in range(len(dataset))]
    dets: list[np.ndarray] = []
    for i in range(0, len(images), batch):
        dets += postprocess([np.asarray(predict(images[i:i + batch]))])
    return coco_map(dets, targets)
