"""ONNX adapter: FP32, FP16 and INT8 artifacts reproduce their parent; INT8 picks its scheme per target CPU."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from targets.errors import ExportError, OutputMismatchError
from targets.export_config import ExportConfig
from targets.export_onnx import choose_int8_scheme, export
from targets.validate import validate
from tests.targets._models import WithCustomOp, corrupt_copy, example, moved, tiny_cnn

pytestmark = pytest.mark.onnx


@pytest.fixture(scope="module")
def setup(tiny):
    arts = {p: tiny.artifact("onnx", p) for p in ("fp32", "fp16", "int8")}
    return tiny.model, tiny.calib, tiny.x, tiny.ref, arts


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_onnx_export_matches_parent_when_precision_is(setup, precision):
    _, _, x, ref, arts = setup
    art = arts[precision]
    assert art.path.endswith(f"tiny.{precision}.onnx") and art.precision == precision
    report = validate(art, x, ref)
    assert report["top1_agreement"] >= 0.95
    if precision != "int8":
        assert report["max_abs_error"] < (1e-4 if precision == "fp32" else 5e-2)


def test_onnx_int8_graph_has_uint8_activations_and_int8_weights(setup):
    art = setup[4]["int8"]
    graph = onnx.load(art.path).graph
    zero_points = {i.name: i.data_type for i in graph.initializer}
    q_nodes = [n for n in graph.node if n.op_type == "QuantizeLinear"]
    convs = [n for n in graph.node if n.op_type == "Conv"]
    assert q_nodes and convs
    act_types = {zero_points.get(n.input[2]) for n in q_nodes if len(n.input) > 2 and n.input[2] in zero_points}
    assert onnx.TensorProto.UINT8 in act_types
    weight_dq = [n for n in graph.node if n.op_type == "DequantizeLinear" and n.input[0] in zero_points
                 and zero_points[n.input[0]] == onnx.TensorProto.INT8]
    assert len(weight_dq) >= len(convs)  # every conv's weight is stored in int8
    assert art.metadata["int8"]["activation_type"] == "uint8" and "why" in art.metadata["int8"]


def _kernels_after_ort_optimization(path: str, tmp_path) -> dict[str, int]:
    """Op counts of the graph ONNX Runtime actually executes (its QDQ fusions applied, no layout transforms)."""
    import collections

    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    opts.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    return collections.Counter(n.op_type for n in onnx.load(opts.optimized_model_filepath).graph.node)


def test_onnx_int8_runs_every_conv_on_integer_kernels_with_float_biases_in_the_file(setup, tmp_path):
    art = setup[4]["int8"]
    graph = onnx.load(art.path).graph
    n_conv = sum(n.op_type == "Conv" for n in graph.node)
    biases = [i for i in graph.initializer if i.name.endswith(".bias")]
    assert biases and {b.data_type for b in biases} == {onnx.TensorProto.FLOAT}
    assert art.metadata["int8"]["bias"] == "float32"
    ops = _kernels_after_ort_optimization(art.path, tmp_path)
    assert ops["QLinearConv"] == n_conv and ops["Conv"] == 0  # a float bias must not block the QDQ fusion


def test_onnx_int8_scheme_uses_reduce_range_only_on_x86_without_vnni():
    no_vnni = choose_int8_scheme(ExportConfig(precision="int8", target_arch="x86_64", target_vnni=False))
    vnni = choose_int8_scheme(ExportConfig(precision="int8", target_arch="x86_64", target_vnni=True))
    arm = choose_int8_scheme(ExportConfig(precision="int8", target_arch="aarch64"))
    assert no_vnni["reduce_range"] is True and vnni["reduce_range"] is False and arm["reduce_range"] is False
    assert {no_vnni["activation_type"], vnni["activation_type"], arm["activation_type"]} == {"uint8"}
    forced = choose_int8_scheme(ExportConfig(precision="int8", onnx_activation_type="int8", reduce_range=True))
    assert forced["activation_type"] == "int8" and forced["reduce_range"] is True


def test_onnx_int8_leaves_keep_float_layers_in_float(setup, tmp_path):
    model, calib, x, ref, _ = setup
    art = export(model, example(), calib, ExportConfig(name="kf", precision="int8", keep_float=["fc"]), tmp_path)
    graph = onnx.load(art.path).graph
    gemm = [n for n in graph.node if n.op_type in ("Gemm", "MatMul")]
    floats = {i.name for i in graph.initializer if i.data_type == onnx.TensorProto.FLOAT}
    assert gemm and all(n.input[1] in floats for n in gemm)  # the fc weight is consumed as a float initializer
    validate(art, x, ref)


def test_onnx_int8_names_an_unknown_keep_float_layer(setup, tmp_path):
    model, calib, *_ = setup
    with pytest.raises(ExportError, match="keep_float layers not found.*no_such_layer"):
        export(model, example(), calib, ExportConfig(name="kf", precision="int8", keep_float=["no_such_layer"]),
               tmp_path)


def test_onnx_export_names_backend_op_and_layer_when_op_is_unsupported(tmp_path):
    with pytest.raises(ExportError) as info:
        export(WithCustomOp().eval(), example(), None, ExportConfig(name="bad"), tmp_path)
    err = info.value
    assert err.backend == "onnx" and err.op == "edgepipe_test.scramble" and err.layer == "mix"
    assert "edgepipe_test.scramble" in str(err) and err.exit_code == 2
    assert not list(tmp_path.glob("bad*"))


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_onnx_validate_catches_flipped_weight_bytes(setup, tmp_path, precision):
    _, _, x, ref, arts = setup
    art = arts[precision]
    graph = onnx.load(art.path).graph
    weight = max((i for i in graph.initializer if i.raw_data and len(i.dims) >= 2), key=lambda i: len(i.raw_data))
    bad = moved(art, corrupt_copy(art.path, tmp_path, needle=weight.raw_data))
    with pytest.raises(OutputMismatchError) as info:
        validate(bad, x, ref)
    text = " | ".join(info.value.failures)
    assert "changed since export" in text
    assert "cosine" in text or "max abs error" in text or "NaN" in text


def test_onnx_validate_reports_a_truncated_file_without_a_traceback(setup, tmp_path):
    _, _, x, ref, arts = setup
    bad = moved(arts["fp32"], corrupt_copy(arts["fp32"].path, tmp_path, truncate=True))
    with pytest.raises(OutputMismatchError, match=r"cannot load or run .*tiny\.fp32\.onnx"):
        validate(bad, x, ref)


def test_onnx_int8_refuses_to_export_without_calibration_data(tmp_path):
    with pytest.raises(ExportError, match="calibration"):
        export(tiny_cnn(), example(), np.zeros((0, 1, 16, 16), np.float32), ExportConfig(precision="int8"), tmp_path)
