"""A realistic run folder (the contract pipeline/run.py writes), fabricated so these tests do not need the orchestrator.

``make_run(root, ...)`` writes summary.json, recipe.yaml, run.log, stages/, artifacts/ with Artifact sidecars
(OpenVINO as .xml + .bin) and bench/<backend>-<precision>.json, with real files and real checksums. By default the
model files hold placeholder bytes; pass ``onnx_model`` (the ``tiny_onnx`` fixture: a real ONNX file exported from a
tiny torch model with the dynamo exporter) to get artifacts a runtime can load.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from targets.artifact import Artifact, sha256_file
from targets.jsonio import write_json as atomic_write_json

BASELINE = {"accuracy": 0.983, "params": 120_000, "macs": 4_500_000}
STAGES = [
    {"name": "distill", "accuracy": 0.979, "params": 30_000, "macs": 1_100_000, "seconds": 21.4},
    {"name": "prune", "accuracy": 0.977, "params": 15_000, "macs": 560_000, "seconds": 9.8},
    {"name": "quantize", "accuracy": 0.976, "params": 15_000, "macs": 560_000, "seconds": 3.1},
]
# name -> (accuracy, p50 ms, size multiplier); None accuracy = the backend failed to export
DEFAULT_FIGURES: dict[str, tuple[float | None, float, int]] = {
    "onnx-fp32": (0.981, 0.110, 4), "onnx-int8": (0.978, 0.061, 1),
    "openvino-int8": (0.975, 0.052, 1), "tflite-int8": (None, 0.0, 1),
}


def bench_record(name: str, file: str, p50: float, accuracy: float, *, valid: bool = True,
                 reasons: list[str] | None = None) -> dict[str, Any]:
    family = name.split("-")[0]
    runtime = {"onnx": "onnxruntime 1.32.0", "openvino": "openvino 2026.4.1", "tflite": "ai_edge_litert 2.3.0"}[family]
    state = {"temp_c": 47.0, "governor": "performance", "cpu_mhz": 2400.0, "throttled": None, "power_mode": None,
             "loadavg": [0.4, 0.3, 0.2]}
    return {
        "protocol": 1, "artifact": Path(file).name, "backend": family,
        "latency_ms": {"p50": p50, "p90": round(p50 * 1.2, 4), "p99": round(p50 * 1.6, 4), "mean": round(p50 * 1.05, 4),
                       "std": round(p50 * 0.1, 4), "min": round(p50 * 0.9, 4), "max": round(p50 * 2, 4), "n": 300},
        "runtime": runtime, "threads": 2, "providers": ["CPUExecutionProvider"] if family == "onnx" else ["CPU"],
        "io": {}, "rules": {"warmup": 20, "min_iterations": 200, "min_seconds": 1.0, "max_seconds": 30},
        "state": {"before": state, "after": {**state, "temp_c": 49.0}},
        "environment": {"os": "Linux-6.1-x86_64", "kernel": "6.1", "machine": "x86_64", "python": "3.11.7",
                        "numpy": "2.3.0", "cpus": 2},
        "accuracy": accuracy, "n_eval": 360, "valid": valid, "invalid_reasons": list(reasons or []),
    }


def make_run(root: Path, *, run_id: str = "digits-local-20261123T160000Z", recipe: str = "digits",
             device: str = "local", figures: dict[str, tuple[float | None, float, int]] | None = None,
             onnx_model: Path | None = None, gate: dict[str, Any] | None = None, status: str = "complete",
             started: str = "2026-11-23T16:00:00+00:00", finished: str = "2026-11-23T16:03:10+00:00",
             invalid: dict[str, list[str]] | None = None) -> Path:
    """Write a complete run folder under ``root`` and return it."""
    from pipeline.results.gate import apply_gate

    run_dir = root
    (run_dir / "artifacts").mkdir(parents=True, exist_ok=True)
    (run_dir / "bench").mkdir(exist_ok=True)
    for st in STAGES:
        d = run_dir / "stages" / st["name"]
        d.mkdir(parents=True, exist_ok=True)
        (d / "metrics.json").write_text(json.dumps(st))
    (run_dir / "recipe.yaml").write_text(f"name: {recipe}\n"
                                         "model: {factory: models:teacher, input_shape: [1, 1, 8, 8]}\n"
                                         f"data: {{factory: data:splits}}\ngate: {json.dumps(gate or {})}\n")
    (run_dir / "run.log").write_text(f"{started} run {run_id} started\n{finished} run finished\n")
    arts = []
    for name, (acc, p50, mult) in (figures or DEFAULT_FIGURES).items():
        backend, precision = name.split("-")
        suffix = {"onnx": ".onnx", "openvino": ".xml", "tflite": ".tflite"}[backend]
        rel = f"artifacts/{recipe}.{precision}{suffix}"
        entry: dict[str, Any] = {"backend": backend, "precision": precision, "file": rel,
                                 "parent": "stages/quantize" if precision == "int8" else "stages/prune"}
        if acc is None:
            entry.update(valid=False, error=f"{backend}: cannot export op aten::_fake_op (unsupported in this test)")
            arts.append(entry)
            continue
        path = run_dir / rel
        extra = []
        if backend == "onnx" and onnx_model is not None:
            shutil.copyfile(onnx_model, path)
        else:
            path.write_bytes(f"{name} placeholder model bytes\n".encode() * (40 * mult))
        if backend == "openvino":
            path.with_suffix(".bin").write_bytes(b"\x00\x01weights" * (100 * mult))
            extra = [path.with_suffix(".bin")]
        record = Artifact.from_files(path, backend=backend, precision=precision, extra_files=extra,
                                     parent=entry["parent"], produced_by=f"targets.export_{backend}",
                                     config={"name": recipe, "precision": precision})
        record.save()
        reasons = (invalid or {}).get(name, [])
        bench = bench_record(name, rel, p50, acc, valid=not reasons, reasons=reasons)
        atomic_write_json(run_dir / "bench" / f"{name}.json", bench)
        entry.update(sha256=record.sha256, files={f.name: sha256_file(f) for f in (path, *extra)}, bytes=record.bytes,
                     accuracy=acc,
                     latency_ms=bench["latency_ms"],
                     valid=not reasons, environment={"runtime": bench["runtime"], "threads": 2,
                                                     "governor": "performance", "temp_c": 47.0},
                     validation={"max_abs_error": 0.012, "top1_agreement": 0.995}, bench=bench)
        arts.append(entry)
    summary = {"schema": 1, "recipe": recipe, "device": device, "run_id": run_id, "status": status,
               "started": started, "finished": finished, "edgepipe_version": "0.1.0",
               "tool_versions": {"torch": "2.13.0", "onnxruntime": "1.32.0", "openvino": "2026.4.1"},
               "baseline": dict(BASELINE), "stages": [dict(s) for s in STAGES], "artifacts": arts}
    apply_gate(summary, gate or {"max_accuracy_drop": 1.0}, device)
    atomic_write_json(run_dir / "summary.json", summary)
    return run_dir


