"""PyTorch -> ONNX with the dynamo exporter (``torch.onnx.export(dynamo=True)``)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch

from targets.artifact import Artifact
from targets.errors import ExportError
from targets.export_config import ExportConfig


def _export_fp32(model: torch.nn.Module, example_inputs: tuple[torch.Tensor, ...], path: Path, opset: int) -> None:
    try:
        program = torch.onnx.export(model.eval(), example_inputs, dynamo=True, opset_version=opset,
                                    input_names=["input"], output_names=["output"], verbose=False)
        program.save(str(path))
    except Exception as exc:
        raise ExportError("onnx", str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__) from exc


def export(model: torch.nn.Module, example_inputs: tuple[torch.Tensor, ...], calib: np.ndarray | None,
           cfg: ExportConfig, out_dir: Path) -> Artifact:
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / f"{cfg.name}.{cfg.precision}.onnx"
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".onnx-") as tmp:
        tmp_path = Path(tmp) / final.name
        if cfg.precision != "fp32":
            raise ExportError("onnx", f"precision {cfg.precision} is not implemented yet")
        _export_fp32(model, example_inputs, tmp_path, cfg.opset)
        tmp_path.replace(final)
    art = Artifact.from_files(final, backend="onnx", precision=cfg.precision, parent=cfg.parent,
                              produced_by="targets.export_onnx", config=cfg.model_dump())
    art.save()
    return art
