"""A tiny GPT-style decoder following the issue-24 model protocol (LM_CONTRACT.md), for the generation tests.

Two pre-norm blocks of width 32 with different head counts per layer (4 heads then 2, as head pruning leaves them),
learned positions, tied embeddings, vocabulary 50. Trained for a few seconds on a real sequence: the labels of
sklearn's digits in file order (long runs of 0 1 2 ... 9 with breaks), so greedy decoding continues a prompt with
real, non-trivial margins rather than near-ties.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from torch import nn

VOCAB, WIDTH, HEADS, MAX_POS = 50, 32, (4, 2), 64
TOKEN_OFFSET = 7  # digit d is token d + 7: ids 0..6 and 17..49 exist but never occur (a real vocabulary's tail)


class Block(nn.Module):
    def __init__(self, heads: int) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, WIDTH // heads
        self.ln1, self.ln2 = nn.LayerNorm(WIDTH), nn.LayerNorm(WIDTH)
        self.qkv = nn.Linear(WIDTH, 3 * WIDTH)
        self.proj = nn.Linear(WIDTH, WIDTH)
        self.mlp = nn.Sequential(nn.Linear(WIDTH, 4 * WIDTH), nn.GELU(), nn.Linear(4 * WIDTH, WIDTH))

    def forward(self, x: torch.Tensor, past: tuple[torch.Tensor, torch.Tensor] | None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, s, _ = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(WIDTH, dim=-1)
        q, k, v = (t.reshape(b, s, self.heads, self.head_dim).transpose(1, 2) for t in (q, k, v))
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        p = k.shape[2] - s
        allowed = torch.arange(k.shape[2])[None, :] <= torch.arange(s)[:, None] + p   # causal over past + new
        scores = (q @ k.transpose(-1, -2)) * self.head_dim ** -0.5
        att = scores.masked_fill(~allowed, float("-inf")).softmax(-1)
        y = (att @ v).transpose(1, 2).reshape(b, s, WIDTH)
        x = x + self.proj(y)
        return x + self.mlp(self.ln2(x)), k, v


class TinyDecoder(nn.Module):
    max_positions = MAX_POS

    def __init__(self) -> None:
        super().__init__()
        self.tok = nn.Embedding(VOCAB, WIDTH)
        self.pos = nn.Embedding(MAX_POS, WIDTH)
        self.blocks = nn.ModuleList(Block(h) for h in HEADS)
        self.ln = nn.LayerNorm(WIDTH)

    def forward_with_cache(self, input_ids: torch.Tensor, *past: torch.Tensor) -> tuple[torch.Tensor, ...]:
        p = past[0].shape[2] if past else 0
        pos = torch.arange(input_ids.shape[1]) + p
        x = self.tok(input_ids) + self.pos(pos)[None]
        presents: list[torch.Tensor] = []
        for i, block in enumerate(self.blocks):
            x, k, v = block(x, (past[2 * i], past[2 * i + 1]) if past else None)
            presents += [k, v]
        return (self.ln(x) @ self.tok.weight.T, *presents)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.forward_with_cache(input_ids)[0]


def digit_tokens() -> np.ndarray:
    """sklearn's digits labels in file order, as token ids."""
    from sklearn.datasets import load_digits

    return load_digits().target.astype(np.int64) + TOKEN_OFFSET


@functools.cache
def _trained_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = TinyDecoder()
    seq = torch.from_numpy(digit_tokens()[:1500])
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(1)
    for _ in range(150):
        starts = torch.randint(0, len(seq) - 33, (32,), generator=gen)
        batch = torch.stack([seq[s:s + 33] for s in starts.tolist()])
        opt.zero_grad()
        logits = model(batch[:, :-1])
        nn.functional.cross_entropy(logits.reshape(-1, VOCAB), batch[:, 1:].reshape(-1)).backward()
        opt.step()
    torch.set_num_threads(threads)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def tiny_decoder() -> TinyDecoder:
    model = TinyDecoder()
    model.load_state_dict(_trained_state())
    return model.eval()


def prompts(n: int, length: int) -> np.ndarray:
    """``n`` held-out windows (after the training part) of ``length`` tokens: int64 [n, length]."""
    seq = digit_tokens()[1500:]
    starts = np.linspace(0, len(seq) - length - 1, n).astype(int)
    return np.stack([seq[s:s + length] for s in starts])
