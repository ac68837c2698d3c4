"""Samples/s of one knowledge-distillation epoch on the CPU and, where present, the GPU, measured in one run.

A ResNet-18-shaped student (11.2M params, 10 classes) learns from a ResNet-18 teacher on the real sklearn digits,
upsampled to 3x32x32 and marked as augmented data, so the teacher runs on every batch as it does for a real training
set with transforms. Both devices go through the same engine the stages use (pipeline/stages/train.py), after a
two-step warm-up each. Usage: ``python benchmarks/train_speed.py [--samples 1024] [--batch-size 128] [--amp bf16]``.
Figures on a shared machine are contended; quote them with the machine and its load.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.zoo import ResNet18
from pipeline.stages.common import kd_loss
from pipeline.stages.loading import seed_everything
from pipeline.stages.train import TrainConfig, fit, settings_for


class Digits3x32(Dataset):
    """sklearn's digits as 3x32x32 images; ``deterministic = False`` stands for a training set with transforms."""

    deterministic = False

    def __init__(self, n: int) -> None:
        from sklearn.datasets import load_digits

        d = load_digits()
        x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
        x = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False).repeat(1, 3, 1, 1)
        reps = -(-n // len(x))
        self.x, self.y = x.repeat(reps, 1, 1, 1)[:n], torch.tensor(d.target).repeat(reps)[:n]

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return (self.x[i] - 0.5) / 0.5, self.y[i]


def one_epoch(device: str, data: Dataset, batch_size: int, amp: str, workers: int) -> dict[str, Any]:
    settings = dataclasses.replace(settings_for(TrainConfig(device=device, amp=amp, num_workers=workers), None),
                                   batch_size=batch_size, progress=False)
    seed_everything(0)
    teacher, student = ResNet18(10, width=64).eval(), ResNet18(10, width=64)

    def loss(out: torch.Tensor, t_out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return kd_loss(out, t_out, y, temperature=4.0, alpha=0.7)

    def opt(params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
        return torch.optim.SGD(params, lr=0.05, momentum=0.9)

    warm = torch.utils.data.Subset(data, range(2 * batch_size))
    warm.deterministic = False  # type: ignore[attr-defined]
    kw = {"make_optimizer": opt, "settings": settings, "teacher": teacher}
    fit(student, warm, loss, epochs=1, **kw)
    if settings.device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fit(student, data, loss, epochs=1, **kw)      # fit returns after copying the student back to the CPU
    seconds = time.perf_counter() - start
    steps = len(data) // batch_size
    return {"device": str(settings.device), "seconds": seconds, "samples_per_s": steps * batch_size / seconds,
            "ms_per_step": seconds / steps * 1e3}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=1024, help="samples in the timed epoch")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--amp", choices=["none", "bf16", "fp16"], default="none", help="AMP on the GPU run")
    ap.add_argument("--workers", type=int, default=0, help="DataLoader workers")
    args = ap.parse_args()
    data = Digits3x32(args.samples)
    print(f"KD epoch, ResNet-18 student + ResNet-18 teacher (10 classes, 3x32x32), {args.samples} samples, batch "
          f"{args.batch_size}; torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads, load {os.getloadavg()[0]:.1f}")
    cpu = one_epoch("cpu", data, args.batch_size, "none", args.workers)
    print(f"  cpu   fp32        {cpu['samples_per_s']:9.1f} samples/s  {cpu['ms_per_step']:8.1f} ms/step  "
          f"{cpu['seconds']:.1f}s")
    if not torch.cuda.is_available():
        print("  cuda  -           no CUDA GPU here: GPU/CPU ratio not measured")
        return
    gpu = one_epoch("cuda", data, args.batch_size, args.amp, args.workers)
    print(f"  cuda  {args.amp:<11} {gpu['samples_per_s']:9.1f} samples/s  {gpu['ms_per_step']:8.1f} ms/step  "
          f"{gpu['seconds']:.1f}s  ({torch.cuda.get_device_name()})")
    print(f"  GPU/CPU ratio: {gpu['samples_per_s'] / cpu['samples_per_s']:.1f}x")


if __name__ == "__main__":
    main()
