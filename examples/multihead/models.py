"""A CNN with three heads -- class logits, the ink per quadrant (regression), the probability that the digit is
even -- trained once and cached. Pruning must keep all three heads intact; the checks compare all three outputs."""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.recipe.trained import trained_once

CACHE = Path(os.environ.get("EDGEPIPE_EXAMPLES_CACHE", Path(__file__).with_name(".cache")))
VERSION = 1


class MultiHead(nn.Module):
    def __init__(self, width: int = 32) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1, bias=False), nn.BatchNorm2d(2 * width), nn.ReLU(),
            nn.MaxPool2d(2), nn.AdaptiveAvgPool2d(2), nn.Flatten())
        self.trunk = nn.Sequential(nn.Linear(8 * width, 64), nn.ReLU())
        self.classes = nn.Linear(64, 10)
        self.ink = nn.Linear(64, 4)
        self.even = nn.Linear(64, 1)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h = self.trunk(self.features(image))
        return self.classes(h), self.ink(h), torch.sigmoid(self.even(h))


def loss(outputs: tuple[torch.Tensor, ...], target: torch.Tensor) -> torch.Tensor:
    logits, ink, even = outputs
    return (F.cross_entropy(logits, target[:, 0].long()) + 10 * F.mse_loss(ink, target[:, 2:])
            + F.binary_cross_entropy(even[:, 0], target[:, 1]))


def train(model: nn.Module, epochs: int = 15, lr: float = 3e-3, seed: int = 0) -> nn.Module:
    from data import splits

    loader = torch.utils.data.DataLoader(splits()["train"], batch_size=64, shuffle=True,
                                         generator=torch.Generator().manual_seed(seed))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * len(loader))
    model.train()
    for _ in range(epochs):
        for x, t in loader:
            opt.zero_grad()
            loss(model(x), t).backward()
            opt.step()
            sched.step()
    return model.eval()


def _cached(stem: str, model: nn.Module, epochs: int | None = None) -> nn.Module:
    """Train ``model`` on first use and cache its weights next to this file (or in $EDGEPIPE_EXAMPLES_CACHE)."""
    return trained_once(model, CACHE / f"{stem}-v{VERSION}.pt",
                        lambda m: train(m) if epochs is None else train(m, epochs=epochs),
                        f"the multi-head teacher ({stem})")


def trained_teacher() -> nn.Module:
    """The example's teacher: trained on first use and cached."""
    torch.manual_seed(0)
    return _cached("multihead-teacher", MultiHead())


def quick_teacher() -> nn.Module:
    """A small, briefly trained teacher for tests that start from a clean clone (seconds, not minutes): every step
    runs on it, and the checks and gate judge it like any other model."""
    torch.manual_seed(0)
    return _cached("multihead-teacher-quick", MultiHead(width=8), epochs=3)
