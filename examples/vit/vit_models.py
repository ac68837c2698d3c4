"""A small Vision Transformer for the digits (32x32, 1 channel), teacher and student sizes.

Written so Torch-Pruning can remove whole attention heads: the attention uses one fused ``qkv`` ``nn.Linear`` and a
``proj`` ``nn.Linear`` and reads its head count from ``self.num_heads`` at every forward (the prune stage updates it
after removing heads). Every shape is static (batch 1 at export), so the graph exports to ONNX, OpenVINO and TFLite.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.recipe.trained import trained_once

CACHE = Path(os.environ.get("EDGEPIPE_VIT_CACHE", Path(__file__).with_name(".cache")))
TEACHER_VERSION = 1
IMAGE = 32


class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection; ``num_heads`` and ``head_dim`` are plain attributes
    the pruner rewrites (see ``sync_heads``)."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)                      # unbind (not indexing) lets Torch-Pruning follow q, k and v
        attn = (q * self.head_dim ** -0.5) @ k.transpose(-2, -1)
        out = attn.softmax(dim=-1) @ v                                  # (b, heads, n, head_dim)
        return self.proj(out.transpose(1, 2).reshape(b, n, -1))


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_dim: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, mlp_dim)
        self.fc2 = nn.Linear(mlp_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class ViT(nn.Module):
    """Patch embedding (a strided conv), learned position embedding, pre-norm blocks, mean-pooled tokens."""

    def __init__(self, dim: int = 96, depth: int = 4, num_heads: int = 6, mlp_dim: int = 192, patch: int = 8,
                 num_classes: int = 10) -> None:
        super().__init__()
        tokens = (IMAGE // patch) ** 2
        self.patch = nn.Conv2d(1, dim, patch, stride=patch)
        self.pos = nn.Parameter(torch.zeros(1, tokens, dim))
        nn.init.trunc_normal_(self.pos, std=0.02)
        self.blocks = nn.Sequential(*[Block(dim, num_heads, mlp_dim) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch(x).flatten(2).transpose(1, 2) + self.pos
        x = self.norm(self.blocks(x))
        return self.head(x.mean(dim=1))


def attention_heads(model: nn.Module) -> dict[str, int]:
    """Head count per attention module (what the exported graph's reshape carries)."""
    return {n: int(m.num_heads) for n, m in model.named_modules() if isinstance(m, Attention)}


def teacher() -> nn.Module:
    return ViT(dim=128, depth=4, num_heads=8, mlp_dim=256)


def student() -> nn.Module:
    return ViT(dim=96, depth=4, num_heads=6, mlp_dim=192)


def _data() -> Any:
    import importlib.util
    import sys

    if "vit_data" not in sys.modules:
        spec = importlib.util.spec_from_file_location("vit_data", Path(__file__).with_name("vit_data.py"))
        assert spec is not None and spec.loader is not None
        sys.modules["vit_data"] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules["vit_data"])
    return sys.modules["vit_data"]


def train(model: nn.Module, epochs: int = 30, seed: int = 0, lr: float = 2e-3, threads: int = 1) -> nn.Module:
    """Plain supervised training. One torch thread: on a shared 2-core host a second thread made steps many times
    slower (measured while other jobs ran)."""
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _train(model, epochs, seed, lr)
    finally:
        torch.set_num_threads(saved)


def _train(model: nn.Module, epochs: int, seed: int, lr: float) -> nn.Module:
    torch.manual_seed(seed)
    data = _data().splits()["train"]
    loader = torch.utils.data.DataLoader(data, batch_size=64, shuffle=True,
                                         generator=torch.Generator().manual_seed(seed))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * len(loader))
    model.train()
    for _ in range(epochs):
        for x, y in loader:
            opt.zero_grad()
            F.cross_entropy(model(x), y, label_smoothing=0.1).backward()
            opt.step()
            sched.step()
    return model.eval()


def trained_teacher() -> nn.Module:
    """The teacher ViT, trained on first use and cached next to this file."""
    epochs = int(os.environ.get("EDGEPIPE_VIT_TEACHER_EPOCHS", "0"))   # tests: a short teacher from scratch
    path = CACHE / (f"teacher-v{TEACHER_VERSION}.pt" if not epochs else f"teacher-v{TEACHER_VERSION}-e{epochs}.pt")
    torch.manual_seed(0)
    return trained_once(teacher(), path, lambda m: train(m, **({"epochs": epochs} if epochs else {})),
                        "the ViT teacher")
