"""A small transformer encoder over token ids + attention mask (two int64 inputs), trained once and cached.

The attention is written out (q, k, v, out projections with ``num_heads`` and ``head_dim`` attributes), the shape
Torch-Pruning's head-aware pruning understands: pruning keeps every head the same width and edgepipe writes the new
``head_dim`` back, so the module's bookkeeping stays true.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from pipeline.recipe.trained import trained_once

CACHE = Path(os.environ.get("EDGEPIPE_EXAMPLES_CACHE", Path(__file__).with_name(".cache")))
VERSION = 2


class SelfAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape

        def heads(y: torch.Tensor) -> torch.Tensor:
            return y.reshape(b, t, self.num_heads, self.head_dim).transpose(1, 2)

        q, k, v = heads(self.q(x)), heads(self.k(x)), heads(self.v(x))
        scores = q @ k.transpose(-2, -1) / (self.head_dim ** 0.5) + bias      # bias: 0 where seen, -1e4 masked
        y = torch.softmax(scores, dim=-1) @ v
        return self.out(y.transpose(1, 2).reshape(b, t, self.num_heads * self.head_dim))


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, hidden: int) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, num_heads)
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), bias)
        return x + self.fc2(torch.nn.functional.gelu(self.fc1(self.norm2(x))))


class TokenEncoder(nn.Module):
    def __init__(self, vocab: int = 18, seq: int = 64, dim: int = 32, num_heads: int = 4, hidden: int = 64,
                 depth: int = 1, classes: int = 10) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.pos = nn.Embedding(seq, dim)
        self.blocks = nn.ModuleList([Block(dim, num_heads, hidden) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.embed(input_ids) + self.pos(positions)[None]
        keep = attention_mask.to(x.dtype)
        bias = ((1.0 - keep) * -1e4)[:, None, None, :]
        for block in self.blocks:
            x = block(x, bias)
        x = self.norm(x)
        pooled = (x * keep[..., None]).sum(1) / keep.sum(1, keepdim=True).clamp(min=1.0)
        return self.head(pooled)


def train(model: nn.Module, epochs: int = 12, lr: float = 5e-3, seed: int = 0) -> nn.Module:
    from data import splits

    data = splits()["train"]
    loader = torch.utils.data.DataLoader(data, batch_size=64, shuffle=True,
                                         generator=torch.Generator().manual_seed(seed))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-2)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * len(loader))
    model.train()
    for _ in range(epochs):
        for x, y in loader:
            opt.zero_grad()
            nn.functional.cross_entropy(model(x["input_ids"], x["attention_mask"]), y).backward()
            opt.step()
            sched.step()
    return model.eval()


def _cached(stem: str, model: nn.Module, epochs: int | None = None) -> nn.Module:
    """Train ``model`` on first use and cache its weights next to this file (or in $EDGEPIPE_EXAMPLES_CACHE)."""
    return trained_once(model, CACHE / f"{stem}-v{VERSION}.pt",
                        lambda m: train(m) if epochs is None else train(m, epochs=epochs),
                        f"the token encoder ({stem})")


def trained_teacher() -> nn.Module:
    """The example's teacher: trained on first use and cached."""
    torch.manual_seed(0)   # 2 blocks of width 48, 30 epochs: 90.8 % top-1 in ~40 s (1 block of 32, 12 epochs: 79 %)
    return _cached("tokens-teacher", TokenEncoder(dim=48, num_heads=4, hidden=96, depth=2), epochs=30)


def quick_teacher() -> nn.Module:
    """A small, briefly trained teacher for tests that start from a clean clone (seconds, not minutes): every step
    runs on it, and the checks and gate judge it like any other model."""
    torch.manual_seed(0)
    return _cached("tokens-teacher-quick", TokenEncoder(dim=16, num_heads=2, hidden=32), epochs=3)
