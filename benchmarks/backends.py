"""Latency and size of every backend's artifacts on this host, against ONNX Runtime FP32 (`make bench-perf`).

One process, batch 1, the same thread count for every runtime, contenders interleaved round by round (the order
rotates each round) so drift in clocks or background load hits them all alike. Before each contender's turn the
process busy-waits ``--gap`` seconds: ONNX Runtime's idle worker threads keep spinning on a core after a run, and on
this 2-core host the pool left spinning by one session (worst after the slow ``quantize_dynamic`` model) took a core
from the next contender; it made onnx-int8 look 0.54x instead of 0.34x of FP32 and inflated the FP32 baseline's p90
threefold. A 50 ms gap removed it. Besides our adapters it runs the choices a user would make without them: ORT
``quantize_dynamic`` and ORT ``quantize_static`` with its defaults. Random weights are fine for speed and size;
calibration uses a few dozen random inputs.

    python benchmarks/backends.py [--models resnet18,mobilenet_v2] [--rounds 20] [--iters 10] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.zoo import ZOO
from targets import get_exporter
from targets.artifact import Artifact
from targets.errors import EdgeError
from targets.export_config import ExportConfig
from targets.runner import bench

OURS = ("onnx-fp32", "onnx-fp16", "onnx-int8", "openvino-fp32", "openvino-fp16", "openvino-int8", "tflite-fp32",
        "tflite-fp16", "tflite-int8")
NAIVE = ("ort-dynamic", "ort-static-defaults")
DEFAULT = ("onnx-fp32", "onnx-int8", "openvino-fp32", "openvino-int8", "tflite-fp32", "tflite-int8", *NAIVE)


def _naive(kind: str, fp32: Artifact, calib: np.ndarray, out_dir: Path) -> Artifact:
    """What a user gets from ORT's own entry points with default arguments."""
    from onnxruntime.quantization import quantize_dynamic, quantize_static

    from targets._export_common import calib_samples
    from targets.export_onnx import _CalibReader

    out = out_dir / f"naive.{kind}.onnx"
    if kind == "ort-dynamic":
        quantize_dynamic(fp32.path, str(out))
    else:
        quantize_static(fp32.path, str(out), _CalibReader(calib_samples(calib, ["input"], len(calib))))
    return Artifact.from_files(out, backend="onnx", precision="int8", produced_by=kind)


def _export_all(name: str, model: torch.nn.Module, contenders: list[str], calib: np.ndarray,
                out_dir: Path) -> dict[str, tuple[Artifact, float]]:
    example = (torch.from_numpy(calib[:1]),)
    arts: dict[str, tuple[Artifact, float]] = {}
    for c in contenders:
        if c in NAIVE:
            continue
        family, precision = c.split("-")
        t0 = time.perf_counter()
        try:
            art = get_exporter(family)(model, example, calib, ExportConfig(precision=precision, name=name), out_dir)
        except EdgeError as exc:
            print(f"  {c}: skipped ({exc})", flush=True)
            continue
        arts[c] = (art, time.perf_counter() - t0)
        print(f"  exported {c} in {arts[c][1]:.1f}s ({art.bytes / 1e6:.2f} MB)", flush=True)
    if "onnx-fp32" in arts:
        for c in contenders:
            if c in NAIVE:
                t0 = time.perf_counter()
                arts[c] = (_naive(c, arts["onnx-fp32"][0], calib, out_dir), time.perf_counter() - t0)
    return arts


def _with_calibrated_batchnorm(model: torch.nn.Module, calib: np.ndarray) -> torch.nn.Module:
    """Random weights with default BN statistics saturate deep activations (ReLU6 pins MobileNetV2 at 6), leaving
    near-constant logits where top-1 means nothing; one pass of BN statistics over the inputs, as a trained network
    has, keeps activations in range. Speed and size do not depend on it, the agreement column does."""
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the pass
    model.train()
    with torch.no_grad():
        for i in range(0, len(calib), 8):
            model(torch.from_numpy(calib[i:i + 8]))
    return model.eval()


