"""Industrial-inspection chain on the digits: a deep ResNet-style teacher and a ShuffleNetV2-style student.

The student is a different architecture on purpose (cross-architecture distillation: only logits pass between
them). Its units follow ShuffleNetV2: a basic unit splits the channels in two, runs 1x1 -> depthwise 3x3 -> 1x1 on
one half and concatenates it with the untouched half; a down-sampling unit runs both branches with stride 2.

The channel shuffle + split of ShuffleNetV2 is written as two strided slices, ``x[:, 0::2]`` (passed through) and
``x[:, 1::2]`` (into the branch): each half again holds half of the previous unit's untouched channels and half of its
branch outputs, i.e. the same exchange of information as shuffle(groups=2) + chunk, up to a fixed channel permutation
that the following 1x1 convs absorb. Why: Torch-Pruning 1.6.1 cannot build its dependency graph over the
reshape -> transpose -> reshape shuffle (ZeroDivisionError in its reshape index mapping), but it follows slices.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pipeline.recipe.trained import trained_once

CACHE = Path(os.environ.get("EDGEPIPE_INSPECT_CACHE", Path(__file__).with_name(".cache")))
TEACHER_VERSION = 1


def conv_bn(cin: int, cout: int, k: int = 3, s: int = 1, groups: int = 1, act: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, s, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    if act:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


# ------------------------------------------------------------------------------------------------ ResNet teacher
class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(conv_bn(cin, cout, 3, stride), conv_bn(cout, cout, 3, 1, act=False))
        self.short = nn.Identity() if stride == 1 and cin == cout else conv_bn(cin, cout, 1, stride, act=False)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.short(x))


class ResNet(nn.Module):
    def __init__(self, widths: tuple[int, ...] = (24, 48, 96, 192), blocks: tuple[int, ...] = (2, 2, 2, 2),
                 num_classes: int = 10) -> None:
        super().__init__()
        self.stem = conv_bn(1, widths[0], 3, 2)                                       # 32x32 -> 16x16
        layers, cin = [], widths[0]
        for i, (w, n) in enumerate(zip(widths, blocks, strict=True)):
            for j in range(n):
                layers.append(BasicBlock(cin, w, 2 if (j == 0 and i > 0) else 1))
                cin = w
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.layers(self.stem(x))), 1))


# -------------------------------------------------------------------------------------------- ShuffleNet student
class ShuffleUnit(nn.Module):
    """ShuffleNetV2 unit: stride 1 = shuffle-split by strided slices / branch on one half / concat; stride 2 = two
    branches."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        half = cout // 2
        branch_in = cin if stride == 2 else cin // 2
        self.branch = nn.Sequential(conv_bn(branch_in, half, 1), conv_bn(half, half, 3, stride, groups=half, act=False),
                                    conv_bn(half, half, 1))
        self.short = (nn.Sequential(conv_bn(cin, cin, 3, 2, groups=cin, act=False), conv_bn(cin, half, 1))
                      if stride == 2 else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.short is None:
            a, b = x[:, 0::2], x[:, 1::2]          # shuffle + split in one step (module docstring)
            return torch.cat([a, self.branch(b)], 1)
        return torch.cat([self.short(x), self.branch(x)], 1)


class ShuffleNet(nn.Module):
    def __init__(self, stem: int = 24, widths: tuple[int, ...] = (48, 96, 192), repeats: tuple[int, ...] = (2, 3, 2),
                 last: int = 256, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = conv_bn(1, stem, 3, 2)                                            # 32x32 -> 16x16
        units, cin = [], stem
        for w, n in zip(widths, repeats, strict=True):
            units.append(ShuffleUnit(cin, w, 2))
            units += [ShuffleUnit(w, w, 1) for _ in range(n - 1)]
            cin = w
        self.units = nn.Sequential(*units)
        self.last = conv_bn(cin, last, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(last, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.last(self.units(self.stem(x)))), 1))


def teacher() -> nn.Module:
    return ResNet((24, 48, 96, 192), (2, 2, 2, 2))


def student() -> nn.Module:
    return ShuffleNet(24, (48, 96, 192), (2, 3, 2), 256)


# ------------------------------------------------------------------------------------------------------ training
def _data() -> Any:
    import importlib.util
    import sys

    name = "edgepipe_digits_data"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).parents[1] / "digits" / "data.py")
        assert spec is not None and spec.loader is not None
        sys.modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[name])
    return sys.modules[name]


def splits() -> dict[str, Any]:
    """The digits demo's data (32x32, fixed stratified split): the recipe's ``data.factory``."""
    return _data().splits()


def train(model: nn.Module, epochs: int = 10, seed: int = 0, lr: float = 3e-3, threads: int = 1) -> nn.Module:
    """Supervised training. One torch thread: on a shared 2-core host a second thread made steps many times slower."""
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        torch.manual_seed(seed)
        data = splits()["train"]
        loader = torch.utils.data.DataLoader(data, batch_size=64, shuffle=True,
                                             generator=torch.Generator().manual_seed(seed))
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * len(loader))
        model.train()
        for _ in range(epochs):
            for x, y in loader:
                opt.zero_grad()
                nn.functional.cross_entropy(model(x), y).backward()
                opt.step()
                sched.step()
        return model.eval()
    finally:
        torch.set_num_threads(saved)


def trained_teacher() -> nn.Module:
    """The ResNet teacher, trained on first use and cached next to this file."""
    epochs = int(os.environ.get("EDGEPIPE_INSPECT_TEACHER_EPOCHS", "0"))   # tests: a short teacher from scratch
    path = CACHE / (f"teacher-v{TEACHER_VERSION}.pt" if not epochs else f"teacher-v{TEACHER_VERSION}-e{epochs}.pt")
    torch.manual_seed(0)
    return trained_once(teacher(), path, lambda m: train(m, **({"epochs": epochs} if epochs else {})),
                        "the ResNet teacher")
