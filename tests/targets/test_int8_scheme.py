"""ExportConfig.int8_scheme: "auto" resolves by model family and backend, the choice is recorded in the artifact's
metadata, explicit "static" keeps the calibrated QDQ scheme, and a trained attention encoder's dynamic onnx-int8
artifact stays faithful to the original."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from targets import get_exporter
from targets._export_common import resolve_int8_scheme
from targets.errors import ExportError
from targets.export_config import ExportConfig
from targets.runner import bench
from tests.targets._models import data, example, tiny_cnn

ROOT = Path(__file__).resolve().parents[2]
NAMES = ["input_ids", "attention_mask"]


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def encoder():
    """examples/tokens' encoder (1 block, width 32), trained 8 epochs on digits-as-tokens: ~12 s."""
    tokens = _load("tint8_tokens_data", ROOT / "examples" / "tokens" / "data.py")
    models = _load("tint8_tokens_models", ROOT / "examples" / "tokens" / "models.py")
    torch.manual_seed(0)
    model = models.TokenEncoder(dim=32, num_heads=4, hidden=64, depth=1)
    split = tokens.splits()
    opt = torch.optim.AdamW(model.parameters(), lr=5e-3)
    loader = torch.utils.data.DataLoader(split["train"], batch_size=64, shuffle=True,
                                         generator=torch.Generator().manual_seed(0))
    model.train()
    for _ in range(8):
        for x, y in loader:
            opt.zero_grad()
            nn.functional.cross_entropy(model(x["input_ids"], x["attention_mask"]), y).backward()
            opt.step()
    model.eval()
    ev, cal = split["eval"], split["calib"]
    feeds = {"input_ids": ev.ids[:120].numpy(), "attention_mask": ev.mask[:120].numpy()}
    with torch.no_grad():
        ref = model(ev.ids[:120], ev.mask[:120]).numpy()
    assert (ref.argmax(1) == ev.labels[:120].numpy()).mean() > 0.5   # trained, not a random net
    calib = {"input_ids": cal.ids.numpy(), "attention_mask": cal.mask.numpy()}
    return model, (ev.ids[:1], ev.mask[:1]), calib, feeds, ref


def _cfg(**kw) -> ExportConfig:
    return ExportConfig(precision="int8", input_names=NAMES, output_names=["logits"], calib_samples=64, **kw)


def _outputs(art, feeds: dict[str, np.ndarray]) -> np.ndarray:
    sess = bench.load(str(art.path), art.backend, 1, input_names=art.metadata.get("inputs"))
    return np.concatenate([sess.run({k: v[i:i + 1] for k, v in feeds.items()})[0]
                           for i in range(len(feeds[NAMES[0]]))])


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean(np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))))


def test_auto_is_static_for_convolutional_nets_and_per_backend_for_attention():
    for backend in ("onnx", "openvino", "tflite"):
        assert resolve_int8_scheme(backend, "auto", transformer=False)["scheme"] == "static"
        assert resolve_int8_scheme(backend, "static", transformer=True)["scheme"] == "static"
    got = {b: resolve_int8_scheme(b, "auto", transformer=True) for b in ("onnx", "openvino", "tflite")}
    assert {b: r["scheme"] for b, r in got.items()} == {"onnx": "dynamic", "openvino": "smoothquant",
                                                        "tflite": "static"}
    assert all(r["requested"] == "auto" and "attention" in r["scheme_why"] for r in got.values())


@pytest.mark.parametrize("backend,scheme", [("onnx", "smoothquant"), ("openvino", "dynamic"),
                                            ("tflite", "smoothquant"), ("onnx", "weight_only")])
def test_a_scheme_the_backend_does_not_offer_is_a_one_line_export_error(backend, scheme):
    with pytest.raises(ExportError, match=f"int8_scheme '{scheme}' is not implemented for this backend") as info:
        resolve_int8_scheme(backend, scheme, transformer=True)
    assert "offers auto, static" in str(info.value.hint)


@pytest.mark.onnx
def test_onnx_auto_on_a_cnn_stays_static_qdq(tmp_path):
    art = get_exporter("onnx")(tiny_cnn(), example(), data(32, 0), ExportConfig(precision="int8"), tmp_path)
    assert art.metadata["int8"]["scheme"] == "static" and art.metadata["int8"]["requested"] == "auto"
    ops = {n.op_type for n in onnx.load(str(art.path)).graph.node}
    assert "QuantizeLinear" in ops and "DynamicQuantizeLinear" not in ops


