"""Several named, typed inputs and several outputs through every exporter, the runner and the checks."""

from __future__ import annotations

import copy
import importlib

import numpy as np
import pytest
import torch
from torch import nn

from targets.errors import OutputMismatchError
from targets.export_config import ExportConfig
from targets.runner import bench
from targets.validate import validate

NAMES = ["image", "token_ids"]


class TwoInTwoOut(nn.Module):
    """A float image and int64 token ids in; class logits and an embedding out (two heads)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.embed = nn.Embedding(20, 8)
        self.classes = nn.Linear(16, 5)
        self.vector = nn.Linear(16, 6)

    def forward(self, image: torch.Tensor, token_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = torch.cat([self.conv(image).relu().mean((2, 3)), self.embed(token_ids).mean(1)], 1)
        return self.classes(h), self.vector(h)


def _inputs(n: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"image": rng.standard_normal((n, 1, 8, 8)).astype(np.float32),
            "token_ids": rng.integers(0, 20, (n, 7)).astype(np.int64)}


@pytest.fixture(scope="module")
def two(tmp_path_factory):
    model = TwoInTwoOut().eval()
    x = _inputs(24, 1)
    with torch.no_grad():
        ref = [o.numpy() for o in model(torch.from_numpy(x["image"]), torch.from_numpy(x["token_ids"]))]
    example = tuple(torch.from_numpy(v[:1]) for v in x.values())
    return model, x, ref, example, tmp_path_factory.mktemp("two")


MODULES = {"onnx": "targets.export_onnx", "openvino": "targets.export_openvino", "tflite": "targets.export_tflite"}


@pytest.mark.parametrize("family", [pytest.param("onnx", marks=pytest.mark.onnx),
                                    pytest.param("openvino", marks=pytest.mark.openvino),
                                    pytest.param("tflite", marks=pytest.mark.tflite)])
def test_runner_feeds_every_named_input_with_its_dtype_and_returns_every_output(two, family):
    model, x, ref, example, out = two
    cfg = ExportConfig(name="two", precision="fp32", input_names=NAMES, output_names=["logits", "vector"])
    art = importlib.import_module(MODULES[family]).export(model, example, None, cfg, out / family)
    session = bench.load(art.path, family, input_names=NAMES)
    assert {i["name"]: np.dtype(i["dtype"]).kind for i in session.inputs} == {"image": "f", "token_ids": "i"}
    reversed_feeds = {"token_ids": x["token_ids"], "image": x["image"]}   # by name, whatever the order
    outs = bench.predict(session, reversed_feeds)
    assert len(outs) == 2
    for got, want in zip(outs, ref, strict=True):
        np.testing.assert_allclose(got, want, atol=2e-4, rtol=1e-4)
    report = validate(art, x, ref, classification=False)
    assert report["outputs"] == 2 and len(report["per_output"]) == 2


@pytest.mark.onnx
def test_onnx_fp16_casts_only_float_inputs_and_int8_calibrates_every_input_by_name(two):
    import onnx

    model, x, ref, example, out = two
    export = importlib.import_module(MODULES["onnx"]).export
    cfg = ExportConfig(name="two", input_names=NAMES, output_names=["logits", "vector"])
    fp16 = export(model, example, None, cfg.model_copy(update={"precision": "fp16"}), out / "h")
    types = {i.name: i.type.tensor_type.elem_type for i in onnx.load(fp16.path).graph.input}
    assert types == {"image": onnx.TensorProto.FLOAT, "token_ids": onnx.TensorProto.INT64}
    int8 = export(model, example, x, cfg.model_copy(update={"precision": "int8"}), out / "q")
    report = validate(int8, x, ref, classification=False)
    assert report["cosine"] > 0.95


@pytest.mark.onnx
def test_a_model_whose_second_head_differs_fails_its_check_naming_that_output(two):
    model, x, ref, example, out = two
    broken = copy.deepcopy(model)
    with torch.no_grad():
        broken.vector.weight.mul_(-1.0)                     # the first head is untouched
    export = importlib.import_module(MODULES["onnx"]).export
    art = export(broken, example, None, ExportConfig(name="broken", input_names=NAMES), out / "broken")
    with pytest.raises(OutputMismatchError) as info:
        validate(art, x, ref, classification=True)
    text = str(info.value)
    assert "output 1" in text and "output 0" not in text


@pytest.mark.onnx
def test_runner_cli_writes_every_raw_output_and_refuses_an_oversized_one(two, tmp_path, capsys):
    import json

    model, x, ref, example, out = two
    export = importlib.import_module(MODULES["onnx"]).export
    art = export(model, example, None, ExportConfig(name="cli", input_names=NAMES), out / "cli")
    np.savez(tmp_path / "in.npz", **x, __order__=np.array(NAMES))
    argv = ["--artifact", str(art.path), "--backend", "onnx", "--inputs", str(tmp_path / "in.npz"),
            "--outputs", str(tmp_path / "out.npz"), "--warmup", "1", "--min-iterations", "3", "--min-seconds", "0"]
    assert bench.main(argv) == 0
    rec = json.loads(capsys.readouterr().out)
    assert rec["outputs"]["count"] == 2 and "accuracy" not in rec          # the runner knows no metric
    with np.load(tmp_path / "out.npz") as got:
        np.testing.assert_allclose(got["out1"], ref[1], atol=1e-4)
    assert bench.main([*argv[:-6], "--outputs", str(tmp_path / "big.npz"), "--max-output-mb", "0.0001",
                       *argv[-6:-2][:0], "--warmup", "1", "--min-iterations", "3", "--min-seconds", "0"]) == 2
    assert "data.eval_samples" in capsys.readouterr().out and not (tmp_path / "big.npz").exists()
