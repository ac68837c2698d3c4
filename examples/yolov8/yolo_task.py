"""The YOLOv8 example's data, loss and host post-processing.

Data: examples/detect's canvases (64x64, 1-4 sklearn digits each, boxes ``x1 y1 x2 y2 class``), imported from that
folder by file path. Loss: on the export-format output ``(B, 4 + nc, A)`` (``cx cy w h`` pixels, sigmoid scores):
center-inside assignment, GIoU on the DFL-decoded boxes, BCE with IoU-aware targets on the scores; with a teacher,
output matching on both. Post-processing: numpy xywh -> xyxy, class-wise NMS; rows ``x1 y1 x2 y2 score class``
for the pipeline's pycocotools ``map50_95``.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

IMAGE = 64
STRIDES = (8, 16, 32)
SCORE_THRESHOLD = 0.01
IOU_THRESHOLD = 0.6
MAX_DETECTIONS = 100


def _detect_module(name: str) -> Any:
    """A module of examples/detect (the canvases and the NMS are that example's, not copied)."""
    if name not in sys.modules:
        path = Path(__file__).resolve().parents[1] / "detect" / f"{name}.py"
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        sys.modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[name])
    return sys.modules[name]


def splits(train: int = 1500, eval: int = 400) -> dict[str, Any]:
    """The recipe's ``data.factory``: examples/detect's train / calib / eval canvases."""
    return _detect_module("detect_data").splits(train, eval)


