"""Check an exported artifact against the PyTorch model it came from: run every check, then raise once.

Float artifacts must match within an absolute tolerance; INT8 artifacts are judged by top-1 agreement, since their
outputs legitimately differ in value. Tolerances are per backend and precision (optimum's idea).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from targets.artifact import Artifact
from targets.errors import OutputMismatchError
from targets.runner import bench

# (max abs error for float outputs, minimum top-1 agreement with the parent)
TOLERANCES: dict[str, tuple[float, float]] = {
    "fp32": (1e-3, 0.999),
    "fp16": (5e-2, 0.98),
    "int8": (float("inf"), 0.95),
}


def validate(artifact: Artifact, inputs: np.ndarray, reference: np.ndarray, labels: np.ndarray | None = None,
             threads: int = 1) -> dict[str, Any]:
    """Run ``inputs`` through the artifact's runtime and compare with ``reference`` (the parent's outputs)."""
    session = bench.load(artifact.path, artifact.backend, threads)
    out = bench.predict(session, inputs.astype(np.float32))
    failures: list[str] = []
    if out.shape != reference.shape:
        failures.append(f"output shape {list(out.shape)} != expected {list(reference.shape)}")
        return _raise_or_report(artifact, failures, {})
    if out.dtype != np.float32:
        failures.append(f"output dtype {out.dtype} != float32")
    max_abs, min_agree = TOLERANCES.get(artifact.precision, TOLERANCES["fp32"])
    err = float(np.max(np.abs(out - reference))) if out.size else 0.0
    agree = float((out.argmax(1) == reference.argmax(1)).mean()) if out.ndim == 2 else 1.0
    if not np.isfinite(out).all():
        failures.append("output contains NaN or Inf")
    if err > max_abs:
        failures.append(f"max abs error {err:.3g} > tolerance {max_abs:g}")
    if agree < min_agree:
        failures.append(f"top-1 agreement {agree:.3f} < {min_agree:.3f}")
    report: dict[str, Any] = {"max_abs_error": err, "top1_agreement": agree, "n": int(len(inputs)),
                              "tolerance": {"max_abs_error": max_abs, "top1_agreement": min_agree}}
    if labels is not None:
        report["accuracy"] = float((out.argmax(1) == labels).mean())
    return _raise_or_report(artifact, failures, report)


def _raise_or_report(artifact: Artifact, failures: list[str], report: dict[str, Any]) -> dict[str, Any]:
    if failures:
        raise OutputMismatchError(f"{artifact.backend}-{artifact.precision} ({artifact.path})", failures)
    return report
