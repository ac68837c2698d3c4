"""Check an exported artifact against the PyTorch model it came from: run every check, then raise once.

Every output is compared, not only the first: a model whose second head is broken fails. Where the task metric is
defined (the caller hands in the scoring function and the gate's limit: this layer knows no metric), an artifact of
any precision is judged by that metric's drop against its FP32 parent; the output proxies -- cosine similarity, max
error, argmax agreement -- are then diagnostics reported beside it (issue 21: a detector's INT8 refused for
"cosine 0.8843 < 0.9000" by a proxy), while FP32 must still match within its tolerance (a broken export is a broken
export). Shape mismatches, NaN/Inf and a file that does not load always fail. Without a metric the proxies judge.
Tolerances are per backend and precision (optimum's idea), in one table.
"""

from __future__ import annotations

import math
import platform
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from targets import units
from targets.artifact import Artifact, sha256_file
from targets.errors import OutputMismatchError
from targets.runner import bench


class Tolerance(NamedTuple):
    atol: float          # float outputs: |out - ref| <= atol + rtol * max|ref|
    rtol: float
    min_top1: float      # fraction of inputs whose argmax matches the parent's
    min_cosine: float    # mean cosine similarity of output rows with the parent's


_FP32 = Tolerance(1e-3, 1e-4, 0.999, 0.9999)
_FP16 = Tolerance(5e-2, 1e-2, 0.98, 0.999)
# INT8's cosine floor only catches corruption (a broken model scores ~0.4); whether the quantized model is good
# enough is decided by the task metric's drop against the FP32 parent
_INT8 = Tolerance(float("inf"), 0.0, 0.95, 0.90)
# weight-only INT4 (activations float): like INT8, the floor catches corruption; the task metric judges quality
_INT4 = Tolerance(float("inf"), 0.0, 0.90, 0.90)
_BF16 = Tolerance(1e-1, 3e-2, 0.98, 0.999)  # 8-bit mantissa: about 3 significant digits per op

TOLERANCES: dict[tuple[str, str], Tolerance] = {
    ("onnx", "fp32"): _FP32,
    ("onnx", "fp16"): _FP16,
    ("onnx", "int8"): _INT8,
    ("openvino", "fp32"): _FP32,          # the runner pins INFERENCE_PRECISION_HINT=f32 (no silent bf16)
    ("openvino", "fp16"): _FP16,          # f16 weights; f16 compute where the device has it
    ("openvino", "int8"): _INT8,
    ("onnx", "int4"): _INT4,
    ("openvino", "int4"): _INT4,
    ("tflite", "fp32"): Tolerance(2e-3, 1e-4, 0.999, 0.9999),   # XNNPACK reorders float sums a little more
    ("tflite", "fp16"): _FP16,
    ("tflite", "int8"): Tolerance(float("inf"), 0.0, 0.93, 0.90),  # per-tensor symmetric int8 activations
}


def tolerance(backend: str, precision: str, computed_in: str | None = None) -> Tolerance:
    """The bound for an artifact; ``computed_in`` is the precision the runtime reported using, when it chose a
    coarser one than the file's (OpenVINO runs an fp16 IR in bf16 on x86 CPUs with AVX512-BF16 but no float16)."""
    if computed_in == "bf16":
        return _BF16
    by_precision = {"fp32": _FP32, "fp16": _FP16, "int8": _INT8, "int4": _INT4}
    return TOLERANCES.get((backend, precision), by_precision.get(precision, _FP32))


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a2, b2 = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    den = np.linalg.norm(a2, axis=1) * np.linalg.norm(b2, axis=1)
    cos = np.where(den > 0, (a2 * b2).sum(1) / np.where(den > 0, den, 1), 1.0)
    return float(cos.mean())


def host_check(artifact: Artifact, host_arch: str | None = None, host_vnni: bool | None = None) -> dict[str, str]:
    """How the host must run an artifact so that it judges what the *target* computes, and why.

    ORT's fused U8S8 kernels on x86 without VNNI (AVX2 and AVX-512BW use VPMADDUBSW) saturate their int16 pair sums
    unless the weights are 7-bit (``reduce_range``). An onnx-int8 file made for a target whose kernels do not saturate
    (Arm, x86 with VNNI) has 8-bit weights, so such a host saw it as broken (top-1 agreement 0.60 on digits) although
    the board computes it correctly. At ORT's basic level the Q/DQ pairs stay unfused: the same quantized model is
    evaluated as dequantize -> float op -> quantize, exact up to float rounding, which is what the target computes.
    """
    from targets.export_onnx import X86_ARCHES, host_has_vnni  # lazy: the exporter module imports torch

    full = {"optimization": "all", "why": "the runtime's full optimisation, as the device runs it"}
    scheme = artifact.metadata.get("int8") if (artifact.backend, artifact.precision) == ("onnx", "int8") else None
    if not isinstance(scheme, dict):
        return full
    arch = (host_arch or platform.machine()).lower()
    vnni = host_has_vnni() if host_vnni is None else host_vnni
    host_saturates = arch in X86_ARCHES and not vnni
    target_saturates = str(scheme.get("arch", "")).lower() in X86_ARCHES and not scheme.get("vnni")
    eight_bit_u8s8 = scheme.get("activation_type") == "uint8" and not scheme.get("reduce_range")
    if host_saturates and eight_bit_u8s8 and not target_saturates:
        return {"optimization": "basic",
                "why": f"this {arch} host has no VNNI: its fused U8S8 kernels saturate on the 8-bit weights of an "
                       f"artifact for {scheme.get('arch')}, whose kernels do not; Q/DQ checked unfused (ORT basic "
                       "level), which computes what the target does"}
    return full