def collate(batch: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    return torch.stack([b[0] for b in batch]), [b[1] for b in batch]


def anchor_centers(image: int = IMAGE) -> torch.Tensor:
    """(A, 2) anchor centers in pixels, in the order of the model's output (make_anchors * stride)."""
    pts = []
    for s in STRIDES:
        n = image // s
        ys, xs = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
        pts.append(torch.stack([xs.flatten(), ys.flatten()], 1).float().add(0.5).mul(s))
    return torch.cat(pts)


def xywh2xyxy(b: torch.Tensor) -> torch.Tensor:
    return torch.cat([b[..., :2] - b[..., 2:] / 2, b[..., :2] + b[..., 2:] / 2], -1)


def assign(gt: torch.Tensor, pts: torch.Tensor) -> torch.Tensor:
    """(A,) index of the ground-truth box each anchor learns (-1: background): the smallest box containing the
    anchor center; a box containing none takes its nearest anchor."""
    a = len(pts)
    idx = torch.full((a,), -1, dtype=torch.long)
    if len(gt) == 0:
        return idx
    inside = ((pts[:, None, 0] > gt[None, :, 0]) & (pts[:, None, 0] < gt[None, :, 2]) &
              (pts[:, None, 1] > gt[None, :, 1]) & (pts[:, None, 1] < gt[None, :, 3]))
    area = ((gt[:, 2] - gt[:, 0]) * (gt[:, 3] - gt[:, 1]))[None].expand(a, -1)
    best = torch.where(inside, area, torch.full_like(area, float("inf"))).argmin(1)
    idx = torch.where(inside.any(1), best, idx)
    centers = (gt[:, :2] + gt[:, 2:4]) / 2
    for m in range(len(gt)):
        if not bool((idx == m).any()):
            idx[int(((pts - centers[m]) ** 2).sum(1).argmin())] = m
    return idx


def _iou_giou(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    lt, rb = torch.max(a[:, :2], b[:, :2]), torch.min(a[:, 2:], b[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(1)
    union = (a[:, 2:] - a[:, :2]).clamp(min=0).prod(1) + (b[:, 2:] - b[:, :2]).clamp(min=0).prod(1) - inter + 1e-7
    iou = inter / union
    hull = (torch.max(a[:, 2:], b[:, 2:]) - torch.min(a[:, :2], b[:, :2])).clamp(min=0).prod(1) + 1e-7
    return iou, iou - (hull - union) / hull


def detection_loss(out: torch.Tensor, targets: list[torch.Tensor], teacher_out: torch.Tensor | None = None,
                   box_weight: float = 2.5, kd_weight: float = 1.0) -> torch.Tensor:
    """``out`` (B, 4 + nc, A) as exported. GIoU on positives + BCE on every score (IoU of the predicted box as the
    positive target, so scores rank boxes by quality, which mAP@0.5:0.95 rewards) + output matching (teacher)."""
    o = out.transpose(1, 2)                                                   # (B, A, 4 + nc)
    boxes = xywh2xyxy(o[..., :4])
    probs = o[..., 4:].clamp(1e-6, 1 - 1e-6)
    pts = anchor_centers()
    cls_target = torch.zeros_like(probs)
    box_terms, npos = [], 0
    for i, gt in enumerate(targets):
        idx = assign(gt, pts)
        pos = idx >= 0
        if not bool(pos.any()):
            continue
        g = gt[idx[pos]]
        iou, giou = _iou_giou(boxes[i][pos], g[:, :4])
        box_terms.append((1 - giou).sum())
        cls_target[i, pos.nonzero()[:, 0], g[:, 4].long()] = iou.detach().clamp(min=0.05)
        npos += int(pos.sum())
    norm = max(npos, 1)
    loss = F.binary_cross_entropy(probs, cls_target, reduction="sum") / norm
    if box_terms:
        loss = loss + box_weight * torch.stack(box_terms).sum() / norm
    if teacher_out is not None:
        t = teacher_out.detach().transpose(1, 2)
        loss = loss + kd_weight * (F.smooth_l1_loss(o[..., :4] / 8, t[..., :4] / 8)
                                   + F.binary_cross_entropy(probs, t[..., 4:].clamp(0, 1)) * probs.shape[-1])
    return loss


def kd_loss(student: list[torch.Tensor], teacher: list[torch.Tensor] | None, targets: Any) -> torch.Tensor:
    """The recipe's ``task.loss``: ground-truth loss, plus output matching when a teacher is there."""
    return detection_loss(student[0], list(targets), teacher[0] if teacher else None)


def detect(out: np.ndarray, score_threshold: float = SCORE_THRESHOLD, iou_threshold: float = IOU_THRESHOLD,
           max_detections: int = MAX_DETECTIONS) -> np.ndarray:
    """One image's (4 + nc, A) output -> (K, 6) ``x1 y1 x2 y2 score class``, class-wise NMS."""
    nms = _detect_module("detect_boxes").nms
    o = out.astype(np.float64).T
    xy, wh = o[:, :2], o[:, 2:4]
    boxes = np.concatenate([xy - wh / 2, xy + wh / 2], 1)
    scores = o[:, 4:]
    a, c = np.nonzero(scores > score_threshold)
    rows = []
    for k in np.unique(c):
        sel = a[c == k]
        keep = nms(boxes[sel], scores[sel, k], iou_threshold)
        rows.append(np.concatenate([boxes[sel][keep], scores[sel[keep], k][:, None], np.full((len(keep), 1), k)], 1))
    if not rows:
        return np.zeros((0, 6), dtype=np.float32)
    dets = np.concatenate(rows)
    dets = dets[np.argsort(-dets[:, 4], kind="stable")[:max_detections]]
    np.clip(dets[:, :4], 0, IMAGE, out=dets[:, :4])
    return dets.astype(np.float32)


def postprocess(outputs: list[np.ndarray]) -> list[np.ndarray]:
    """The recipe's ``task.postprocess``: (N, 4 + nc, A) outputs of a batch -> one (K, 6) array per image."""
    raw = np.asarray(outputs[0])
    return [detect(r) for r in raw]


def evaluate(predict: Any, dataset: Any, batch: int = 100) -> dict[str, float]:
    """pycocotools mAP of ``predict`` (numpy (N, 1, 64, 64) -> (N, 4 + nc, A)) on a canvas data set."""
    images = np.stack([np.asarray(dataset[i][0]) for i in range(len(dataset))]).astype(np.float32)
    targets = [np.asarray(dataset[i][1]) for i in range(len(dataset))]
    dets: list[np.ndarray] = []
    for i in range(0, len(images), batch):
        dets += postprocess([np.asarray(predict(images[i:i + batch]))])
    return _detect_module("detect_boxes").coco_map(dets, targets)
