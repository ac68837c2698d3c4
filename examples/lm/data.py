"""Next-token windows over the docstring corpus (tokenizer.py): train / calib / eval.

The documents are encoded, each followed by the end-of-text id, and joined into two id streams: every tenth
document is held out for eval, the others train. A stream is cut in non-overlapping windows of ``T + 1`` ids; a
window is ``(input_ids[T], targets[T])`` with ``targets`` the inputs shifted by one (the next id at every position),
both int64. No eval document is ever trained on; calib is the first 128 training windows.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import Dataset

T = 64
CALIB = 128


class Windows(Dataset):
    """``(input_ids[T], targets[T])`` int64 items cut from ``stream``."""

    def __init__(self, stream: torch.Tensor, seq: int = T) -> None:
        n = (len(stream) - 1) // seq
        self.inputs = stream[: n * seq].reshape(n, seq).contiguous()
        self.targets = stream[1: n * seq + 1].reshape(n, seq).contiguous()

    def __len__(self) -> int:
        return len(self.inputs)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.inputs[i], self.targets[i]


EVAL_EVERY = 10   # every tenth document is held out for eval (the same mix of modules as training)


def streams(budget: int | None = None) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(training ids, eval ids, vocabulary size): every document's ids followed by end-of-text, joined; documents
    ``i % EVAL_EVERY == EVAL_EVERY - 1`` form the eval stream, the rest the training stream."""
    import tokenizer

    tok, texts = tokenizer.load() if budget is None else tokenizer.load(budget)
    eot = tok.token_to_id(tokenizer.EOT)
    train: list[int] = []
    held: list[int] = []
    for i, enc in enumerate(tok.encode_batch(texts)):
        part = held if i % EVAL_EVERY == EVAL_EVERY - 1 else train
        part += enc.ids
        part.append(eot)
    return torch.tensor(train, dtype=torch.int64), torch.tensor(held, dtype=torch.int64), tok.get_vocab_size()


def splits(budget: int | None = None, seq: int = T) -> dict[str, Any]:
    """train / calib / eval windows (eval: held-out documents; calib: the first training windows)."""
    train, held, _ = streams(budget)
    return {"train": Windows(train, seq), "calib": Windows(train[: CALIB * seq + 1], seq),
            "eval": Windows(held, seq)}
