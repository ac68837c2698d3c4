from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.stages.qat_export import openvino_from_qdq_onnx
from targets.artifact import Artifact
from targets.runner.bench import load, predict


@pytest.mark.openvino
@pytest.mark.onnx
def test_openvino_from_qdq_onnx_runs_int8_and_matches_onnx_int8(digits, teacher, example, tmp_path) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    fp32 = tmp_path / "m.fp32.onnx"
    torch.onnx.export(teacher, (example,), dynamo=True, input_names=["input"]).save(str(fp32))
    calib = np.stack([digits["calib"][i][0].numpy() for i in range(32)]).astype(np.float32)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter([{"input": calib[i:i + 1]} for i in range(len(calib))])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.items, None)

    qdq = tmp_path / "m.int8.onnx"
    quantize_static(str(fp32), str(qdq), Reader(), quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8, per_channel=True)
    art = openvino_from_qdq_onnx(Artifact.from_files(qdq, backend="onnx", precision="int8"), tmp_path / "ov", "m")
    assert art.path.endswith("m.int8.xml") and art.backend == "openvino" and len(art.files) == 2
    assert not [p for p in (tmp_path / "ov").iterdir() if p.name.startswith(".")]   # no temp left behind
    x = np.stack([digits["eval"][i][0].numpy() for i in range(64)]).astype(np.float32)
    ov_out = predict(load(art.path, "openvino", threads=1), x)
    # the QDQ model's own arithmetic: ORT's fused U8S8 kernels saturate on these 8-bit weights on x86 without VNNI
    ort_out = predict(load(str(qdq), "onnx", threads=1, optimization="basic"), x)
    assert (ov_out.argmax(1) == ort_out.argmax(1)).mean() >= 0.95

    import openvino as ov
    runtime = ov.Core().compile_model(art.path, "CPU").get_runtime_model()
    precisions = {op.get_rt_info()["runtimePrecision"].astype(str) for op in runtime.get_ordered_ops()
                  if "runtimePrecision" in op.get_rt_info()}
    assert precisions & {"u8", "i8"}                                   # really executed in INT8
