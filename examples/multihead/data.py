"""scikit-learn's bundled digits (upsampled to 16x16) with three targets per image: the class, whether it is even,
and the ink in each quadrant of the 8x8 original (a regression target in [0, 1]).

Items are ``(image float32[1, 16, 16], target float32[6])`` with target ``[label, even, ink_tl, ink_tr, ink_bl,
ink_br]``: the user metric in ``metrics.py`` reads it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch.utils.data import Subset, TensorDataset

SEED = 0


def tensors() -> tuple[torch.Tensor, torch.Tensor]:
    digits = load_digits()
    img = torch.tensor(digits.images, dtype=torch.float32) / 16.0                 # (N, 8, 8) in [0, 1]
    label = torch.tensor(digits.target, dtype=torch.float32)
    quads = torch.stack([img[:, :4, :4], img[:, :4, 4:], img[:, 4:, :4], img[:, 4:, 4:]], 1).mean((2, 3))
    target = torch.cat([label[:, None], (label % 2 == 0).float()[:, None], quads], 1)
    x = F.interpolate(img[:, None], size=(16, 16), mode="bilinear", align_corners=False)
    return (x - 0.5) / 0.5, target


def splits() -> dict[str, TensorDataset | Subset]:
    x, t = tensors()
    tr, ev = train_test_split(range(len(t)), test_size=0.2, random_state=SEED, stratify=t[:, 0].numpy())
    train = TensorDataset(x[tr], t[tr])
    return {"train": train, "calib": Subset(train, range(128)), "eval": TensorDataset(x[ev], t[ev])}
