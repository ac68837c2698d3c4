"""validate(): every check runs, one error lists every failure, tolerances come from one per-backend table."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from targets import BACKENDS, parse_backend
from targets.errors import OutputMismatchError
from targets.validate import TOLERANCES, tolerance, validate


def test_every_backend_has_its_own_tolerance_row():
    assert {parse_backend(b) for b in BACKENDS} <= set(TOLERANCES)
    for (family, precision), tol in TOLERANCES.items():
        assert tolerance(family, precision) is tol
        assert 0 < tol.min_top1 <= 1 and 0 < tol.min_cosine <= 1
        # INT8 and weight-only INT4 are judged by agreement, floats by value
        assert (tol.atol == float("inf")) == (precision in ("int8", "int4"))


@pytest.mark.openvino
def test_an_fp16_artifact_is_judged_by_the_precision_the_runtime_reports_and_fp32_never_is(tiny):
    fp16 = validate(tiny.artifact("openvino", "fp16"), tiny.x, tiny.ref)
    fp32 = validate(tiny.artifact("openvino", "fp32"), tiny.x, tiny.ref)
    assert fp16["computed_in"] in ("f16", "bf16", "f32") and "computed_in" not in fp32
    assert fp16["tolerance"] == tolerance("openvino", "fp16", fp16["computed_in"])._asdict()
    assert fp32["tolerance"] == tolerance("openvino", "fp32")._asdict()
    looser, strict = tolerance("openvino", "fp16", "bf16"), tolerance("openvino", "fp16", "f16")
    assert looser.atol > strict.atol and looser.rtol > strict.rtol and strict is TOLERANCES[("openvino", "fp16")]


@pytest.mark.onnx
def test_validate_lists_every_failed_check_in_one_error(tiny):
    art = tiny.artifact("onnx", "fp32")
    shuffled = np.roll(tiny.ref, 3, axis=1)  # same values, other classes
    with pytest.raises(OutputMismatchError) as info:
        validate(art, tiny.x, shuffled)
    kinds = " | ".join(info.value.failures)
    assert "max abs error" in kinds and "top-1 agreement" in kinds and "cosine" in kinds
    assert len(info.value.failures) == 3 and info.value.exit_code == 3


@pytest.mark.onnx
def test_validate_judges_int8_by_agreement_and_cosine_not_by_value(tiny):
    art = tiny.artifact("onnx", "int8")
    report = validate(art, tiny.x, tiny.ref, labels=tiny.ref.argmax(1))
    assert report["max_abs_error"] > 0 and report["cosine"] > 0.99 and report["accuracy"] == report["top1_agreement"]
    with pytest.raises(OutputMismatchError, match="cosine similarity to the model.s -"):
        validate(art, tiny.x, -tiny.ref)


@pytest.mark.onnx
def test_validate_reports_a_missing_file_and_the_load_failure(tiny, tmp_path):
    art = dataclasses.replace(tiny.artifact("onnx", "fp32"), path=str(tmp_path / "gone.onnx"),
                              files=[str(tmp_path / "gone.onnx")])
    with pytest.raises(OutputMismatchError) as info:
        validate(art, tiny.x, tiny.ref)
    assert any("gone.onnx is missing" in f for f in info.value.failures)
    assert any("cannot load or run" in f for f in info.value.failures)


def _top1_against(labels: np.ndarray):
    def score(outputs: list[np.ndarray]) -> dict:
        acc = float((outputs[0].argmax(1) == labels).mean())
        return {"name": "top1", "value": acc, "higher_is_better": True, "unit": "fraction"}
    return score


@pytest.mark.onnx
def test_with_a_task_metric_int8_is_judged_by_its_drop_and_cosine_is_a_diagnostic_beside_it(tiny):
    """Issue 21: onnx-int8 of a detector was refused for "cosine 0.8843 < 0.9000", a proxy. With the task metric at
    hand the artifact is judged by the metric's drop against its FP32 parent; the proxies are reported beside it."""
    art, labels = tiny.artifact("onnx", "int8"), tiny.ref.argmax(1)
    score = _top1_against(labels)
    parent = score([tiny.ref])
    # against a reference the proxies call hopeless (cosine -1, no argmax agreement), the metric itself is intact
    report = validate(art, tiny.x, -tiny.ref, score=score, parent_score=parent, max_drop=5.0)
    assert report["judged_by"] == "task metric" and report["metric_drop"] <= 5.0
    assert any("cosine similarity to the model's -" in d for d in report["diagnostics"])
    assert any(d.startswith("top-1 agreement") for d in report["diagnostics"])
    # the metric past the limit fails, one line naming the drop, the limit and the diagnostics beside it
    with pytest.raises(OutputMismatchError) as info:
        validate(art, tiny.x, -tiny.ref, score=_top1_against((labels + 1) % 10), parent_score=parent, max_drop=5.0)
    (failure,) = info.value.failures
    assert failure.startswith("top1 ") and "points below the FP32 parent's 1 (max 5) (diagnostics: output: cosine" \
        in failure
    # without a limit the proxies judge, as before
    with pytest.raises(OutputMismatchError, match="cosine similarity"):
        validate(art, tiny.x, -tiny.ref, score=score, parent_score=parent, max_drop=None)


@pytest.mark.onnx
def test_fp32_must_still_match_its_parent_even_when_the_metric_is_fine(tiny):
    art, labels = tiny.artifact("onnx", "fp32"), tiny.ref.argmax(1)
    score = _top1_against(labels)
    with pytest.raises(OutputMismatchError) as info:
        validate(art, tiny.x, -tiny.ref, score=score, parent_score=score([tiny.ref]), max_drop=1.0)
    assert any("max abs error" in f for f in info.value.failures)
    assert any("cosine similarity" in f for f in info.value.failures)


@pytest.mark.onnx
def test_shape_mismatch_fails_whatever_the_metric(tiny):
    art = tiny.artifact("onnx", "int8")
    score = _top1_against(tiny.ref.argmax(1))
    with pytest.raises(OutputMismatchError, match=r"output shape \[64, 10\] != expected \[64, 5\]"):
        validate(art, tiny.x, tiny.ref[:, :5], score=score, parent_score=score([tiny.ref]), max_drop=1.0)
