"""scikit-learn's bundled ``load_digits`` (1,797 8x8 images), upsampled, with a fixed split.

Bundled with scikit-learn, so the demo and the tests never touch the network. ``demo_splits`` (48x48) feeds the demo's
teacher, big enough that compression pays on a 2-core CPU; ``splits`` (32x32) feeds the tiny recipe the tests use.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch.utils.data import Subset, TensorDataset

SIZE = 32
DEMO_SIZE = 48
SEED = 0


def tensors(size: int = SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0        # (N, 1, 8, 8) in [0, 1]
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    x = (x - 0.5) / 0.5
    y = torch.tensor(digits.target, dtype=torch.long)
    return x, y


def splits(size: int = SIZE) -> dict[str, TensorDataset | Subset]:
    """train 80% / eval 20%, stratified with a fixed seed; calib = 256 training images (no eval leakage)."""
    x, y = tensors(size)
    idx_train, idx_eval = train_test_split(range(len(y)), test_size=0.2, random_state=SEED, stratify=y.numpy())
    train = TensorDataset(x[idx_train], y[idx_train])
    return {"train": train, "calib": Subset(train, range(256)), "eval": TensorDataset(x[idx_eval], y[idx_eval])}


def demo_splits() -> dict[str, TensorDataset | Subset]:
    """The same split at 48x48: the demo's input size."""
    return splits(DEMO_SIZE)
