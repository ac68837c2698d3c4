"""OpenVINO adapter: static-shape IR in fp32 or fp16 on disk, NNCF INT8, each checked against its parent."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from targets.errors import ExportError, OutputMismatchError
from targets.export_config import ExportConfig
from targets.runner import bench
from targets.validate import validate
from tests.targets._models import WithCustomOp, corrupt_copy, example, moved

pytestmark = pytest.mark.openvino
export = pytest.importorskip("targets.export_openvino").export


@pytest.fixture(scope="module")
def setup(tiny):
    arts = {p: tiny.artifact("openvino", p) for p in ("fp32", "fp16", "int8")}
    return tiny.model, tiny.calib, tiny.x, tiny.ref, arts


def _fake_quantize_count(xml: str) -> int:
    return len(re.findall(r'type="FakeQuantize"', Path(xml).read_text()))


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_openvino_export_matches_parent_when_precision_is(setup, precision):
    _, _, x, ref, arts = setup
    art = arts[precision]
    report = validate(art, x, ref)
    assert report["top1_agreement"] >= 0.95
    assert [Path(f).suffix for f in art.files] == [".xml", ".bin"]
    assert art.bytes == sum(Path(f).stat().st_size for f in art.files)
    if precision == "fp32":
        assert report["max_abs_error"] < 1e-4


def test_openvino_fp32_keeps_fp32_weights_and_a_static_input_shape(setup):
    model, _, _, _, arts = setup
    xml = Path(arts["fp32"].path).read_text()
    n_params = sum(p.numel() for p in model.parameters())
    assert Path(arts["fp32"].files[1]).stat().st_size >= 4 * (n_params - 16)  # not compressed to fp16
    assert 'element_type="f16"' not in xml
    session = bench.load(arts["fp32"].path, "openvino", 1)
    assert session.input_shape == [1, 1, 16, 16] and session.io["precision_hint"] == "f32"


def test_openvino_int8_is_quantized_and_keep_float_is_honoured(setup, tmp_path):
    model, calib, x, ref, arts = setup
    assert _fake_quantize_count(arts["int8"].path) >= 3
    kept = export(model, example(), calib, ExportConfig(name="kf", precision="int8", keep_float=["fc"]), tmp_path)
    assert _fake_quantize_count(kept.path) < _fake_quantize_count(arts["int8"].path)
    validate(kept, x, ref)


def test_openvino_names_an_unknown_keep_float_layer(setup, tmp_path):
    model, calib, *_ = setup
    with pytest.raises(ExportError, match="keep_float layers not found.*nope"):
        export(model, example(), calib, ExportConfig(precision="int8", keep_float=["nope"]), tmp_path)


def test_openvino_export_names_backend_op_and_layer_when_op_is_unsupported(tmp_path):
    with pytest.raises(ExportError) as info:
        export(WithCustomOp().eval(), example(), None, ExportConfig(name="bad"), tmp_path)
    err = info.value
    assert err.backend == "openvino" and err.op == "edgepipe_test.scramble" and err.layer == "mix"
    assert not list(tmp_path.glob("bad*"))


def test_openvino_validate_catches_flipped_bytes_in_the_bin(setup, tmp_path):
    _, _, x, ref, arts = setup
    art = arts["fp32"]
    xml_copy = str(tmp_path / Path(art.path).name)
    Path(xml_copy).write_bytes(Path(art.path).read_bytes())  # the .xml intact, the weights in the .bin flipped
    corrupt_copy(art.files[1], tmp_path, flip_at=0.3, n=256)
    with pytest.raises(OutputMismatchError, match="max abs error|cosine|NaN"):
        validate(moved(art, xml_copy), x, ref)


def test_openvino_validate_reports_a_truncated_bin_without_a_traceback(setup, tmp_path):
    _, _, x, ref, arts = setup
    art = arts["fp32"]
    xml_copy = str(tmp_path / Path(art.path).name)
    Path(xml_copy).write_bytes(Path(art.path).read_bytes())
    corrupt_copy(art.files[1], tmp_path, truncate=True)
    with pytest.raises(OutputMismatchError, match=r"cannot load or run .*tiny\.fp32\.xml"):
        validate(moved(art, xml_copy), x, ref)


def test_openvino_fp16_stores_half_weights_and_asks_the_plugin_for_f16_compute(setup):
    _, _, x, _, arts = setup
    fp16, fp32 = arts["fp16"], arts["fp32"]
    assert 'element_type="f16"' in Path(fp16.path).read_text()
    assert Path(fp16.files[1]).stat().st_size < 0.6 * Path(fp32.files[1]).stat().st_size
    assert fp16.metadata["weights_on_disk"] == "fp16"
    session = bench.load(fp16.path, "openvino", 1)
    assert session.io["precision_requested"] == "f16"
    # what the plugin used, read back: bf16 on this AVX512-BF16 host, f32 on CPUs with no half-precision path
    assert session.io["precision_hint"] in ("f16", "bf16", "f32")
    assert bench.load(fp32.path, "openvino", 1).io["precision_requested"] == "f32"
    assert session.run(x[:1])[0].shape == (1, 10)


def test_openvino_keep_float_runs_a_bn_folded_conv_in_f32(tmp_path):
    """The torch frontend names a conv fused with its batch norm ``Multiply_NNNN``; keeping its module in float must
    keep that conv (and its input quantizer) out of INT8, as the CPU plugin's runtime model shows."""
    import numpy as np
    import torch
    from torch import nn

    from targets.op_report import openvino_ops

    torch.manual_seed(0)
    model = nn.Sequential(nn.Sequential(nn.Conv2d(1, 8, 3, bias=False), nn.BatchNorm2d(8), nn.ReLU()),
                          nn.Sequential(nn.Conv2d(8, 8, 3, bias=False), nn.BatchNorm2d(8), nn.ReLU())).eval()
    calib = np.random.default_rng(0).normal(size=(16, 1, 12, 12)).astype(np.float32)
    ex = (torch.zeros(1, 1, 12, 12),)
    floats = {}
    for keep in ([], ["1"]):
        art = export(model, ex, calib, ExportConfig(name="bn", precision="int8", keep_float=keep,
                                                    calib_samples=16), tmp_path / (keep[0] if keep else "all"))
        floats[tuple(keep)] = openvino_ops(art.path)["float_by_type"].get("Convolution", 0)
    assert floats[()] == 0 and floats[("1",)] == 1, floats


