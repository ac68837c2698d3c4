"""A detection data set built from scikit-learn's bundled digits: 64x64 canvases with 1-4 digits each, every digit
rescaled (12-24 px), placed without overlap, with a tight box around its ink and its class. No download.

The digits are split first (the same stratified 80/20 split as the classification demo), so no eval canvas holds a
digit image seen in training. Items are ``(image (1, 64, 64) float32 in [-1, 1], boxes (M, 5) float32)`` with rows
``x1, y1, x2, y2, class`` in pixels -- the target layout ``task.metric: map50_95`` reads.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Subset

CANVAS = 64
NUM_CLASSES = 10
SIZES = (12, 24)          # digit side in pixels, inclusive
MAX_DIGITS = 4
INK = 0.25                # a pixel is ink above this fraction of full intensity (tight boxes)
SEED = 0


class Canvases(Dataset):
    """Pre-rendered canvases (rendering 2,000 of them takes well under a second)."""

    def __init__(self, images: torch.Tensor, boxes: list[torch.Tensor]) -> None:
        self.images = images
        self.boxes = boxes

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[i], self.boxes[i]


def _digit_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = digits.images.astype(np.float32) / 16.0
    y = digits.target.astype(np.int64)
    tr, ev = train_test_split(np.arange(len(y)), test_size=0.2, random_state=SEED, stratify=y)
    return x[tr], y[tr], x[ev], y[ev]


def _place(rng: np.random.Generator, sizes: list[int]) -> list[tuple[int, int]] | None:
    """Top-left corners for squares of the given sizes, no two overlapping (1 px gap), or None after 50 tries."""
    spots: list[tuple[int, int, int]] = []
    for s in sizes:
        for _ in range(50):
            x, y = int(rng.integers(0, CANVAS - s + 1)), int(rng.integers(0, CANVAS - s + 1))
            if all(x + s + 1 <= ox or ox + os_ + 1 <= x or y + s + 1 <= oy or oy + os_ + 1 <= y
                   for ox, oy, os_ in spots):
                spots.append((x, y, s))
                break
        else:
            return None
    return [(x, y) for x, y, _ in spots]


def _resize_matrix(size: int) -> np.ndarray:
    """(8, size) weights of a 1-D bilinear resize (align_corners=False); 2-D bilinear is separable, so
    ``m.T @ img @ m`` equals ``F.interpolate(..., mode="bilinear")`` at a fraction of the per-call cost."""
    eye = torch.eye(8)[None]                                                      # (1, 8 channels, 8 positions)
    return F.interpolate(eye, size=size, mode="linear", align_corners=False)[0].numpy()


def render(digit_images: np.ndarray, labels: np.ndarray, count: int, seed: int) -> Canvases:
    """``count`` canvases drawn from the given 8x8 digits (values in [0, 1]) with a fixed seed."""
    rng = np.random.default_rng(seed)
    resize = {s: _resize_matrix(s) for s in range(SIZES[0], SIZES[1] + 1)}
    images = np.zeros((count, 1, CANVAS, CANVAS), dtype=np.float32)
    boxes: list[torch.Tensor] = []
    for i in range(count):
        while True:
            n = int(rng.integers(1, MAX_DIGITS + 1))
            sizes = [int(rng.integers(SIZES[0], SIZES[1] + 1)) for _ in range(n)]
            corners = _place(rng, sizes)
            if corners is not None:
                break
        rows = []
        for (x, y), s in zip(corners, sizes, strict=True):
            k = int(rng.integers(0, len(labels)))
            patch = resize[s].T @ digit_images[k] @ resize[s]
            images[i, 0, y:y + s, x:x + s] = np.maximum(images[i, 0, y:y + s, x:x + s], patch)
            ys, xs = np.nonzero(patch > INK)
            rows.append([x + xs.min(), y + ys.min(), x + xs.max() + 1, y + ys.max() + 1, labels[k]])
        boxes.append(torch.tensor(rows, dtype=torch.float32))
    return Canvases(torch.from_numpy(images * 2 - 1), boxes)


def splits(train: int = 1500, eval: int = 400) -> dict[str, Any]:
    """train / eval canvases from disjoint digit images; calib = 256 training canvases (no eval leakage)."""
    xtr, ytr, xev, yev = _digit_split()
    train_set = render(xtr, ytr, train, seed=SEED + 1)
    return {"train": train_set, "calib": Subset(train_set, range(min(256, train))),
            "eval": render(xev, yev, eval, seed=SEED + 2)}