def _busy_wait(seconds: float) -> None:
    """Wait without sleeping: an idle vCPU is descheduled by the hypervisor and the first runs after a sleep pay for
    waking it (measured: MobileNetV2 tflite-int8 went from 1.2 to 2.0 ms p50 behind a 100 ms sleep)."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def _cpu_isa() -> str:
    """The CPU model and the SIMD extensions INT8 speed depends on. The INT8/FP32 ratio is a property of the ISA as
    much as of the exporters: without VNNI (AVX512-VNNI or AVX-VNNI) x86 multiplies u8*s8 with ``vpmaddubsw`` at
    about twice FP32 throughput at best, so figures from hosts with different extensions are not comparable (the
    same commit measured 0.294x on an AVX-512 host and 0.54x on an AVX2-only one)."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and ":" in line:
                model = line.split(":", 1)[1].strip()
            elif line.startswith(("flags", "Features")) and ":" in line:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "asimd", "asimddp", "i8mm")
    have = [f for f in wanted if f in flags]
    return f"{model}; int8-relevant extensions: {', '.join(have) or 'none detected'}"


def _interleaved(runs: dict[str, Callable[[np.ndarray], Any]], inputs: np.ndarray, rounds: int, iters: int,
                 warmup: int, settle: int = 2, gap: float = 0.1) -> dict[str, list[float]]:
    names = list(runs)
    for n in names:
        for i in range(warmup):
            runs[n](inputs[i % len(inputs)][None])
    samples: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for n in order:
            fn = runs[n]
            _busy_wait(gap)  # the previous runtime's spinning worker threads go idle and give the cores back
            for i in range(settle):  # untimed: brings this runtime's threads and caches back
                fn(inputs[i % len(inputs)][None])
            for i in range(iters):
                x = inputs[(r * iters + i) % len(inputs)][None]
                t0 = time.perf_counter_ns()
                fn(x)
                samples[n].append((time.perf_counter_ns() - t0) / 1e6)
    return samples


def _versions() -> str:
    out = [f"python {platform.python_version()}", f"torch {torch.__version__}", f"numpy {np.__version__}"]
    for mod, attr in (("onnxruntime", "__version__"), ("openvino", "get_version"), ("nncf", "__version__"),
                      ("litert_torch", "__version__")):
        try:
            m = __import__(mod)
            v = getattr(m, attr)
            out.append(f"{mod} {v() if callable(v) else v}")
        except ImportError:
            out.append(f"{mod} -")
    out.append("ai_edge_litert " + bench.tflite_interpreter()[2])
    return ", ".join(out)


def run_model(name: str, contenders: list[str], args: argparse.Namespace) -> list[dict[str, Any]]:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    calib = rng.standard_normal((args.calib, 3, 224, 224)).astype(np.float32)
    model = _with_calibrated_batchnorm(ZOO[name](), calib)
    with torch.no_grad():
        ref = model(torch.from_numpy(calib[:args.check])).numpy()
    print(f"\n== {name}: exporting {len(contenders)} contenders", flush=True)
    with tempfile.TemporaryDirectory(prefix=f"bench-{name}-") as tmp:
        arts = _export_all(name, model, contenders, calib, Path(tmp))
        sessions = {c: bench.load(a.path, a.backend, args.threads) for c, (a, _) in arts.items()}
        agree = {}
        for c, s in sessions.items():
            out = bench.predict(s, calib[:args.check])[0]   # predict returns every output; logits first
            agree[c] = float((out.argmax(1) == ref.argmax(1)).mean())
        samples = _interleaved({c: s.run for c, s in sessions.items()}, calib, args.rounds, args.iters, args.warmup,
                               args.settle, args.gap)
    base = float(np.percentile(samples["onnx-fp32"], 50)) if "onnx-fp32" in samples else float("nan")
    rows = []
    for c, (a, secs) in arts.items():
        p50, p90, p99 = np.percentile(samples[c], [50, 90, 99])
        fam = "onnx" if c in NAIVE else a.backend
        fp32 = arts.get(f"{fam}-fp32")
        rows.append({"model": name, "contender": c, "n": len(samples[c]), "p50": p50, "p90": p90, "p99": p99,
                     "ratio": p50 / base, "mb": a.bytes / 1e6, "size_ratio": a.bytes / fp32[0].bytes if fp32 else None,
                     "top1_agree": agree[c], "export_s": secs,
                     "scheme": (a.metadata.get("int8") or {}).get("why", "")})
    return rows


# The targets set for this project's 2-core x86 CI host (issue 4): latency as a fraction of ORT FP32 p50, INT8 file
# size as a fraction of the same backend's FP32 file. Printed as met/missed next to what was measured, never enforced.
LATENCY_TARGETS = {("resnet18", "best-int8"): 0.30, ("resnet18", "onnx-int8"): 0.36,
                   ("resnet18", "tflite-int8"): 0.42, ("mobilenet_v2", "best-int8"): 0.45}
SIZE_TARGET = 0.26


