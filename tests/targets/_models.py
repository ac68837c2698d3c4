"""Tiny models shared by the backend tests: a conv+bn+relu+linear CNN and one that calls an op no backend lowers."""

from __future__ import annotations

import functools

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
                                      nn.Conv2d(8, 16, 3, stride=2, padding=1))
        self.pool = nn.AdaptiveAvgPool2d(2)  # keeps coarse position, so the class depends on where the blob is
        self.fc = nn.Linear(64, 10)

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


def blobs(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A blob on a noisy background; the label is its quadrant and whether it is large (8 classes of 10)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:SHAPE[2], 0:SHAPE[3]]
    x = np.empty((n, *SHAPE[1:]), np.float32)
    y = np.empty(n, np.int64)
    for i in range(n):
        cy, cx, r = rng.uniform(2, 14), rng.uniform(2, 14), rng.uniform(1.5, 4.5)
        x[i, 0] = 2 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r)) - 0.5 + 0.2 * rng.standard_normal(
            SHAPE[2:])
        y[i] = int(cy >= 8) * 2 + int(cx >= 8) + 4 * int(r >= 3)
    return x, y


def data(n: int, seed: int) -> np.ndarray:
    return blobs(n, seed)[0]


@functools.cache
def _trained_state() -> dict[str, torch.Tensor]:
    """A couple of seconds of training, so outputs have real margins like a deployed model (random weights leave
    near-ties that flip under any quantization and make INT8 checks meaningless)."""
    torch.manual_seed(0)
    model = TinyCNN()
    x, y = blobs(2048, seed=123)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny convs: one thread is fastest, and immune to a busy machine
    for step in range(200):
        idx = torch.randint(0, len(xt), (64,), generator=torch.Generator().manual_seed(step))
        opt.zero_grad()
        nn.functional.cross_entropy(model(xt[idx]), yt[idx]).backward()
        opt.step()
    torch.set_num_threads(threads)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def tiny_cnn() -> nn.Module:
    model = TinyCNN()
    model.load_state_dict(_trained_state())
    return model.eval()


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


def with_outlier_channel(model: nn.Module, k: float = 300.0) -> nn.Module:
    """The same function in float, hostile to per-tensor INT8: channel 0 of the first block's output is ``k`` times
    larger (its BN scale and shift times k, the next conv's weights for it divided by k), the range imbalance that
    BN folding and pruning leave in real networks (Nagel et al., "Data-Free Quantization", 2019). One activation
    scale for the whole tensor then rounds the other channels to almost nothing."""
    import copy

    out = copy.deepcopy(model)
    bn, conv = out.features[1], out.features[3]
    with torch.no_grad():
        bn.weight[0] *= k
        bn.bias[0] *= k
        conv.weight[:, 0] /= k
    return out.eval()
