"""Tiny models shared by the backend tests: a conv+bn+relu+linear CNN and one that calls an op no backend lowers."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

SHAPE = (1, 1, 16, 16)


@torch.library.custom_op("edgepipe_test::scramble", mutates_args=())
def scramble(x: torch.Tensor) -> torch.Tensor:
    """A custom op registered with torch.library: it runs in PyTorch but has no ONNX, OpenVINO or TFLite lowering."""
    return x.flip(-1).clone()


@scramble.register_fake
def _(x: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(x)


class Scramble(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return scramble(x)


class TinyCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                                      nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


class WithCustomOp(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.mix = Scramble()
        self.fc = nn.Linear(4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.mix(self.conv(x)).mean((2, 3)))


def tiny_cnn() -> nn.Module:
    torch.manual_seed(0)
    model = TinyCNN()
    with torch.no_grad():  # non-trivial batch-norm statistics, so folding them is actually tested
        bn = model.features[1]
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.uniform_(0.5, 1.5)
    return model.eval()


def data(n: int, seed: int) -> np.ndarray:
    """Structured inputs (blobs plus noise) rather than pure noise, so top-1 is not a coin toss."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:SHAPE[2], 0:SHAPE[3]]
    out = np.empty((n, *SHAPE[1:]), np.float32)
    for i in range(n):
        cy, cx, r = rng.uniform(3, 13), rng.uniform(3, 13), rng.uniform(2, 5)
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
        out[i, 0] = 2 * blob - 0.5 + 0.2 * rng.standard_normal(SHAPE[2:])
    return out


def reference(model: nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


def example() -> tuple[torch.Tensor, ...]:
    return (torch.zeros(SHAPE),)


def corrupt_copy(path: str, dest_dir, *, truncate: bool = False, needle: bytes | None = None,
                 flip_at: float = 0.5, n: int = 64) -> str:
    """A copy of an artifact file with bytes inverted (at ``needle``, e.g. a weight tensor's raw bytes, or at a relative
    offset), or cut in half; the copy keeps the file name so the runtime picks the same loader."""
    import shutil
    from pathlib import Path

    src = Path(path)
    data = bytearray(src.read_bytes())
    if truncate:
        data = data[: len(data) // 2]
    else:
        at = data.find(needle) if needle else int(len(data) * flip_at)
        assert at >= 0, "the weights to corrupt were not found in the file"
        for i in range(at, min(at + (len(needle) if needle else n), len(data))):
            data[i] ^= 0xFF
    out = Path(dest_dir) / src.name
    out.write_bytes(bytes(data))
    for sibling in (src.with_suffix(".bin"),):  # OpenVINO's weights travel with the .xml
        if sibling.exists() and not (Path(dest_dir) / sibling.name).exists():
            shutil.copy(sibling, Path(dest_dir) / sibling.name)
    return str(out)


def moved(artifact, new_path: str):
    """The same artifact record (same sha256) pointing at a copy: what validate sees after the file changed."""
    from pathlib import Path

    from targets.artifact import Artifact

    d = artifact.to_dict()
    files = [str(Path(new_path).with_name(Path(f).name)) for f in d["files"]]
    return Artifact.from_dict({**d, "path": new_path, "files": files})
