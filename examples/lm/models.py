"""A small GPT-style decoder over the docstring corpus: the teacher (trained once, cached) and its student.

Pre-norm blocks, learned positions (a table of ``max_positions``), tied input/output embeddings, causal attention
written out as matmuls + a float mask + softmax (no fused SDPA), so torch.onnx (dynamo), OpenVINO and LiteRT all
export it and Torch-Pruning can trace it. The attention keeps its head count in ``num_heads`` / ``head_dim`` with
separate ``q_proj``/``k_proj``/``v_proj`` projections: the prune stage removes whole heads there and rewrites those
attributes (pipeline/stages/heads.py), so each layer may end with its own head count H_i.

The model protocol of task ``lm`` (LM_CONTRACT.md): ``forward(input_ids[B, T]) -> logits[B, T, V]``;
``forward_with_cache(input_ids[B, S], k_0, v_0, ..., k_{L-1}, v_{L-1})`` with each past ``[B, H_i, P, D_i]``
(P may be 0) returns ``(logits[B, S, V], k_0', v_0', ...)`` with the new positions appended; the new tokens sit at
positions P..P+S-1; ``max_positions``.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.recipe.trained import trained_once

CACHE = Path(os.environ.get("EDGEPIPE_EXAMPLES_CACHE", Path(__file__).with_name(".cache")))
VERSION = 1
MASKED = -1e4   # added to masked scores: exp() underflows to 0, yet small enough for an INT8 activation range


class Attention(nn.Module):
    """Causal multi-head self-attention over the new positions and an optional key/value past."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        width = self.num_heads * self.head_dim
        self.q_proj, self.k_proj, self.v_proj = nn.Linear(dim, width), nn.Linear(dim, width), nn.Linear(dim, width)
        self.out_proj = nn.Linear(width, dim)

    def forward(self, x: torch.Tensor, past_k: torch.Tensor | None = None,
                past_v: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, s, _ = x.shape

        def heads(y: torch.Tensor) -> torch.Tensor:
            return y.reshape(b, s, self.num_heads, self.head_dim).transpose(1, 2)

        q, k, v = heads(self.q_proj(x)), heads(self.k_proj(x)), heads(self.v_proj(x))
        if past_k is not None and past_v is not None:
            k, v = torch.cat([past_k, k], dim=2), torch.cat([past_v, v], dim=2)
        total = k.shape[2]
        # query i sits at position (total - s + i) and sees keys 0..that position
        q_pos = torch.arange(s, device=x.device)[:, None] + (total - s)
        k_pos = torch.arange(total, device=x.device)[None, :]
        bias = (k_pos > q_pos).to(x.dtype) * MASKED
        scores = q @ k.transpose(-2, -1) * (1.0 / math.sqrt(self.head_dim)) + bias
        y = torch.softmax(scores, dim=-1) @ v
        y = y.transpose(1, 2).reshape(b, s, self.num_heads * self.head_dim)
        return self.out_proj(y), k, v


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, hidden: int) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads)
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor, past_k: torch.Tensor | None = None,
                past_v: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        a, k, v = self.attn(self.norm1(x), past_k, past_v)
        x = x + a
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x)))), k, v


class Decoder(nn.Module):
    """Token + learned position embeddings, pre-norm blocks, a final norm, logits through the tied embedding."""

    def __init__(self, vocab: int, dim: int = 128, depth: int = 4, num_heads: int = 4, hidden: int = 384,
                 max_positions: int = 64) -> None:
        super().__init__()
        self.max_positions = max_positions
        self.embed = nn.Embedding(vocab, dim)
        self.pos = nn.Embedding(max_positions, dim)
        self.blocks = nn.ModuleList([Block(dim, num_heads, hidden) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab, bias=False)
        self.head.weight = self.embed.weight            # tied
        nn.init.normal_(self.embed.weight, std=0.02)
        nn.init.normal_(self.pos.weight, std=0.02)

    def _run(self, input_ids: torch.Tensor, past: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        s = input_ids.shape[1]
        start = past[0].shape[2] if past else 0
        positions = torch.arange(s, device=input_ids.device) + start
        x = self.embed(input_ids) + self.pos(positions)[None]
        present: list[torch.Tensor] = []
        for i, block in enumerate(self.blocks):
            x, k, v = block(x, past[2 * i] if past else None, past[2 * i + 1] if past else None)
            present += [k, v]
        return (self.head(self.norm(x)), *present)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self._run(input_ids, ())[0]

    def forward_with_cache(self, input_ids: torch.Tensor, *past: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if past and len(past) != 2 * len(self.blocks):
            raise ValueError(f"forward_with_cache: {len(past)} past tensors for {len(self.blocks)} layers "
                             f"(expected {2 * len(self.blocks)}: k_0, v_0, k_1, v_1, ...)")
        return self._run(input_ids, tuple(past))

    def empty_past(self, batch: int = 1) -> tuple[torch.Tensor, ...]:
        """The P = 0 past of this model (each layer's own head count and head size)."""
        out: list[torch.Tensor] = []
        for block in self.blocks:
            shape = (batch, block.attn.num_heads, 0, block.attn.head_dim)
            out += [torch.zeros(shape), torch.zeros(shape)]
        return tuple(out)


def vocab_size() -> tuple[int, str]:
    """(the tokenizer's vocabulary size, a digest of the text it was trained on): a teacher trained on another
    installation's text has another cache file."""
    import tokenizer

    tok, texts = tokenizer.load()
    return int(tok.get_vocab_size()), tokenizer.digest(texts)


def train(model: nn.Module, steps: int = 800, lr: float = 3e-3, batch: int = 32, seed: int = 0) -> nn.Module:
    """Next-token cross-entropy on the training windows: AdamW, linear warm-up then cosine decay, on one thread."""
    from data import splits

    data = splits()["train"]
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05, betas=(0.9, 0.95))
    warm = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: min(1.0, (i + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(i, steps) / steps)))
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, len(data), (batch,), generator=g)
        x, y = data.inputs[idx], data.targets[idx]
        opt.zero_grad(set_to_none=True)
        logits = model(x)
        F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1)).backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
    return model.eval()


TEACHER = {"dim": 128, "depth": 4, "num_heads": 4, "hidden": 384}
TEACHER_STEPS = 800


def trained_teacher() -> nn.Module:
    """The example's teacher (4 blocks of width 128, 4 heads): trained on first use and cached."""
    vocab, text = vocab_size()
    torch.manual_seed(0)
    return trained_once(Decoder(vocab, **TEACHER), CACHE / f"lm-teacher-v{VERSION}-{vocab}-{text}.pt",
                        lambda m: train(m, steps=TEACHER_STEPS), "the docstring language model (teacher)")


def student() -> nn.Module:
    """Half the teacher's depth (2 blocks), initialised from the teacher's embeddings and its blocks 0 and 2 (as
    DistilBERT starts from its teacher's layers), so logit KD recovers in a few epochs instead of from scratch."""
    teacher = trained_teacher()
    torch.manual_seed(0)
    first = teacher.blocks[0]
    s = Decoder(teacher.embed.num_embeddings, dim=teacher.embed.embedding_dim, depth=2,
                num_heads=first.attn.num_heads, hidden=first.fc1.out_features, max_positions=teacher.max_positions)
    state = {k: v for k, v in teacher.state_dict().items() if not k.startswith("blocks.")}
    for j, i in enumerate((0, 2)):
        state.update({f"blocks.{j}.{k}": v for k, v in teacher.blocks[i].state_dict().items()})
    s.load_state_dict(state)
    return s.eval()
