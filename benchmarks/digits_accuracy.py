"""Top-1 of every INT8 (and FP16) artifact against its FP32 parent on the digits demo's eval split.

Target: every INT8 artifact within 0.5 point of top-1 of its FP32 parent. Uses the demo's trained teacher (trained
on first use and cached by examples/digits/models.py) and its 256-image calibration split.

    python benchmarks/digits_accuracy.py [--backends onnx-int8,openvino-int8,...]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "examples" / "digits"))

from targets import BACKENDS, get_exporter, parse_backend  # noqa: E402
from targets.errors import EdgeError  # noqa: E402
from targets.export_config import ExportConfig  # noqa: E402
from targets.runner import bench  # noqa: E402


def _stack(ds) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = zip(*[ds[i] for i in range(len(ds))], strict=True)
    return torch.stack(xs).numpy().astype(np.float32), np.asarray([int(y) for y in ys])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backends", default=",".join(BACKENDS))
    ap.add_argument("--max-drop", type=float, default=0.5, help="points of top-1 an INT8 artifact may lose")
    args = ap.parse_args(argv)
    import data as digits_data
    import models as digits_models

    model = digits_models.trained_teacher().eval()
    splits = digits_data.demo_splits()   # the demo teacher's 48x48 input
    calib, _ = _stack(splits["calib"])
    x_eval, y_eval = _stack(splits["eval"])
    with torch.no_grad():
        torch_acc = float((model(torch.from_numpy(x_eval)).argmax(1).numpy() == y_eval).mean())
    example = (torch.from_numpy(x_eval[:1]),)
    print(f"digits teacher: PyTorch top-1 {100 * torch_acc:.2f}% on {len(y_eval)} eval images; calib {len(calib)}")
    acc: dict[str, float] = {}
    rows = []
    with tempfile.TemporaryDirectory(prefix="digits-acc-") as tmp:
        for name in [b for b in args.backends.split(",") if b]:
            family, precision = parse_backend(name)
            t0 = time.perf_counter()
            try:
                art = get_exporter(family)(model, example, calib, ExportConfig(name="digits", precision=precision),
                                           Path(tmp))
            except EdgeError as exc:
                print(f"{name}: {exc}")
                continue
            out = bench.predict(bench.load(art.path, family, 2), x_eval)
            acc[name] = float((out.argmax(1) == y_eval).mean())
            rows.append((name, family, precision, art.bytes, time.perf_counter() - t0))
    failed = False
    print(f"\n{'backend':<16}{'top-1 %':>9}{'vs fp32 (pt)':>14}{'vs torch (pt)':>15}{'KB':>9}{'s':>6}")
    for name, family, precision, size, secs in rows:
        parent = acc.get(f"{family}-fp32")
        diff = 100 * (acc[name] - parent) if parent is not None else float("nan")
        mark = ""
        if precision == "int8" and parent is not None and -diff > args.max_drop:
            mark, failed = "  <-- over the budget", True
        print(f"{name:<16}{100 * acc[name]:>9.2f}{diff:>14.2f}{100 * (acc[name] - torch_acc):>15.2f}"
              f"{size / 1024:>9.1f}{secs:>6.1f}{mark}")
    print(f"\nINT8 budget: within {args.max_drop} point of the FP32 parent: {'FAILED' if failed else 'met'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
