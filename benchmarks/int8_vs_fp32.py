"""INT8 / FP32 latency per backend, and which ops each INT8 artifact's runtime left in float.

For ResNet-18- and MobileNetV2-shaped models (random weights, BN statistics from one pass over the inputs, 224x224)
and the SE/depthwise/concat model trained on digits (tests/fixtures/se_digits, 32x32): export fp32 and int8 on each
backend with our adapters, time them interleaved in one process (benchmarks/backends.py's rules: batch 1, same
threads, rotating order, busy-wait gap), and print INT8 p50 / FP32 p50 of the same backend, the size ratio, and the
op report (targets/op_report.py) of the INT8 artifact. A ratio above 1.00 is an INT8 artifact the pipeline's INT8
guard would flag; the closing notes say why it happens where it does.

    python benchmarks/int8_vs_fp32.py [--models resnet18,mobilenet_v2,se_digits] [--backends onnx,openvino,tflite]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.backends import _interleaved, _versions, _with_calibrated_batchnorm
from benchmarks.zoo import ZOO
from targets import get_exporter
from targets.errors import EdgeError
from targets.export_config import ExportConfig
from targets.op_report import float_ops
from targets.runner import bench


def _model(name: str, n: int) -> tuple[torch.nn.Module, np.ndarray]:
    if name == "se_digits":
        from tests.fixtures.se_digits.data import splits
        from tests.fixtures.se_digits.models import trained

        calib = splits()["calib"]
        return trained(), torch.stack([calib[i][0] for i in range(min(n, len(calib)))]).numpy()
    calib = np.random.default_rng(0).standard_normal((n, 3, 224, 224)).astype(np.float32)
    torch.manual_seed(0)
    return _with_calibrated_batchnorm(ZOO[name](), calib), calib


def run_model(name: str, backends: list[str], args: argparse.Namespace) -> list[dict[str, Any]]:
    model, calib = _model(name, args.calib)
    example = (torch.from_numpy(calib[:1]),)
    print(f"\n== {name}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix=f"int8-{name}-") as tmp:
        arts = {}
        for fam in backends:
            for prec in ("fp32", "int8"):
                t0 = time.perf_counter()
                try:
                    arts[fam, prec] = get_exporter(fam)(model, example, calib, ExportConfig(precision=prec, name=name),
                                                        Path(tmp) / fam)
                except EdgeError as exc:
                    print(f"  {fam}-{prec}: skipped ({exc})", flush=True)
                    continue
                print(f"  exported {fam}-{prec} in {time.perf_counter() - t0:.1f}s", flush=True)
        sessions = {f"{f}-{p}": bench.load(a.path, a.backend, args.threads) for (f, p), a in arts.items()}
        samples = _interleaved({c: s.run for c, s in sessions.items()}, calib, args.rounds, args.iters, args.warmup,
                               2, args.gap)
        for fam in backends:
            if (fam, "fp32") not in arts or (fam, "int8") not in arts:
                continue
            f32, i8 = np.median(samples[f"{fam}-fp32"]), np.median(samples[f"{fam}-int8"])
            ops = float_ops(arts[fam, "int8"].path, fam)
            rows.append({"model": name, "backend": fam, "fp32": f32, "int8": i8, "ratio": i8 / f32,
                         "size": arts[fam, "int8"].bytes / arts[fam, "fp32"].bytes, "ops": ops,
                         "n": len(samples[f"{fam}-int8"])})
    return rows


NOTES = """
Why INT8 can be slower than FP32 here, and what the pipeline does about it:
- Tiny models (the SE/digits net: ~0.1 ms): the work per op is so small that every QuantizeLinear/DequantizeLinear
  boundary and every op left in float between them (ReduceMean of the SE squeeze, Sigmoid/Mul of the gate, Concat
  scales) costs as much as the integer convolution saves. The guard flags it (summary `int8_guard`, table, report)
  with the op list, and the release keeps the faster FP32 parent of equal metric.
- OpenVINO on x86 runs many small depthwise and 1x1 convolutions in f32 ("Convolution ... in float") when NNCF left
  them unquantized or the CPU plugin has no int8 kernel for the shape; the op report names them.
- LiteRT full-integer models on x86: XNNPACK's QS8 kernels are fast for big convolutions (ResNet-18) but a model
  of tiny ops pays per-op dispatch; where the ratio is above 1 the FP32 artifact is the one to ship.
Nothing is tuned per model here: these are the pipeline's default INT8 schemes (ORT U8S8 QDQ per target CPU, NNCF
performance preset, LiteRT PT2E symmetric per-channel).
"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="resnet18,mobilenet_v2,se_digits")
    ap.add_argument("--backends", default="onnx,openvino,tflite")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--gap", type=float, default=0.1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--calib", type=int, default=32)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"host: {platform.machine()} cpus={os.cpu_count()} threads={args.threads} batch=1; "
          f"rounds={args.rounds} x iters={args.iters} interleaved")
    print("versions:", _versions())
    load_before = (bench.device_state().get("loadavg") or [float("nan")])[0]
    rows = []
    for name in [m for m in args.models.split(",") if m]:
        rows += run_model(name, [b for b in args.backends.split(",") if b], args)
    load_after = (bench.device_state().get("loadavg") or [float("nan")])[0]
    hdr = (f"{'model':<13}{'backend':<10}{'n':>5}{'fp32 ms':>9}{'int8 ms':>9}{'int8/fp32':>10}{'size':>7}"
           "  ops left in float")
    print("\n" + hdr + "\n" + "-" * len(hdr))
    for r in rows:
        flag = "  <- SLOWER" if r["ratio"] > 1 else ""
        print(f"{r['model']:<13}{r['backend']:<10}{r['n']:>5}{r['fp32']:>9.3f}{r['int8']:>9.3f}{r['ratio']:>10.3f}"
              f"{r['size']:>7.2f}  {r['ops']['text']}{flag}")
    print(f"\nloadavg(1m) before {load_before:.2f}, after {load_after:.2f} on {os.cpu_count()} cpus"
          + (" -- CONTENDED: ratios are fairer than absolute times (interleaved), rerun on a quiet machine"
             if max(load_before, load_after) > (os.cpu_count() or 1) else ""))
    print(NOTES)
    return 0


if __name__ == "__main__":
    sys.exit(main())