@pytest.mark.onnx
def test_onnx_auto_on_attention_is_dynamic_and_keeps_the_trained_encoder(encoder, tmp_path):
    model, ex, calib, feeds, ref = encoder
    art = get_exporter("onnx")(model, ex, calib, _cfg(), tmp_path / "auto")
    meta = art.metadata["int8"]
    assert meta["scheme"] == "dynamic" and "attention" in meta["scheme_why"]
    assert "quantize_dynamic" in art.metadata["quantizer"]
    nodes = onnx.load(str(art.path)).graph.node
    ops = [n.op_type for n in nodes]
    assert "DynamicQuantizeLinear" in ops and "MatMulInteger" in ops and "QuantizeLinear" not in ops
    # attention's activation x activation MatMuls (scores, context) stay float: 2 of them in the one block
    assert ops.count("MatMul") >= 2
    from targets.op_report import onnx_ops

    report = onnx_ops(str(art.path))   # ORT's fused dynamic kernels count as integer, not as ops left in float
    assert report["quantized_ops"] >= 4 and "DynamicQuantizeMatMul" not in report["float_by_type"]
    assert "MatMulIntegerToFloat" not in report["float_by_type"]
    out = _outputs(art, feeds)
    assert _cosine(out, ref) >= 0.99
    assert np.mean(out.argmax(1) == ref.argmax(1)) >= 0.95


@pytest.mark.onnx
def test_onnx_explicit_static_reproduces_the_calibrated_qdq_scheme(encoder, tmp_path):
    model, ex, calib, feeds, ref = encoder
    art = get_exporter("onnx")(model, ex, calib, _cfg(int8_scheme="static"), tmp_path / "static")
    meta = art.metadata["int8"]
    assert meta["scheme"] == "static" and meta["requested"] == "static" and meta["format"] == "QDQ"
    assert "quantize_static" in art.metadata["quantizer"] and art.metadata["calib_samples"] == 64
    assert meta["op_plan"]["transformer"] is True   # today's transformer plan: weight products only
    ops = {n.op_type for n in onnx.load(str(art.path)).graph.node}
    assert "QuantizeLinear" in ops and "DynamicQuantizeLinear" not in ops
    assert _cosine(_outputs(art, feeds), ref) >= 0.98


@pytest.mark.openvino
def test_openvino_auto_on_attention_is_smoothquant_and_recorded(encoder, tmp_path):
    model, ex, calib, feeds, ref = encoder
    auto = get_exporter("openvino")(model, ex, calib, _cfg(), tmp_path / "auto")
    assert auto.metadata["int8"]["scheme"] == "smoothquant" and auto.metadata["preset"] == "mixed"
    assert auto.metadata["op_plan"]["smooth_quant_alpha_matmul"] > 0
    assert _cosine(_outputs(auto, feeds), ref) >= 0.99
    static = get_exporter("openvino")(model, ex, calib, _cfg(int8_scheme="static"), tmp_path / "static")
    assert static.metadata["int8"]["scheme"] == "static" and static.metadata["preset"] == "performance"
    assert "smooth_quant_alpha_matmul" not in static.metadata["op_plan"]


@pytest.mark.tflite
def test_tflite_dynamic_on_request_is_dynamic_range_with_float_io(encoder, tmp_path):
    model, ex, calib, feeds, ref = encoder
    art = get_exporter("tflite")(model, ex, calib, _cfg(int8_scheme="dynamic"), tmp_path / "dyn")
    assert art.metadata["int8"]["scheme"] == "dynamic" and art.metadata["calib_samples"] == 0
    assert "dynamic-range" in art.metadata["scheme"]
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(art.path))
    tensors = interp.get_tensor_details()
    assert any(t["dtype"] == np.int8 for t in tensors)                      # int8 weights in the file
    assert all(d["dtype"] != np.int8 for d in interp.get_input_details() + interp.get_output_details())
    assert _cosine(_outputs(art, feeds), ref) >= 0.99
    with pytest.raises(ExportError, match="keep_float is not applied by the dynamic-range scheme"):
        get_exporter("tflite")(model, ex, calib, _cfg(int8_scheme="dynamic", keep_float=["head"]), tmp_path / "k")


@pytest.mark.openvino
def test_openvino_from_onnx_qdq_refuses_a_dynamic_onnx_int8(encoder, tmp_path):
    model, ex, calib, _, _ = encoder
    dyn = get_exporter("onnx")(model, ex, calib, _cfg(), tmp_path / "onnx")
    with pytest.raises(ExportError, match="needs a static QDQ onnx-int8, and it was made with int8_scheme dynamic"):
        get_exporter("openvino")(model, ex, calib, _cfg(ov_int8_from="onnx-qdq"), tmp_path / "ov",
                                 sources={"onnx-int8": dyn})
