"""The QAT hand-off to OpenVINO: build the INT8 IR from the QDQ ONNX artifact instead of re-quantizing with NNCF.

Measured on the digits demo (QAT stage, 12.8k-param student): the QAT weights keep 99.17% top-1 through ORT static
QDQ and LiteRT PT2E INT8, but NNCF post-training quantization of the same weights gives 98.33% (both presets,
with or without keep_float). OpenVINO reading the QDQ ONNX instead executes the convolutions in u8/i8 with the
scales already decided there and keeps 99.17%. So for ``quantize.mode: qat`` the orchestrator can make
``openvino-int8`` from ``onnx-int8`` with :func:`openvino_from_qdq_onnx` (this module lives here, not in
``targets/export_openvino.py``, which another issue owns).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from targets.artifact import Artifact
from targets.errors import MissingDependencyError


def openvino_from_qdq_onnx(onnx_int8: Artifact, out_dir: Path, name: str) -> Artifact:
    """Convert a QDQ ONNX artifact to OpenVINO IR (``<name>.int8.xml`` + ``.bin``), written atomically."""
    try:
        import openvino as ov
    except ImportError as exc:
        raise MissingDependencyError("openvino", "openvino", purpose="openvino-int8 from the QDQ ONNX") from exc

    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / f"{name}.int8.xml"
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".ov-qdq-") as tmp:
        tmp_xml = Path(tmp) / final.name
        ov.save_model(ov.convert_model(str(onnx_int8.path)), str(tmp_xml), compress_to_fp16=False)
        tmp_xml.with_suffix(".bin").replace(final.with_suffix(".bin"))
        tmp_xml.replace(final)
    art = Artifact.from_files(final, backend="openvino", precision="int8", parent=onnx_int8.sha256,
                              produced_by="pipeline.stages.qat_export", config={"source": str(onnx_int8.path)},
                              extra_files=[final.with_suffix(".bin")])
    art.save()
    return art
