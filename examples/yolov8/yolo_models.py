"""YOLOv8 written out (no ultralytics dependency): the n/s architecture of ultralytics/cfg/models/v8/yolov8.yaml with
its blocks as Ultralytics defines them -- Conv (Conv2d + BN + SiLU), Bottleneck, C2f (one 1x1 conv whose output is
``chunk``-ed in two, as Ultralytics does), SPPF, and the decoupled Detect head with DFL (reg_max = 16 bins, a 1x1
conv with fixed ``arange`` weights) and the anchors/strides computed inside ``forward``.

The forward always returns what Ultralytics' export returns: one tensor ``(B, 4 + nc, A)``, rows 0-3 the box as
``cx, cy, w, h`` in input pixels, rows 4.. the class probabilities (sigmoid). Training uses the same output (the
loss in yolo_task.py reads decoded boxes), so the graph that is trained is the graph that ships.

One difference in layout, not arithmetic: everything after the head's last learned convs -- the per-level concat,
DFL, anchors, box decode, sigmoid -- sits in one module, ``Detect.decode``, whose only weights (the DFL conv) are
frozen (``requires_grad=False``, as in Ultralytics). edgepipe keeps every module with only frozen weights out of
pruning and out of INT8 automatically (pipeline/stages/prune.py, targets/_export_common.frozen_modules).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
from torch import nn

from pipeline.recipe.trained import trained_once

CACHE = Path(os.environ.get("EDGEPIPE_YOLOV8_CACHE", Path(__file__).with_name(".cache")))
TEACHER_VERSION = 1
NUM_CLASSES = 10
IMAGE = 64
CHANNELS = 1            # the digit canvases are grey
REG_MAX = 16
SCALES = {"n": (0.33, 0.25), "s": (0.33, 0.50)}    # (depth, width) multipliers of yolov8.yaml


def make_divisible(x: float, divisor: int = 8) -> int:
    return int(math.ceil(x / divisor) * divisor)


class Conv(nn.Module):
    """Ultralytics' Conv: Conv2d (no bias) + BatchNorm2d + SiLU."""

    def __init__(self, c1: int, c2: int, k: int = 1, s: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, k // 2, bias=False)
        self.bn = nn.BatchNorm2d(c2, eps=1e-3, momentum=0.03)
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class Bottleneck(nn.Module):
    def __init__(self, c1: int, c2: int, shortcut: bool = True, e: float = 1.0) -> None:
        super().__init__()
        c_ = int(c2 * e)
        self.cv1 = Conv(c1, c_, 3)
        self.cv2 = Conv(c_, c2, 3)
        self.add = shortcut and c1 == c2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.cv2(self.cv1(x)) if self.add else self.cv2(self.cv1(x))


class C2f(nn.Module):
    """Ultralytics' C2f, unchanged: ``cv1`` to 2c channels, ``chunk(2, 1)``, n bottlenecks on the last half, concat
    of every stage, ``cv2``. (Torch-Pruning's YOLOv8 example rewrites this as ``C2f_v2`` with two convs; edgepipe's
    prune stage does not need that.)"""

    def __init__(self, c1: int, c2: int, n: int = 1, shortcut: bool = False, e: float = 0.5) -> None:
        super().__init__()
        self.c = int(c2 * e)
        self.cv1 = Conv(c1, 2 * self.c, 1, 1)
        self.cv2 = Conv((2 + n) * self.c, c2, 1)
        self.m = nn.ModuleList(Bottleneck(self.c, self.c, shortcut) for _ in range(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = list(self.cv1(x).chunk(2, 1))
        y.extend(m(y[-1]) for m in self.m)
        return self.cv2(torch.cat(y, 1))


class SPPF(nn.Module):
    def __init__(self, c1: int, c2: int, k: int = 5) -> None:
        super().__init__()
        c_ = c1 // 2
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c_ * 4, c2, 1, 1)
        self.m = nn.MaxPool2d(kernel_size=k, stride=1, padding=k // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = [self.cv1(x)]
        y.extend(self.m(y[-1]) for _ in range(3))
        return self.cv2(torch.cat(y, 1))


class DFL(nn.Module):
    """Distribution Focal Loss integral: softmax over ``c1`` bins, expectation by a 1x1 conv of weights 0..c1-1."""

    def __init__(self, c1: int = REG_MAX) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c1, 1, 1, bias=False).requires_grad_(False)
        self.conv.weight.data[:] = torch.arange(c1, dtype=torch.float).view(1, c1, 1, 1)
        self.c1 = c1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, a = x.shape
        return self.conv(x.view(b, 4, self.c1, a).transpose(2, 1).softmax(1)).view(b, 4, a)


def make_anchors(feats: list[torch.Tensor], strides: tuple[float, ...],
                 offset: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """Anchor points (A, 2) in grid units and their strides (A, 1), from the feature maps' static shapes."""
    points, stride_tensor = [], []
    for feat, stride in zip(feats, strides, strict=True):
        _, _, h, w = feat.shape
        sx = torch.arange(w, dtype=feat.dtype, device=feat.device) + offset
        sy = torch.arange(h, dtype=feat.dtype, device=feat.device) + offset
        yy, xx = torch.meshgrid(sy, sx, indexing="ij")
        points.append(torch.stack((xx, yy), -1).view(-1, 2))
        stride_tensor.append(torch.full((h * w, 1), stride, dtype=feat.dtype, device=feat.device))
    return torch.cat(points), torch.cat(stride_tensor)


def dist2bbox(distance: torch.Tensor, anchor_points: torch.Tensor, dim: int = 1) -> torch.Tensor:
    lt, rb = distance.chunk(2, dim)
    x1y1, x2y2 = anchor_points - lt, anchor_points + rb
    return torch.cat(((x1y1 + x2y2) / 2, x2y2 - x1y1), dim)      # cx, cy, w, h


class Decode(nn.Module):
    """What Ultralytics' ``Detect._inference`` does after the convs: concat levels, DFL, anchors, boxes in pixels
    (xywh), sigmoid scores. Its only weights are DFL's frozen ones."""

    def __init__(self, nc: int, strides: tuple[float, ...], reg_max: int = REG_MAX) -> None:
        super().__init__()
        self.nc, self.reg_max, self.strides = nc, reg_max, strides
        self.dfl = DFL(reg_max)

    def forward(self, boxes: list[torch.Tensor], scores: list[torch.Tensor]) -> torch.Tensor:
        b = boxes[0].shape[0]
        no = 4 * self.reg_max + self.nc
        x = torch.cat([torch.cat((bx, sc), 1).view(b, no, -1) for bx, sc in zip(boxes, scores, strict=True)], 2)
        anchors, strides = make_anchors(boxes, self.strides)
        box, cls = x.split((4 * self.reg_max, self.nc), 1)
        dbox = dist2bbox(self.dfl(box), anchors.transpose(0, 1).unsqueeze(0), dim=1) * strides.transpose(0, 1)
        return torch.cat((dbox, cls.sigmoid()), 1)


class Detect(nn.Module):
    """Decoupled head: per level, a box branch (4 x reg_max DFL logits) and a class branch (nc logits)."""

    def __init__(self, nc: int, ch: tuple[int, ...], strides: tuple[float, ...]) -> None:
        super().__init__()
        self.nc, self.nl, self.reg_max = nc, len(ch), REG_MAX
        c2, c3 = max(16, ch[0] // 4, self.reg_max * 4), max(ch[0], min(nc, 100))
        self.cv2 = nn.ModuleList(nn.Sequential(Conv(x, c2, 3), Conv(c2, c2, 3), nn.Conv2d(c2, 4 * self.reg_max, 1))
                                 for x in ch)
        self.cv3 = nn.ModuleList(nn.Sequential(Conv(x, c3, 3), Conv(c3, c3, 3), nn.Conv2d(c3, nc, 1)) for x in ch)
        self.decode = Decode(nc, strides)
        self.strides = strides

    def bias_init(self) -> None:
        """Ultralytics' initial biases: box logits 1.0, class logits for ~5 objects per 640 px image."""
        for a, b, s in zip(self.cv2, self.cv3, self.strides, strict=True):
            a[-1].bias.data[:] = 1.0
            b[-1].bias.data[: self.nc] = math.log(5 / self.nc / (IMAGE / s) ** 2)

    def forward(self, x: list[torch.Tensor]) -> torch.Tensor:
        return self.decode([self.cv2[i](x[i]) for i in range(self.nl)], [self.cv3[i](x[i]) for i in range(self.nl)])


class YOLOv8(nn.Module):
    """yolov8.yaml's backbone (P1-P5, SPPF) and PAN neck, layer for layer, at the given depth/width multiples."""

    def __init__(self, scale: str = "n", nc: int = NUM_CLASSES, ch: int = CHANNELS) -> None:
        super().__init__()
        depth, width = SCALES[scale]
        c = [make_divisible(v * width) for v in (64, 128, 256, 512, 1024)]
        n = [max(round(v * depth), 1) for v in (3, 6, 6, 3)]
        self.backbone = nn.ModuleList([
            Conv(ch, c[0], 3, 2), Conv(c[0], c[1], 3, 2), C2f(c[1], c[1], n[0], True),                   # 0-2 P2
            Conv(c[1], c[2], 3, 2), C2f(c[2], c[2], n[1], True),                                          # 3-4 P3
            Conv(c[2], c[3], 3, 2), C2f(c[3], c[3], n[2], True),                                          # 5-6 P4
            Conv(c[3], c[4], 3, 2), C2f(c[4], c[4], n[3], True), SPPF(c[4], c[4], 5)])                    # 7-9 P5
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        n3 = n[3]
        self.neck = nn.ModuleDict({
            "c2f_p4": C2f(c[4] + c[3], c[3], n3), "c2f_p3": C2f(c[3] + c[2], c[2], n3),                  # top-down
            "down_p3": Conv(c[2], c[2], 3, 2), "c2f_n4": C2f(c[2] + c[3], c[3], n3),                      # bottom-up
            "down_p4": Conv(c[3], c[3], 3, 2), "c2f_n5": C2f(c[3] + c[4], c[4], n3)})
        self.detect = Detect(nc, (c[2], c[3], c[4]), (8.0, 16.0, 32.0))
        self.detect.bias_init()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = []
        for i, m in enumerate(self.backbone):
            x = m(x)
            if i in (4, 6, 9):
                feats.append(x)
        p3, p4, p5 = feats
        h4 = self.neck["c2f_p4"](torch.cat([self.up(p5), p4], 1))
        o3 = self.neck["c2f_p3"](torch.cat([self.up(h4), p3], 1))
        o4 = self.neck["c2f_n4"](torch.cat([self.neck["down_p3"](o3), h4], 1))
        o5 = self.neck["c2f_n5"](torch.cat([self.neck["down_p4"](o4), p5], 1))
        return self.detect([o3, o4, o5])


def yolov8n() -> nn.Module:
    """The student (``stages.distill.student``): YOLOv8n's shape (depth 0.33, width 0.25)."""
    torch.manual_seed(0)
    return YOLOv8("n")


def yolov8s() -> nn.Module:
    return YOLOv8("s")


def _sibling(name: str) -> object:
    import importlib.util
    import sys

    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(f"{name}.py"))
        assert spec is not None and spec.loader is not None
        sys.modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[name])
    return sys.modules[name]


def train(model: nn.Module, epochs: int = 12, seed: int = 0, lr: float = 4e-3, data: object = None,
          log: bool = False, threads: int = 1) -> nn.Module:
    """Supervised training with yolo_task's loss on the export-format output. One torch thread: on a shared 2-core
    host a second thread made each step slower, not faster (examples/detect)."""
    task = _sibling("yolo_task")
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        dataset = data if data is not None else task.splits()["train"]  # type: ignore[attr-defined]
        gen = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        loader = torch.utils.data.DataLoader(dataset, batch_size=32, shuffle=True, generator=gen,
                                             collate_fn=task.collate, drop_last=True)  # type: ignore[attr-defined]
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=5e-4)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * len(loader),
                                                    pct_start=0.15)
        for epoch in range(epochs):
            model.train()
            total = 0.0
            for x, targets in loader:
                opt.zero_grad(set_to_none=True)
                loss = task.detection_loss(model(x), targets)  # type: ignore[attr-defined]
                loss.backward()
                nn.utils.clip_grad_norm_(params, 10.0)
                opt.step()
                sched.step()
                total += float(loss.detach())
            if log:
                print(f"epoch {epoch + 1}/{epochs} loss {total / len(loader):.4f}", flush=True)
    finally:
        torch.set_num_threads(saved)
    return model.eval()


def trained_teacher() -> nn.Module:
    """The FP32 YOLOv8s-shaped teacher, trained on first use (minutes on one core) and cached next to this file;
    EDGEPIPE_YOLOV8_TEACHER_EPOCHS trains a short one under a name of its own (the scenario tests)."""
    epochs = int(os.environ.get("EDGEPIPE_YOLOV8_TEACHER_EPOCHS", "0"))
    path = CACHE / (f"teacher-v{TEACHER_VERSION}.pt" if not epochs else f"teacher-v{TEACHER_VERSION}-e{epochs}.pt")
    torch.manual_seed(0)
    return trained_once(yolov8s(), path, lambda m: train(m, log=True, **({"epochs": epochs} if epochs else {})),
                        "the YOLOv8s teacher")
