"""The demo's teacher and student CNNs, and factories that train a teacher once and cache its weights.

``trained_teacher`` is the demo's: four conv blocks at 48x48 (about 33M MACs, 0.5-0.7 ms a call in ONNX
Runtime on 2 cores), big enough that distillation, pruning and INT8 pay on a CPU. ``tiny_teacher`` is the small
32x32 one (10M MACs, 0.1 ms) that the tests' recipe (tiny.yaml) uses, where every stage runs in seconds.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from pipeline.recipe.trained import trained_once

CACHE = Path(os.environ.get("EDGEPIPE_DIGITS_CACHE", Path(__file__).with_name(".cache")))
TEACHER_VERSION = 3
TINY_VERSION = 2


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                         nn.MaxPool2d(2))


class DigitsCNN(nn.Module):
    def __init__(self, widths: tuple[int, ...] = (32, 64, 128), num_classes: int = 10) -> None:
        super().__init__()
        layers, cin = [], 1
        for w in widths:
            layers.append(_block(cin, w))
            cin = w
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


def teacher() -> nn.Module:
    return DigitsCNN((32, 64, 128, 256))


def tiny() -> nn.Module:
    return DigitsCNN((32, 64, 128))


def student() -> nn.Module:
    return DigitsCNN((16, 32, 64, 128))


def tiny_student() -> nn.Module:
    return DigitsCNN((16, 32, 64))


def train(model: nn.Module, epochs: int = 12, seed: int = 0, lr: float = 3e-3, size: int = 32) -> nn.Module:
    from data import splits

    torch.manual_seed(seed)
    data = splits(size)["train"]
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


def trained_teacher() -> nn.Module:
    """The demo's teacher at 48x48, trained on first use (under a minute on 2 cores) and cached next to this file."""
    from data import DEMO_SIZE

    path = CACHE / f"teacher-v{TEACHER_VERSION}.pt"
    torch.manual_seed(0)  # the initial weights too: the same code trains the same teacher
    return trained_once(teacher(), path, lambda m: train(m, epochs=4, lr=5e-3, size=DEMO_SIZE), "the digits teacher")


def tiny_teacher() -> nn.Module:
    """The tests' small 32x32 teacher (seconds to train), cached next to this file."""
    path = CACHE / f"teacher-v{TINY_VERSION}.pt"
    torch.manual_seed(0)
    return trained_once(tiny(), path, train, "the tiny digits teacher")
