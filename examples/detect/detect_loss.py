"""Training loss of the detector: center-inside assignment, IoU-aware class targets, GIoU box loss, and optional
output matching against a teacher's raw head outputs (what distillation and pruning fine-tuning use).

The recipe's ``task.loss: detect_loss:kd_loss`` has the signature the pipeline calls a user loss with
``(student_outputs, teacher_outputs_or_None, targets) -> scalar``, targets being the list of (M, 5) box tensors.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

STRIDES = (8, 16)
IMAGE = 64


def anchors(image: int = IMAGE, strides: tuple[int, ...] = STRIDES) -> tuple[torch.Tensor, torch.Tensor]:
    """Anchor-point centers (A, 2) in pixels and their strides (A,), in the order the model's output uses."""
    pts, st = [], []
    for s in strides:
        n = image // s
        ys, xs = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
        pts.append(torch.stack([xs.flatten(), ys.flatten()], 1).float().add(0.5).mul(s))
        st.append(torch.full((n * n,), float(s)))
    return torch.cat(pts), torch.cat(st)


def decode(raw: torch.Tensor) -> torch.Tensor:
    """(b, A, 4 + C) raw outputs -> (b, A, 4) boxes x1, y1, x2, y2 (softplus distances times the stride)."""
    pts, st = anchors()
    d = F.softplus(raw[..., :4]) * st[:, None]
    return torch.cat([pts - d[..., :2], pts + d[..., 2:]], -1)


def box_iou_giou(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Element-wise IoU and GIoU of two (N, 4) box sets."""
    lt, rb = torch.max(a[:, :2], b[:, :2]), torch.min(a[:, 2:], b[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(1)
    area_a = (a[:, 2:] - a[:, :2]).clamp(min=0).prod(1)
    area_b = (b[:, 2:] - b[:, :2]).clamp(min=0).prod(1)
    union = area_a + area_b - inter + 1e-7
    iou = inter / union
    hull = (torch.max(a[:, 2:], b[:, 2:]) - torch.min(a[:, :2], b[:, :2])).clamp(min=0).prod(1) + 1e-7
    return iou, iou - (hull - union) / hull


def assign(gt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For one image: (A,) index of the assigned ground-truth box (-1 = background) and the positive mask.

    An anchor point is positive for a box that contains it (the smallest such box when several do); a box that
    contains no anchor point takes its nearest one, so every digit is learned."""
    pts, _ = anchors()
    a = len(pts)
    idx = torch.full((a,), -1, dtype=torch.long)
    if len(gt) == 0:
        return idx, idx >= 0
    inside = ((pts[:, None, 0] > gt[None, :, 0]) & (pts[:, None, 0] < gt[None, :, 2]) &
              (pts[:, None, 1] > gt[None, :, 1]) & (pts[:, None, 1] < gt[None, :, 3]))          # (A, M)
    area = ((gt[:, 2] - gt[:, 0]) * (gt[:, 3] - gt[:, 1]))[None].expand(a, -1)
    best = torch.where(inside, area, torch.full_like(area, float("inf"))).argmin(1)
    idx = torch.where(inside.any(1), best, idx)
    centers = (gt[:, :2] + gt[:, 2:4]) / 2
    for m in range(len(gt)):
        if not bool((idx == m).any()):
            idx[int(((pts - centers[m]) ** 2).sum(1).argmin())] = m
    return idx, idx >= 0


def collate(batch: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    return torch.stack([b[0] for b in batch]), [b[1] for b in batch]


def detection_loss(out: torch.Tensor, targets: list[torch.Tensor], teacher_out: torch.Tensor | None = None,
                   box_weight: float = 2.5, kd_weight: float = 1.0) -> torch.Tensor:
    """GIoU on positive anchors + BCE on every class score with the IoU of the predicted box as the positive
    target (the score then ranks boxes by quality, which mAP@0.5:0.95 rewards); + KD on raw outputs."""
    boxes = decode(out)
    logits = out[..., 4:]
    cls_target = torch.zeros_like(logits)
    box_terms, npos = [], 0
    for i, gt in enumerate(targets):
        idx, pos = assign(gt)
        if not bool(pos.any()):
            continue
        g = gt[idx[pos]]
        iou, giou = box_iou_giou(boxes[i][pos], g[:, :4])
        box_terms.append((1 - giou).sum())
        cls_target[i, pos.nonzero()[:, 0], g[:, 4].long()] = iou.detach().clamp(min=0.05)
        npos += int(pos.sum())
    norm = max(npos, 1)
    cls = F.binary_cross_entropy_with_logits(logits, cls_target, reduction="sum") / norm
    box = torch.stack(box_terms).sum() / norm if box_terms else out.sum() * 0
    loss = cls + box_weight * box
    if teacher_out is not None:
        loss = loss + kd_weight * output_matching(out, teacher_out)
    return loss


def output_matching(out: torch.Tensor, teacher_out: torch.Tensor) -> torch.Tensor:
    """KD on raw head outputs: MSE on the box distances, BCE against the teacher's class probabilities."""
    t = teacher_out.detach()
    return (F.mse_loss(out[..., :4], t[..., :4])
            + F.binary_cross_entropy_with_logits(out[..., 4:], torch.sigmoid(t[..., 4:])) * out.shape[-1])


def kd_loss(student: list[torch.Tensor], teacher: list[torch.Tensor] | None, targets: Any) -> torch.Tensor:
    """The recipe's ``task.loss``: ground-truth detection loss, plus output matching when a teacher is there."""
    return detection_loss(student[0], list(targets), teacher[0] if teacher else None)
