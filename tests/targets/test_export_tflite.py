"""TFLite (LiteRT) adapter: FP32, FP16-weight and full-integer INT8 models reproduce their parent.

TFLite conversion is the slowest of the three, so the module converts each precision once and every test shares them.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from targets.errors import ExportError, OutputMismatchError
from targets.export_config import ExportConfig
from targets.validate import validate
from tests.targets._models import WithCustomOp, corrupt_copy, data, example, moved, tiny_cnn

pytestmark = pytest.mark.tflite
export = pytest.importorskip("targets.export_tflite").export
Interpreter = pytest.importorskip("ai_edge_litert.interpreter").Interpreter


@pytest.fixture(scope="module")
def setup(tiny):
    arts = {p: tiny.artifact("tflite", p) for p in ("fp32", "fp16", "int8")}
    return tiny.model, tiny.calib, tiny.x, tiny.ref, arts


def _tensor_types(path: str) -> set[str]:
    interp = Interpreter(model_path=path)
    return {np.dtype(d["dtype"]).name for d in interp.get_tensor_details()}


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_tflite_export_matches_parent_when_precision_is(setup, precision):
    _, _, x, ref, arts = setup
    report = validate(arts[precision], x, ref)
    assert report["top1_agreement"] >= 0.93
    if precision == "fp32":
        assert report["max_abs_error"] < 1e-3


def test_tflite_fp16_stores_float16_weights_and_int8_is_full_integer(setup):
    arts = setup[4]
    assert "float16" in _tensor_types(arts["fp16"].path)
    interp = Interpreter(model_path=arts["int8"].path)
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    assert inp["dtype"] == np.int8 and out["dtype"] == np.int8
    assert inp["quantization"][0] > 0 and out["quantization"][0] > 0
    assert "float32" not in {np.dtype(d["dtype"]).name for d in interp.get_tensor_details()
                             if len(d["shape"]) == 4 and d["name"] != inp["name"]}


def test_tflite_export_names_backend_op_and_layer_when_op_is_unsupported(tmp_path):
    with pytest.raises(ExportError) as info:
        export(WithCustomOp().eval(), example(), None, ExportConfig(name="bad"), tmp_path)
    err = info.value
    assert err.backend == "tflite" and err.op == "edgepipe_test.scramble" and err.layer == "mix"
    assert not list(tmp_path.glob("bad*"))


def test_tflite_int8_leaves_keep_float_layers_in_float(setup, tmp_path):
    model, calib, x, ref, arts = setup
    kept = export(model, example(), calib, ExportConfig(name="kf", precision="int8", keep_float=["fc"]), tmp_path)
    ops = {d["op_name"] for d in Interpreter(model_path=kept.path)._get_ops_details()}
    full = {d["op_name"] for d in Interpreter(model_path=arts["int8"].path)._get_ops_details()}
    out = Interpreter(model_path=kept.path).get_output_details()[0]
    assert out["dtype"] == np.float32 and full != ops  # the classifier now computes, and returns, float32
    assert "DEQUANTIZE" in ops and "CONV_2D" in ops
    assert kept.metadata["keep_float"] == ["fc"]
    validate(kept, x, ref)


def test_tflite_int8_names_an_unknown_keep_float_layer(tmp_path):
    with pytest.raises(ExportError, match="keep_float layers not found.*no_such_layer"):
        export(tiny_cnn(), example(), data(4, 0), ExportConfig(precision="int8", keep_float=["no_such_layer"]),
               tmp_path)


def test_tflite_validate_catches_flipped_int8_weights(setup, tmp_path):
    _, _, x, ref, arts = setup
    art = arts["int8"]
    interp = Interpreter(model_path=art.path)
    fc = [d for d in interp.get_tensor_details() if list(d["shape"]) == [10, 64] and d["dtype"] == np.int8]
    assert fc, "the int8 fc weights were not found"
    weights = interp.get_tensor(fc[0]["index"]).tobytes()
    bad = moved(art, corrupt_copy(art.path, tmp_path, needle=weights))
    with pytest.raises(OutputMismatchError, match="cosine|top-1"):
        validate(bad, x, ref)


def test_tflite_validate_reports_a_truncated_file_without_a_traceback(setup, tmp_path):
    _, _, x, ref, arts = setup
    bad = moved(arts["fp32"], corrupt_copy(arts["fp32"].path, tmp_path, truncate=True))
    with pytest.raises(OutputMismatchError, match=r"cannot load or run .*tiny\.fp32\.tflite"):
        validate(bad, x, ref)


class _SoftArgmaxPeak(torch.nn.Module):
    """A face-detector head in miniature: a soft-argmax (softmax over a conv's heat map times a coordinate grid),
    a global max pool of the features, a tanh-bounded size. LiteRT had no adaptive_max_pool2d, and the int8 SOFTMAX
    took its consumer's observed output scale, which TFLite refuses at load ("output->params.scale not near
    1.f / 256")."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.heat = torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.Conv2d(8, 1, 1)
        self.peak, self.size = torch.nn.AdaptiveMaxPool2d(1), torch.nn.Linear(8, 2)
        self.register_buffer("grid", torch.arange(64, dtype=torch.float32), persistent=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = torch.relu(self.conv(x))
        w = torch.softmax(self.heat(f).flatten(1), 1)
        return (w * self.grid).sum(1, keepdim=True), 8.0 * torch.tanh(self.size(self.peak(f).flatten(1)))


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_tflite_exports_a_global_max_pool_and_an_int8_softmax_that_loads(tmp_path, precision):
    from targets.runner import bench

    torch.manual_seed(0)
    model = _SoftArgmaxPeak().eval()
    x = torch.randn(64, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    art = export(model, (x[:1],), x.numpy(), ExportConfig(name="peak", precision=precision, calib_samples=64),
                 tmp_path)
    got = bench.predict(bench.load(art.path, "tflite", threads=1, input_names=["input"]), x.numpy())
    with torch.no_grad():
        ref = [t.numpy() for t in model(x)]
    tol = 1e-4 if precision == "fp32" else 0.1       # int8: a few quantization steps of each output's range
    for g, r in zip(got, ref, strict=True):
        assert g.shape == r.shape and np.abs(g - r).max() <= tol * max(1.0, np.abs(r).max()), (g[:3], r[:3])


class _BoxAndScoreTail(torch.nn.Module):
    """A YOLOv8-like tail: pixel-scale boxes and sigmoid scores in one concat, inside a module kept float."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x[:, :2] * 32.0 + 32.0, torch.sigmoid(x[:, 2:])], 1)


class _ConvWithTail(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3, padding=1)
        self.tail = _BoxAndScoreTail()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tail(self.conv(x).flatten(2))


def test_tflite_int8_keeps_a_kept_float_sigmoid_out_of_the_fixed_output_scale(tmp_path):
    # the fixed 1/256 sigmoid scale used to be forced onto kept-float sigmoids too: the concat then shared it and
    # every box value above 1.0 clipped (the YOLOv8 example's tflite-int8 scored mAP 0)
    torch.manual_seed(0)
    model = _ConvWithTail().eval()
    calib = np.random.default_rng(0).standard_normal((32, 1, 8, 8)).astype(np.float32)
    art = export(model, (torch.zeros(1, 1, 8, 8),), calib,
                 ExportConfig(name="tail", precision="int8", keep_float=["tail"]), tmp_path)
    interp = Interpreter(model_path=art.path)
    interp.allocate_tensors()
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    assert out["dtype"] == np.float32
    scale, zero = inp["quantization"]
    x = calib[:1]
    interp.set_tensor(inp["index"], np.round(x / scale + zero).clip(-128, 127).astype(inp["dtype"]))
    interp.invoke()
    got = interp.get_tensor(out["index"])
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    assert ref[:, :2].max() > 5 and np.abs(got[:, :2] - ref[:, :2]).max() < 2.0   # boxes keep their pixel scale
    assert np.abs(got[:, 2:] - ref[:, 2:]).max() < 0.1
