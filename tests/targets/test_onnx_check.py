"""The artifact check catches an export that does not reproduce its parent."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from targets.errors import OutputMismatchError
from targets.export_config import ExportConfig
from targets.export_onnx import export
from targets.validate import validate

pytestmark = pytest.mark.onnx


def _net(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                               torch.nn.Flatten(), torch.nn.Linear(4, 10)).eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    model = _net(0)
    art = export(model, (torch.zeros(1, 1, 8, 8),), None, ExportConfig(name="net"), tmp_path_factory.mktemp("a"))
    x = np.random.default_rng(0).standard_normal((32, 1, 8, 8)).astype(np.float32)
    return model, art, x


def test_validate_accepts_the_faithful_export(exported):
    model, art, x = exported
    ref = model(torch.from_numpy(x)).detach().numpy()
    report = validate(art, x, ref, labels=ref.argmax(1))
    assert report["max_abs_error"] < 1e-4
    assert report["top1_agreement"] == 1.0 and report["accuracy"] == 1.0


def test_validate_catches_a_deliberately_wrong_model(exported):
    _, art, x = exported
    wrong = _net(1)(torch.from_numpy(x)).detach().numpy()
    with pytest.raises(OutputMismatchError) as info:
        validate(art, x, wrong)
    assert any("max abs error" in f for f in info.value.failures)
    assert "onnx-fp32" in str(info.value) and info.value.exit_code == 3


def test_validate_reports_a_shape_mismatch(exported):
    model, art, x = exported
    ref = model(torch.from_numpy(x)).detach().numpy()[:, :5]
    with pytest.raises(OutputMismatchError, match=r"output shape \[32, 10\] != expected \[32, 5\]"):
        validate(art, x, ref)


def test_export_leaves_no_partial_file_when_the_exporter_fails(tmp_path):
    @torch.library.custom_op("edgepipe_test::no_onnx_lowering", mutates_args=())
    def no_onnx_lowering(x: torch.Tensor) -> torch.Tensor:
        return x * 2

    @no_onnx_lowering.register_fake
    def _(x):
        return torch.empty_like(x)

    class Bad(torch.nn.Module):
        def forward(self, x):
            return no_onnx_lowering(x)  # an op with no ONNX translation

    from targets.errors import ExportError

    with pytest.raises(ExportError, match="onnx"):
        export(Bad(), (torch.zeros(1, 1, 8, 8),), None, ExportConfig(name="bad"), tmp_path)
    assert not list(tmp_path.glob("bad*"))
