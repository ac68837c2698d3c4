"""openvino-int8 read from the onnx-int8 QDQ artifact (the QAT path): an exporter path with a declared dependency."""

from __future__ import annotations

import pytest

from targets import export_order, requires
from targets.errors import ExportError
from targets.export_config import ExportConfig
from targets.runner.bench import load, predict
from tests.targets._models import example


def test_export_order_puts_onnx_int8_first_whatever_the_list_order() -> None:
    assert requires("openvino-int8", "onnx-qdq") == ["onnx-int8"]
    assert requires("openvino-int8", "model") == []
    assert export_order(["openvino-int8", "tflite-int8", "onnx-int8"], "onnx-qdq") == \
        ["onnx-int8", "openvino-int8", "tflite-int8"]
    # not asked for: still exported first, because openvino-int8 reads it
    assert export_order(["openvino-int8"], "onnx-qdq") == ["onnx-int8", "openvino-int8"]
    assert export_order(["openvino-int8", "onnx-int8"], "model") == ["openvino-int8", "onnx-int8"]


@pytest.mark.openvino
@pytest.mark.onnx
def test_openvino_from_qdq_runs_int8_and_matches_onnx_int8(tiny, tmp_path) -> None:
    from targets.export_openvino import export

    qdq = tiny.artifact("onnx", "int8")
    cfg = ExportConfig(name="m", precision="int8", ov_int8_from="onnx-qdq")
    art = export(tiny.model, example(), tiny.calib, cfg, tmp_path / "ov", sources={"onnx-int8": qdq})
    assert art.path.endswith("m.int8.xml") and art.backend == "openvino" and len(art.files) == 2
    assert art.parent == qdq.sha256 and "onnx-int8 QDQ model" in art.metadata["source"]
    assert not [p for p in (tmp_path / "ov").iterdir() if p.name.startswith(".")]   # no temp left behind
    ov_out = predict(load(art.path, "openvino", threads=1), tiny.x)[0]
    ort_out = predict(load(qdq.path, "onnx", threads=1), tiny.x)[0]
    assert (ov_out.argmax(1) == ort_out.argmax(1)).mean() >= 0.95

    import openvino as ov
    runtime = ov.Core().compile_model(art.path, "CPU").get_runtime_model()
    precisions = {op.get_rt_info()["runtimePrecision"].astype(str) for op in runtime.get_ordered_ops()
                  if "runtimePrecision" in op.get_rt_info()}
    assert precisions & {"u8", "i8"}                                   # really executed in INT8


@pytest.mark.openvino
def test_openvino_from_qdq_without_the_onnx_artifact_says_what_to_do(tiny, tmp_path) -> None:
    from targets.export_openvino import export

    cfg = ExportConfig(name="m", precision="int8", ov_int8_from="onnx-qdq")
    with pytest.raises(ExportError, match="needs the onnx-int8 artifact"):
        export(tiny.model, example(), tiny.calib, cfg, tmp_path / "ov")