class _Attention:
    """A one-block self-attention classifier: two weight MatMuls (qkv, head) and two activation x activation
    MatMuls (scores, context) -- the shape NNCF's transformer scheme still puts activation quantizers on."""

    @staticmethod
    def build():
        import torch
        from torch import nn

        class Block(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.qkv, self.head = nn.Linear(8, 24), nn.Linear(8, 4)

            def forward(self, x):
                q, k, v = self.qkv(x).chunk(3, -1)
                att = torch.softmax(q @ k.transpose(1, 2) / 8 ** 0.5, -1)
                return self.head((att @ v).mean(1))

        torch.manual_seed(0)
        return Block().eval()


def _fq_fed_matmuls(xml: str) -> tuple[int, int]:
    """(MatMuls with a FakeQuantize on an activation input, MatMuls with no constant input) in a saved IR."""
    import openvino as ov

    def through(node):
        while node.get_type_name() in ("Convert", "Reshape", "Transpose", "Unsqueeze"):
            node = node.input_value(0).get_node()
        return node

    fq, act = 0, 0
    for op in ov.Core().read_model(xml).get_ops():
        if op.get_type_name() != "MatMul":
            continue
        srcs = [through(op.input_value(i).get_node()) for i in range(2)]
        kinds = [s.get_type_name() for s in srcs]
        weights = [s.get_type_name() == "FakeQuantize" and through(s.input_value(0).get_node()).get_type_name()
                   in ("Constant", "Multiply") for s in srcs]
        if "Constant" not in kinds and not any(weights):
            act += 1
            fq += any(k == "FakeQuantize" for k in kinds)
    return fq, act


def test_openvino_int8_keeps_attention_matmuls_float_by_default_and_quantizes_them_when_ops_are_named(tmp_path):
    """Default transformer plan = ONNX Runtime's: INT8 only where a MatMul multiplies by weights. Naming op types in
    keep_float_ops turns the default off (the user decides), and NNCF then quantizes the attention MatMuls too."""
    import numpy as np
    import torch

    model = _Attention.build()
    calib = np.random.default_rng(0).normal(size=(32, 6, 8)).astype(np.float32)
    ex = (torch.from_numpy(calib[:1]),)
    auto = export(model, ex, calib, ExportConfig(name="att", precision="int8", calib_samples=32), tmp_path / "a")
    plan = auto.metadata["op_plan"]
    assert plan["transformer"] and len(plan["float_attention_matmuls"]) == 2
    assert _fq_fed_matmuls(auto.path) == (0, 2)
    assert _fake_quantize_count(auto.path) >= 2                       # the weight MatMuls are still INT8
    named = export(model, ex, calib, ExportConfig(name="att", precision="int8", calib_samples=32,
                                                  keep_float_ops=["LayerNormalization"]), tmp_path / "n")
    assert "float_attention_matmuls" not in named.metadata["op_plan"]
    assert _fq_fed_matmuls(named.path)[0] >= 1


@pytest.mark.parametrize(("calibration", "ranges"), [("minmax", "MINMAX"), ("percentile", "MEAN_QUANTILE")])
def test_openvino_int8_uses_the_recipes_calibration_and_bias_correction(setup, tmp_path, calibration, ranges):
    """ExportConfig.calibration picks NNCF's activation range estimator (its own default, the mean of per-sample
    ranges, clipped the multi-head example's regression head), and ov_bias_correction reaches NNCF: the biases of
    the IR differ between "none" and "fast"."""
    import numpy as np
    import openvino as ov

    model, calib, x, ref, _ = setup
    biases = {}
    for bc in ("none", "fast"):
        art = export(model, example(), calib, ExportConfig(name=f"bc-{bc}", precision="int8", calibration=calibration,
                                                           ov_bias_correction=bc), tmp_path / bc)
        assert art.metadata["op_plan"]["activation_ranges"] == ranges
        assert art.metadata["op_plan"]["bias_correction"] == bc and calibration in art.metadata["calibration"]
        if calibration == "minmax":      # percentile clips this untrained tiny model's tails (not checked here)
            validate(art, x, ref)
        consts = [op for op in ov.Core().read_model(art.path).get_ops() if op.get_type_name() == "Constant"
                  and op.get_element_type().is_real() and len(op.get_output_shape(0)) >= 1]
        biases[bc] = np.concatenate([op.get_data().ravel().astype(np.float64) for op in consts])
    assert biases["none"].shape == biases["fast"].shape and not np.allclose(biases["none"], biases["fast"])