def _file_checks(artifact: Artifact) -> list[str]:
    failures = []
    for f in artifact.files or [artifact.path]:
        if not Path(f).is_file():
            failures.append(f"file {f} is missing")
    if Path(artifact.path).is_file() and sha256_file(artifact.path) != artifact.sha256:
        failures.append(f"{artifact.path} changed since export (sha256 differs from its record)")
    return failures


def _as_list(x: np.ndarray | list[np.ndarray]) -> list[np.ndarray]:
    return [x] if isinstance(x, np.ndarray) else list(x)


def _nonfinite_inputs(feeds: dict[str, np.ndarray], refs: list[np.ndarray]) -> list[str]:
    """NaN/Inf in the eval inputs or in the parent's own outputs, named as such: no artifact can match them."""
    problems = []
    for name, arr in feeds.items():
        a = np.asarray(arr)
        if a.dtype.kind == "f" and a.size and not np.isfinite(a).all():
            problems.append(f"the eval input {name!r} holds NaN or Inf: clean the data")
    for i, ref in enumerate(refs):
        r = np.asarray(ref)
        if r.dtype.kind == "f" and r.size and not np.isfinite(r).all():
            problems.append(f"the PyTorch parent's own output {i} holds NaN or Inf (its weights or its numerics, "
                            "not the export): there is nothing finite to compare the artifact with")
    return problems


