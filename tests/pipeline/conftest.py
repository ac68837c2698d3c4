"""Fixtures for the pipeline tests; the run-folder fabricator lives in runfolder.py (imported by the tests)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.pipeline.runfolder import make_run


@pytest.fixture(scope="session")
def tiny_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real ONNX classifier (input 1x1x8x8, 10 classes) exported once per session with the dynamo exporter."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.Linear(4 * 8 * 8, 10)).eval()
    path = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    program = torch.onnx.export(model, (torch.randn(1, 1, 8, 8),), dynamo=True, input_names=["input"],
                                output_names=["output"], verbose=False)
    program.save(str(path))
    return path


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """A complete, gate-failing run (tflite-int8 failed to export) with placeholder model files."""
    return make_run(tmp_path / "run")
