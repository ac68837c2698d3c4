"""A small anchor-free YOLO-style detector (YOLOv8's shape, scaled down): Conv-BN-SiLU, C2f blocks (split, a chain
of bottlenecks, concat of every stage), a top-down neck over two scales (strides 8 and 16), and a decoupled head per
scale with 4 box-distance channels and one score per class.

Export-friendly by construction: static shapes, no data-dependent ops in forward. The forward returns the raw head
outputs of both scales as ONE tensor (batch, anchors, 4 + classes); decoding and NMS happen on the host, in numpy
(``detect_boxes.postprocess``), so every backend runs the same graph and the runner needs to know nothing about
boxes.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from pipeline.recipe.trained import trained_once

CACHE = Path(os.environ.get("EDGEPIPE_DETECT_CACHE", Path(__file__).with_name(".cache")))
TEACHER_VERSION = 2
STRIDES = (8, 16)
NUM_CLASSES = 10
IMAGE = 64


class Conv(nn.Sequential):
    def __init__(self, cin: int, cout: int, k: int = 3, s: int = 1) -> None:
        super().__init__(nn.Conv2d(cin, cout, k, s, k // 2, bias=False), nn.BatchNorm2d(cout), nn.SiLU())


class Bottleneck(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.cv1 = Conv(c, c, 3)
        self.cv2 = Conv(c, c, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.cv2(self.cv1(x))


class C2f(nn.Module):
    """YOLOv8's CSP block: split in two halves, bottlenecks on the second half, concat of all, 1x1 conv.

    The split is two 1x1 convs (``cv0``, ``cv1``) rather than ``chunk`` of one: the same function (a 1x1 conv's
    output halves), but Torch-Pruning 1.6.1 mis-indexes a pruned ``chunk`` (IndexError), which is why its own
    YOLOv8 example rewrites C2f the same way."""

    def __init__(self, cin: int, cout: int, n: int = 1) -> None:
        super().__init__()
        self.c = cout // 2
        self.cv0 = Conv(cin, self.c, 1)
        self.cv1 = Conv(cin, self.c, 1)
        self.m = nn.ModuleList(Bottleneck(self.c) for _ in range(n))
        self.cv2 = Conv((2 + n) * self.c, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = [self.cv0(x), self.cv1(x)]
        for m in self.m:
            y.append(m(y[-1]))
        return self.cv2(torch.cat(y, 1))


class Head(nn.Module):
    """Decoupled head for one scale: a box branch (4 distances) and a class branch (one logit per class)."""

    def __init__(self, cin: int, hidden: int, num_classes: int) -> None:
        super().__init__()
        self.box = nn.Sequential(Conv(cin, hidden, 3), nn.Conv2d(hidden, 4, 1))
        self.cls = nn.Sequential(Conv(cin, hidden, 3), nn.Conv2d(hidden, num_classes, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.box(x), self.cls(x)], 1).flatten(2)          # (b, 4 + classes, h * w)


class Detector(nn.Module):
    def __init__(self, widths: tuple[int, int, int, int] = (16, 32, 64, 128), depth: int = 1, head: int = 32,
                 num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        w1, w2, w3, w4 = widths
        self.stem = nn.Sequential(Conv(1, w1, 3, 2), Conv(w1, w2, 3, 2), C2f(w2, w2, depth))   # stride 4
        self.down8 = nn.Sequential(Conv(w2, w3, 3, 2), C2f(w3, w3, depth))                       # stride 8
        self.down16 = nn.Sequential(Conv(w3, w4, 3, 2), C2f(w4, w4, depth))                      # stride 16
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.fuse8 = C2f(w3 + w4, w3, depth)                                                     # top-down neck
        self.head8 = Head(w3, head, num_classes)
        self.head16 = Head(w4, head, num_classes)
        self.num_classes = num_classes
        for h in (self.head8, self.head16):   # start with a low score everywhere (most anchors are background)
            nn.init.constant_(h.cls[-1].bias, -4.0)
            nn.init.constant_(h.box[-1].bias, 1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p8 = self.down8(self.stem(x))
        p16 = self.down16(p8)
        f8 = self.fuse8(torch.cat([p8, self.up(p16)], 1))
        return torch.cat([self.head8(f8), self.head16(p16)], 2).transpose(1, 2)   # (b, anchors, 4 + classes)


OUTPUT_LAYERS = ["head8.box.1", "head8.cls.1", "head16.box.1", "head16.cls.1"]   # never pruned: boxes and classes


def teacher() -> nn.Module:
    return Detector((16, 32, 64, 128), depth=1, head=48)


def student() -> nn.Module:
    return Detector((12, 24, 48, 96), depth=1, head=32)


class CBR(nn.Sequential):
    def __init__(self, cin: int, cout: int, k: int = 3, s: int = 1) -> None:
        super().__init__(nn.Conv2d(cin, cout, k, s, k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class FastDetector(nn.Module):
    """The student shaped for CPU INT8: a plain stack of few, wide Conv-BN-ReLU layers (no split/concat blocks, no
    SiLU) and one coupled head conv per scale whose 1x1 output gives box distances and class scores together.

    Why: at batch 1 on a CPU this detector's latency is op count and memory traffic, not MACs -- the C2f student had
    half the teacher's MACs but ran only 1.35x faster, and its INT8 was slower than its FP32 (SiLU is not fused into
    QLinearConv, so every SiLU dequantizes, runs in float and requantizes). Conv + ReLU is fused by every INT8 backend.
    Same output layout as ``Detector``: (b, 80 anchors, 4 + classes), strides 8 then 16.
    """

    def __init__(self, widths: tuple[int, int, int, int] = (16, 32, 64, 96), head: int = 48,
                 num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        w1, w2, w3, w4 = widths
        self.stem = nn.Sequential(CBR(1, w1, 3, 2), CBR(w1, w2, 3, 2))                  # stride 4
        self.down8 = nn.Sequential(CBR(w2, w3, 3, 2), CBR(w3, w3, 3))                  # stride 8
        self.down16 = nn.Sequential(CBR(w3, w4, 3, 2), CBR(w4, w4, 3))                 # stride 16
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.fuse8 = CBR(w3 + w4, w3, 1)
        self.head8 = nn.Sequential(CBR(w3, head, 3), nn.Conv2d(head, 4 + num_classes, 1))
        self.head16 = nn.Sequential(CBR(w4, head, 3), nn.Conv2d(head, 4 + num_classes, 1))
        for h in (self.head8, self.head16):
            nn.init.constant_(h[-1].bias[:4], 1.0)
            nn.init.constant_(h[-1].bias[4:], -4.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p8 = self.down8(self.stem(x))
        p16 = self.down16(p8)
        f8 = self.fuse8(torch.cat([p8, self.up(p16)], 1))
        return torch.cat([self.head8(f8).flatten(2), self.head16(p16).flatten(2)], 2).transpose(1, 2)


FAST_OUTPUT_LAYERS = ["head8.1", "head16.1"]


def fast_student() -> nn.Module:
    return FastDetector()


def _sibling(name: str) -> object:
    import importlib.util
    import sys

    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(f"{name}.py"))
        assert spec is not None and spec.loader is not None
        sys.modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[name])
    return sys.modules[name]


def train(model: nn.Module, epochs: int = 10, seed: int = 0, lr: float = 4e-3, data: object = None,
          teacher_model: nn.Module | None = None, log: bool = False, threads: int = 1) -> nn.Module:
    """Supervised detection training (and output-matching KD when ``teacher_model`` is given).

    One intra-op thread by default: on a shared 2-core host a second torch thread made a training step 10-40x
    slower (threads wait on each other at every op), measured with other jobs running.
    """
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _train(model, epochs, seed, lr, data, teacher_model, log)
    finally:
        torch.set_num_threads(saved)


def _train(model: nn.Module, epochs: int, seed: int, lr: float, data: object, teacher_model: nn.Module | None,
           log: bool) -> nn.Module:
    loss_mod = _sibling("detect_loss")
    dataset = data if data is not None else _sibling("detect_data").splits()["train"]  # type: ignore[attr-defined]
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    loader = torch.utils.data.DataLoader(dataset, batch_size=32, shuffle=True, generator=gen,
                                         collate_fn=loss_mod.collate, drop_last=True)  # type: ignore[attr-defined]
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * len(loader), pct_start=0.15)
    for epoch in range(epochs):
        model.train()
        total = 0.0
        for x, targets in loader:
            opt.zero_grad(set_to_none=True)
            out = model(x)
            t_out = None
            if teacher_model is not None:
                with torch.no_grad():
                    t_out = teacher_model.eval()(x)
            loss = loss_mod.detection_loss(out, targets, t_out)  # type: ignore[attr-defined]
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 10.0)
            opt.step()
            sched.step()
            total += float(loss.detach())
        if log:
            print(f"epoch {epoch + 1}/{epochs} loss {total / len(loader):.4f}", flush=True)
    return model.eval()


def trained_teacher() -> nn.Module:
    """The teacher detector, trained on first use (minutes on 2 CPU cores) and cached next to this file."""
    epochs = int(os.environ.get("EDGEPIPE_DETECT_TEACHER_EPOCHS", "0"))   # tests: a short teacher from scratch
    path = CACHE / (f"teacher-v{TEACHER_VERSION}.pt" if not epochs else f"teacher-v{TEACHER_VERSION}-e{epochs}.pt")
    torch.manual_seed(0)
    return trained_once(teacher(), path, lambda m: train(m, log=True, **({"epochs": epochs} if epochs else {})),
                        "the detector teacher")
