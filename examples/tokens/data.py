"""Digits as token sequences: each 8x8 image of scikit-learn's bundled ``load_digits`` read row by row is a sequence
of 64 tokens (pixel intensity 0..16 -> token ids 1..17; 0 is padding). A seeded share of the samples loses its last
one or two rows, padded, so ``attention_mask`` matters: the model must ignore what the mask hides.

Items are ``({"input_ids": int64[64], "attention_mask": int64[64]}, label)``: two named integer inputs.
"""

from __future__ import annotations

from typing import Any

import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch.utils.data import Dataset

SEQ = 64
SEED = 0


class TokenDigits(Dataset):
    def __init__(self, ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor) -> None:
        self.ids, self.mask, self.labels = ids, mask, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        return {"input_ids": self.ids[i], "attention_mask": self.mask[i]}, self.labels[i]


def tensors() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    digits = load_digits()
    ids = torch.tensor(digits.images.reshape(len(digits.images), SEQ), dtype=torch.int64) + 1
    g = torch.Generator().manual_seed(SEED)
    cut = torch.randint(0, 3, (len(ids),), generator=g) * 8          # drop 0, 1 or 2 trailing rows
    pos = torch.arange(SEQ)[None, :]
    mask = (pos < (SEQ - cut)[:, None]).to(torch.int64)
    return ids * mask, mask, torch.tensor(digits.target, dtype=torch.int64)


def splits() -> dict[str, Any]:
    """train 80% / eval 20%, stratified; calib = 128 training samples (no eval leakage)."""
    ids, mask, y = tensors()
    tr, ev = train_test_split(range(len(y)), test_size=0.2, random_state=SEED, stratify=y.numpy())
    train = TokenDigits(ids[tr], mask[tr], y[tr])
    return {"train": train, "calib": TokenDigits(ids[tr][:128], mask[tr][:128], y[tr][:128]),
            "eval": TokenDigits(ids[ev], mask[ev], y[ev])}
