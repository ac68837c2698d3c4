"""examples/yolov8 against its FP32 teacher, per backend: speed-up, size ratio and mAP drop of every artifact of a
finished run, the teacher's FP32 ONNX (the headline's reference) timed in the same process, interleaved.

Why a second timing: the run benches each artifact in turn, minutes apart; on a shared host the load moves between
them (the teacher's p50 swung 6-20 ms under one run). Here every artifact and the teacher run in rotating order, one
intra-op thread each, batch 1, with benchmarks/backends.py's interleaving rules; mAP and sizes come from the run's
summary.json (measured by the pipeline on the eval canvases).

    python benchmarks/yolov8.py /tmp/yolov8     # the --out folder of `edgepipe run examples/yolov8/recipe.yaml`
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.backends import _interleaved
from benchmarks.host import cpu_model

TARGETS = {"speedup": 2.0, "size_ratio": 4.0, "drop": 1.0}




def _runner(path: Path) -> Callable[[np.ndarray], Any]:
    """One-thread batch-1 inference of an artifact file, input quantized where the artifact wants int8."""
    if path.suffix == ".onnx":
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = opts.inter_op_num_threads = 1
        s = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        name = s.get_inputs()[0].name
        return lambda x: s.run(None, {name: x})
    if path.suffix == ".xml":
        import openvino as ov

        c = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_NUM_THREADS": 1})
        return lambda x: c(x)
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path), num_threads=1)
    it.allocate_tensors()
    inp = it.get_input_details()[0]
    scale, zero = inp["quantization"]

    def run(x: np.ndarray) -> Any:
        if inp["dtype"] != np.float32:
            x = np.clip(np.round(x / scale + zero), -128, 127).astype(inp["dtype"])
        it.set_tensor(inp["index"], x)
        it.invoke()
        return it.get_tensor(it.get_output_details()[0]["index"])
    return run


def main(run_dir: Path) -> None:
    summary = json.loads((run_dir / "summary.json").read_text())
    head = summary["headline"]["original"]
    original = next((run_dir / "artifacts" / "original").glob("*.fp32.onnx"))
    inputs = np.load(run_dir / "inputs" / "eval.npz")
    x = np.asarray(inputs[inputs.files[0]][:64], dtype=np.float32)
    arts = {a["name"]: a for a in summary["artifacts"]}
    runs = {"teacher": _runner(original)} | {n: _runner(run_dir / a["file"]) for n, a in arts.items()}
    print(f"# {cpu_model()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at start; 1 thread, batch 1, "
          "interleaved")
    samples = _interleaved(runs, x, rounds=12, iters=40, warmup=20)
    t50 = float(np.median(samples["teacher"]))
    print(f"teacher (FP32 ONNX, YOLOv8s shape): p50 {t50:.3f} ms, {head['bytes'] / 1024:.0f} KiB, "
          f"mAP@0.5:0.95 {100 * head['metric']:.2f}")
    print(f"{'artifact':15} {'p50 ms':>8} {'speed-up':>9} {'size':>9} {'smaller':>8} {'mAP':>6} {'drop':>6}  meets")
    for name, a in arts.items():
        p50 = float(np.median(samples[name]))
        size = a["bytes"]                                     # every file of the artifact (.xml + .bin)
        metric = (a.get("metric") or {}).get("value")
        drop = None if metric is None else 100 * (head["metric"] - metric)
        ok = [t50 / p50 >= TARGETS["speedup"], head["bytes"] / size >= TARGETS["size_ratio"],
              drop is not None and drop <= TARGETS["drop"]]
        marks = "/".join(m if o else "-" for m, o in zip(("2x", "1/4", "1pt"), ok, strict=True))
        mtxt = "  n/a" if metric is None else f"{100 * metric:6.2f}"
        dtxt = "  n/a" if drop is None else f"{drop:6.2f}"
        print(f"{name:15} {p50:8.3f} {t50 / p50:8.2f}x {size / 1024:8.0f}K {head['bytes'] / size:7.2f}x {mtxt} {dtxt}"
              f"  {marks}{'' if not a.get('error') else '  (failed its output check: ' + a['error'][:60] + ')'}")
    print(f"# load average {os.getloadavg()[0]:.2f} at end")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/yolov8"))
