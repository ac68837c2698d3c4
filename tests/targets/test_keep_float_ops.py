"""``keep_float_ops`` names op types (ONNX spelling) that every INT8 exporter leaves in float, on CNNs too.

The detector example needs it: its two scales' raw outputs (box distances and class logits) meet in one Concat, and a
quantized Concat puts both on one 8-bit scale (ORT lost 1.6 mAP@0.5:0.95 there)."""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from targets.export_config import ExportConfig
from targets.op_report import float_ops

MODULES = {"onnx": "targets.export_onnx", "openvino": "targets.export_openvino", "tflite": "targets.export_tflite"}


def _onnx_concat_quantized(path: str) -> bool:
    """Whether the QDQ graph re-quantizes what its Concat outputs (the op report counts Concat as free)."""
    import onnx

    graph = onnx.load(path).graph
    outs = {o for n in graph.node if n.op_type == "Concat" for o in n.output}
    return any(n.op_type == "QuantizeLinear" and n.input[0] in outs for n in graph.node)


class TwoScales(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 6, 1))
        self.b = nn.Sequential(nn.Conv2d(1, 8, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(8, 6, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.a(x).flatten(2), self.b(x).flatten(2)], 2).transpose(1, 2)


def _export(backend: str, keep: list[str] | None, out: Path):
    pytest.importorskip(MODULES[backend])
    export = importlib.import_module(MODULES[backend]).export
    torch.manual_seed(0)
    model = TwoScales().eval()
    calib = np.random.default_rng(0).random((32, 1, 8, 8)).astype(np.float32)
    cfg = ExportConfig(precision="int8", name="two", calib_samples=32, keep_float_ops=keep)
    return export(model, (torch.from_numpy(calib[:1]),), calib, cfg, out)


@pytest.mark.onnx
def test_op_concat_keeps_the_onnx_concat_output_float(tmp_path: Path):
    assert _onnx_concat_quantized(_export("onnx", None, tmp_path / "all").path)
    kept = _export("onnx", ["Concat"], tmp_path / "kept")
    assert not _onnx_concat_quantized(kept.path)
    assert float_ops(kept.path, "onnx")["quantized_ops"] >= 2          # the convolutions are still INT8


@pytest.mark.parametrize("backend", [pytest.param("openvino", marks=pytest.mark.openvino),
                                     pytest.param("tflite", marks=pytest.mark.tflite)])
def test_op_concat_is_understood_by_the_other_int8_backends(backend: str, tmp_path: Path):
    """OpenVINO (NNCF ignored types) and TFLite (PT2E annotation of aten.cat) take the ONNX spelling; the rest of
    the graph stays INT8. The detector example's figures (README) show the effect on a real model."""
    art = _export(backend, ["Concat"], tmp_path)
    recorded = art.metadata.get("keep_float_ops") or art.metadata.get("op_plan", {}).get("keep_float_ops")
    assert recorded == ["Concat"], art.metadata
    assert float_ops(art.path, backend)["quantized_ops"] >= 2