def validate(artifact: Artifact, inputs: dict[str, np.ndarray] | np.ndarray,
             reference: list[np.ndarray] | np.ndarray, labels: np.ndarray | None = None, threads: int = 1, *,
             classification: bool = True, score: Callable[[list[np.ndarray]], dict[str, Any]] | None = None,
             parent_score: dict[str, Any] | None = None, max_drop: float | None = None,
             batch_axes: list[int] | None = None) -> dict[str, Any]:
    """Run ``inputs`` (by input name) through the artifact's runtime and compare every output with ``reference``
    (the parent's outputs, samples first; ``batch_axes`` says where the artifact puts them). ``score`` turns
    outputs into the task metric (``{"name", "value", "higher_is_better", "unit"}``); with ``parent_score`` and
    ``max_drop`` an artifact of any precision whose metric drops more than ``max_drop`` below it fails, and the
    output proxies (except FP32's tolerance) go to ``report["diagnostics"]`` instead of failing it.

    Raises OutputMismatchError listing every failed check, including a file that no longer loads.
    """
    refs = _as_list(reference)
    feeds = {"input": inputs} if isinstance(inputs, np.ndarray) else inputs
    failures = _file_checks(artifact)
    nonfinite = _nonfinite_inputs(feeds, refs)
    if nonfinite:   # the comparison below would blame the artifact ("cosine 0.0000") for its parent's NaN
        _raise(artifact, failures + nonfinite)
    check = host_check(artifact)
    try:
        level = {"optimization": check["optimization"]} if artifact.backend == "onnx" else {}
        session = bench.load(artifact.path, artifact.backend, threads, input_names=list(feeds), **level)
        outs = bench.predict(session, feeds, batch_axes)   # samples first, as ``reference`` is
    except Exception as exc:  # noqa: BLE001 - any runtime failure on load/run means the file is unusable
        text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        failures.append(f"{artifact.backend} runtime cannot load or run {artifact.path}: {text[:300]}")
        _raise(artifact, failures)
    # only a half-precision artifact may be judged by the half precision the runtime picked; fp32 stays strict
    computed_in = session.io.get("precision_hint") if artifact.precision == "fp16" else None
    tol = tolerance(artifact.backend, artifact.precision, computed_in)
    n = int(bench.count(feeds))
    # INT8 has no absolute bound (inf): written as null, since strict JSON (the search's export cache) has no Infinity
    bounds = {k: (v if math.isfinite(v) else None) for k, v in tol._asdict().items()}
    report: dict[str, Any] = {"n": n, "tolerance": bounds, "outputs": len(refs), "check": check}
    if computed_in:
        report["computed_in"] = computed_in
    if len(outs) != len(refs):
        failures.append(f"the artifact returns {len(outs)} output(s), the model {len(refs)}")
        _raise(artifact, failures)
    # A task metric with a limit judges the artifact (every precision, by its drop against the FP32 parent); the
    # output proxies (cosine, max error, argmax agreement) are then diagnostics reported beside it -- except for FP32,
    # which must still match its parent closely: a broken export is a broken export, whatever the metric says.
    by_metric = score is not None and parent_score is not None and max_drop is not None
    strict = artifact.precision == "fp32"
    proxies: list[str] = []
    errs, coss = [], []
    for i, (out, ref) in enumerate(zip(outs, refs, strict=True)):
        tag = f"output {i}" if len(refs) > 1 else "output"
        if out.shape != ref.shape:
            failures.append(f"{tag} shape {list(out.shape)} != expected {list(ref.shape)}")
            continue
        if np.issubdtype(ref.dtype, np.floating) and out.dtype != np.float32:
            failures.append(f"{tag} dtype {out.dtype} != float32")
        if not np.issubdtype(ref.dtype, np.floating):       # integer outputs (indices, counts) must be exact
            wrong = float((out != ref).mean()) if out.size else 0.0
            if wrong > (0.0 if artifact.precision not in ("int8", "int4") else 1 - tol.min_top1):
                (failures if strict else proxies).append(f"{tag}: {wrong:.1%} of its integer values differ from "
                                                          "the model's")
            errs.append(0.0)
            coss.append(1.0)
            continue
        if not np.isfinite(out).all():
            failures.append(f"{tag} contains NaN or Inf")
        err = float(np.max(np.abs(out - ref))) if out.size else 0.0
        bound = tol.atol + tol.rtol * float(np.max(np.abs(ref))) if ref.size else tol.atol
        cos = _cosine(out, ref) if np.isfinite(out).all() else 0.0
        errs.append(err)
        coss.append(cos)
        if err > bound:
            (failures if strict else proxies).append(f"{tag}: max abs error {err:.3g} > tolerance {bound:.3g}")
        if cos < tol.min_cosine:
            (failures if strict else proxies).append(f"{tag}: cosine similarity to the "
                                                      f"model's {cos:.4f} < {tol.min_cosine:.4f}")
    report.update(max_abs_error=max(errs) if errs else 0.0, cosine=min(coss) if coss else 1.0,
                  per_output=[{"max_abs_error": e, "cosine": c} for e, c in zip(errs, coss, strict=False)],
                  runtime=f"{session.runtime} {session.version}")
    if classification and outs and outs[0].shape == refs[0].shape and len(outs[0]):
        flat_out, flat_ref = outs[0].reshape(n, -1), refs[0].reshape(n, -1)
        agree = float((flat_out.argmax(1) == flat_ref.argmax(1)).mean())
        report["top1_agreement"] = agree
        if agree < tol.min_top1:
            (failures if strict else proxies).append(f"top-1 agreement {agree:.3f} < {tol.min_top1:.3f}")
        if labels is not None:
            report["accuracy"] = float((flat_out.argmax(1) == np.asarray(labels).reshape(-1)).mean())
    if not by_metric:
        failures += proxies      # no task metric to judge by: the proxies are the judgement
        proxies = []
    report["judged_by"] = "task metric" if by_metric else "outputs"
    report["diagnostics"] = proxies
    if score is not None and not failures:
        try:
            report["metric"] = score(outs)
        except Exception as exc:  # noqa: BLE001 - a metric that cannot read these outputs is a failed check
            failures.append(f"the task metric cannot score the artifact's outputs: {type(exc).__name__}: {exc}")
        else:
            if by_metric:
                assert parent_score is not None and max_drop is not None
                drop = units.drop(float(parent_score["value"]), float(report["metric"]["value"]), parent_score,
                                  max_drop)
                report["metric_drop"] = drop
                if not units.within(drop, max_drop):
                    unit = units.unit_word(parent_score, max_drop)
                    beside = f" (diagnostics: {'; '.join(proxies)})" if proxies else ""
                    side = "below" if parent_score.get("higher_is_better", True) else "worse than"
                    failures.append(f"{report['metric']['name']} {report['metric']['value']:.4g} is {drop:.3g}{unit} "
                                    f"{side} the FP32 parent's {parent_score['value']:.4g} (max {max_drop:g}){beside}")
    if failures:
        _raise(artifact, failures)
    return report


def _raise(artifact: Artifact, failures: list[str]) -> None:
    raise OutputMismatchError(f"{artifact.backend}-{artifact.precision} ({artifact.path})", failures)
