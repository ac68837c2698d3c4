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
        assert (tol.atol == float("inf")) == (precision == "int8")  # INT8 is judged by agreement, floats by value


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
