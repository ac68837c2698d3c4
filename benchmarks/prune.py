"""Structured pruning on ResNet-18 and MobileNetV2 shapes: MACs, params and ONNX Runtime FP32 latency ratios.

Random weights (latency and size do not depend on them). Latency: batch 1, 224x224, ``--threads`` intra-op threads,
every variant of a model measured in interleaved rounds against its unpruned parent in the same process, so machine
load drifts hit all of them alike. Usage: ``python benchmarks/prune.py [--iterations 200] [--threads 2]``.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import time

import onnxruntime
import torch

from benchmarks.zoo import mobilenet_v2, resnet18
from pipeline.phases.latency import interleaved_onnx_latency
from pipeline.stages.common import footprint
from pipeline.stages.prune import structured_prune

VARIANTS = {
    "resnet18": (resnet18, [(0.3, 8), (0.5, 8)]),
    "mobilenet_v2": (mobilenet_v2, [(0.3, None), (0.3, 8), (0.5, None), (0.5, 8)]),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iterations", type=int, default=400, help="timed inferences per variant, split in --rounds")
    ap.add_argument("--rounds", type=int, default=40, help="interleaved rounds (more rounds: less drift bias)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--size", type=int, default=224)
    args = ap.parse_args()
    torch.manual_seed(0)
    x = torch.randn(1, 3, args.size, args.size)
    print(f"# torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, {platform.machine()}, "
          f"threads={args.threads}, batch 1, {args.size}x{args.size}, n={args.iterations} per variant in {args.rounds} "
          f"interleaved rounds, load average {os.getloadavg()[0]:.2f} at start")
    print(f"{'model':<14}{'ratio':>6}{'round_to':>9}{'params':>11}{'MACs':>14}{'p50 ms':>9}{'p90 ms':>9}"
          f"{'x params':>9}{'x MACs':>8}{'x p50':>7}")
    for name, (factory, variants) in VARIANTS.items():
        parent = factory().eval()
        models = {"parent": parent}
        for ratio, round_to in variants:
            models[f"{ratio}/{round_to}"] = structured_prune(copy.deepcopy(parent), x, ratio=ratio, round_to=round_to)
        start = time.perf_counter()
        stats = interleaved_onnx_latency(models, x, iterations=args.iterations, threads=args.threads,
                                         rounds=args.rounds)
        p0, m0 = footprint(parent, x)
        for label, model in models.items():
            p, m = footprint(model, x)
            ratio, _, round_to = label.partition("/")
            st = stats[label]
            print(f"{name:<14}{ratio if label != 'parent' else '-':>6}{round_to or '-':>9}{p:>11,}{m:>14,}"
                  f"{st['p50']:>9.3f}{st['p90']:>9.3f}{p / p0:>9.2f}{m / m0:>8.2f}"
                  f"{st['p50'] / stats['parent']['p50']:>7.2f}")
        print(f"# {name}: measured in {time.perf_counter() - start:.0f}s, load average {os.getloadavg()[0]:.2f} at end")


if __name__ == "__main__":
    main()