def check_targets(rows: list[dict[str, Any]]) -> list[str]:
    lines = []
    for model in dict.fromkeys(r["model"] for r in rows):
        ours = {r["contender"]: r for r in rows if r["model"] == model and r["contender"] in OURS}
        int8 = {c: r for c, r in ours.items() if c.endswith("-int8")}
        if not int8:
            continue
        best = min(int8, key=lambda c: int8[c]["ratio"])
        for (m, what), limit in LATENCY_TARGETS.items():
            row = int8[best] if what == "best-int8" else int8.get(what)
            if m == model and row is not None:
                label = f"best INT8 ({best})" if what == "best-int8" else what
                verdict = "met" if row["ratio"] <= limit else "MISSED"
                lines.append(f"{model:<13}{label + ' latency':<34}{row['ratio']:>7.3f}x  target <= {limit:.2f}x  "
                             f"{verdict}")
        for c, r in int8.items():
            if r["size_ratio"] is not None:
                verdict = "met" if r["size_ratio"] <= SIZE_TARGET else "MISSED"
                lines.append(f"{model:<13}{c + ' size':<34}{r['size_ratio']:>7.3f}x  target <= {SIZE_TARGET:.2f}x  "
                             f"{verdict}")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="resnet18,mobilenet_v2")
    ap.add_argument("--contenders", default=",".join(DEFAULT), help=f"any of {', '.join(OURS + NAIVE)}")
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--iters", type=int, default=10, help="timed runs per contender per round")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--settle", type=int, default=2, help="untimed runs each time a contender's turn starts")
    ap.add_argument("--gap", type=float, default=0.1,
                    help="seconds of sleep before each contender's turn, so spinning thread pools go idle")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--calib", type=int, default=32, help="calibration inputs (random normal, 3x224x224)")
    ap.add_argument("--check", type=int, default=16, help="inputs used for top-1 agreement with PyTorch")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    contenders = [c for c in args.contenders.split(",") if c]
    if "onnx-fp32" not in contenders:
        contenders.insert(0, "onnx-fp32")  # the baseline every ratio is against
    print(f"host: {platform.machine()} {platform.processor() or ''} cpus={os.cpu_count()} "
          f"threads={args.threads} batch=1; rounds={args.rounds} x iters={args.iters} interleaved, gap {args.gap}s")
    print("versions:", _versions())
    state_before = bench.device_state()
    rows = []
    for name in [m for m in args.models.split(",") if m]:
        rows += run_model(name, contenders, args)
    state_after = bench.device_state()
    hdr = (f"{'model':<13}{'contender':<21}{'n':>5}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}{'x ORT32':>9}"
           f"{'MB':>8}{'x fp32':>8}{'agree':>7}{'export s':>9}")
    print("\n" + hdr + "\n" + "-" * len(hdr))
    for r in rows:
        size = f"{r['size_ratio']:.3f}" if r["size_ratio"] is not None else "-"
        print(f"{r['model']:<13}{r['contender']:<21}{r['n']:>5}{r['p50']:>9.2f}{r['p90']:>9.2f}{r['p99']:>9.2f}"
              f"{r['ratio']:>9.3f}{r['mb']:>8.2f}{size:>8}{r['top1_agree']:>7.2f}{r['export_s']:>9.1f}")
    for when, st in (("before", state_before), ("after", state_after)):
        load = st.get("loadavg") or [float("nan")]
        print(f"device {when}: loadavg(1m) {load[0]:.2f} on {os.cpu_count()} cpus, governor {st.get('governor')}, "
              f"temp {st.get('temp_c')} C")
    if max((st.get("loadavg") or [0])[0] for st in (state_before, state_after)) > (os.cpu_count() or 1):
        print("WARNING: the host was oversubscribed (load above the CPU count): other processes shared the cores, "
              "so the figures are contended; ratios are fairer than absolute times (interleaved), but run again on a "
              "quiet machine for reference numbers")
    print(f"cpu: {_cpu_isa()}")
    print(f"agree = top-1 agreement with PyTorch on {args.check} random inputs: with random weights and 1000 classes "
          "near-ties are common, so it is a sanity check only; benchmarks/digits_accuracy.py measures accuracy on real "
          "data")
    print("\ntargets (issue 4, this host):")
    for line in check_targets(rows):
        print("  " + line)
    schemes = {r["scheme"] for r in rows if r["scheme"]}
    for s in schemes:
        print("onnx-int8 scheme:", s)
    return 0


if __name__ == "__main__":
    sys.exit(main())
