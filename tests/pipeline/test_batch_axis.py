"""Outputs whose samples are not on axis 0 (issue 21: an OCR network's time-major ``(T, B, C)`` was refused by every
backend as "output shape [25400, 1, 984] != expected [127, 200, 984]"): the batch axis is declared or inferred per
output and used to stack, check and score. All six backends end to end: tests/pipeline/test_model_classes.py."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch

from pipeline.recipe.model import infer_batch_axes, predict
from targets.errors import ConfigError
from tests.conftest import ROOT, run_cli

FIXTURE = ROOT / "tests" / "fixtures" / "seq_digits"
RECIPE = FIXTURE / "recipe.yaml"


def _models(name: str = "models") -> ModuleType:
    sys.path.insert(0, str(FIXTURE))
    try:
        spec = importlib.util.spec_from_file_location(f"seq_digits_{name}", FIXTURE / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(FIXTURE))


class _Pair(torch.nn.Module):
    """A batch-first output beside a time-major one."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        flat = x.flatten(1)
        return flat[:, :5], flat[:, :6].reshape(len(x), 3, 2).permute(1, 0, 2)   # (B, 5) and (3, B, 2)


def test_batch_axes_are_inferred_per_output_from_two_batch_sizes() -> None:
    x = {"input": np.arange(4 * 8, dtype=np.float32).reshape(4, 8)}
    assert infer_batch_axes(_Pair(), x, None, "r.yaml") == [0, 1]
    assert infer_batch_axes(_Pair(), x, [None, 1], "r.yaml") == [0, 1]
    outs = predict(_Pair(), x, batch_size=3, batch_axes=[0, 1])   # two batches stacked along each own axis
    assert [o.shape for o in outs] == [(4, 5), (4, 3, 2)]
    np.testing.assert_array_equal(outs[1][3], x["input"][3, :6].reshape(3, 2))


def test_declared_batch_axis_the_model_contradicts_is_one_config_error() -> None:
    x = {"input": np.zeros((4, 8), np.float32)}
    with pytest.raises(ConfigError) as info:
        infer_batch_axes(_Pair(), x, [None, 0], "r.yaml")
    assert str(info.value).startswith("r.yaml: model.outputs[1].batch_axis: 0 is declared, but the model's output 1 "
                                      "grows along axis 1 (shape [3, 2, 2] for 2 samples, [3, 3, 2] for 3)")
    assert info.value.hint == "set batch_axis: 1 or leave it out"


def test_time_major_lstm_has_batch_axis_one() -> None:
    model = _models().SeqReader().eval()
    x = {"input": np.random.default_rng(0).standard_normal((5, 1, 8, 32)).astype(np.float32)}
    assert infer_batch_axes(model, x, None, "r.yaml") == [1]
    assert predict(model, x, batch_size=2, batch_axes=[1])[0].shape == (5, 4, 10)


@pytest.mark.onnx
def test_time_major_model_runs_end_to_end_on_onnx_fp32_and_int8(tmp_path: Path) -> None:
    """The conv + BiLSTM reader, trained here in seconds: checked, measured and scored by its per-position metric
    on both ONNX precisions, its artifacts' (T, 1, C) outputs stacked along axis 1 by the runner."""
    out = tmp_path / "run"
    proc = run_cli("run", str(RECIPE), "--device", "local", "--out", str(out), timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    base = summary["baseline"]["metric"]["value"]
    assert base > 0.5                                       # a trained reader, not chance (0.1)
    by = {a["name"]: a for a in summary["artifacts"]}
    assert set(by) == {"onnx-fp32", "onnx-int8"} and all(a["valid"] and not a.get("error") for a in by.values())
    assert by["onnx-fp32"]["metric"]["value"] == pytest.approx(base, abs=1e-3)
    assert by["onnx-int8"]["gate"]["passed"] and summary["gate"]["passed"]
    with np.load(out / "inputs" / "eval.npz") as f:
        assert f["__batch_axes__"].tolist() == [1]
    # the release's example drops each output's own batch axis: (T, 1, C) -> (T, C)
    rel = run_cli("release", str(out), "--device", "local", "--dist", str(tmp_path / "dist"))
    assert rel.returncode == 0, rel.stderr
    import subprocess
    import tarfile

    with tarfile.open(next((tmp_path / "dist").glob("*.tar.gz")), "r:gz") as tar:
        tar.extractall(tmp_path / "unpacked", filter="data")
    example = subprocess.run([sys.executable, "example.py"], cwd=next((tmp_path / "unpacked").iterdir()),
                             capture_output=True, text=True, timeout=120)
    assert example.returncode == 0, example.stderr
    assert example.stdout.startswith("input 0: output 0: shape [4, 10], first values "), example.stdout


@pytest.mark.tflite
def test_tflite_int8_simulator_stacks_time_major_outputs_samples_first_as_the_runtime_does(tmp_path: Path) -> None:
    """The mixed-precision search scores simulated tries against a samples-first reference: the TFLite INT8
    simulator stacks each chunk of 64 along the output's own batch axis (it stacked (T, 64, C) on axis 0: (T * 2,
    64, C) for 100 samples, which no metric can read), agreeing with the LiteRT artifact run by the runner."""
    from targets.export_config import ExportConfig
    from targets.export_tflite import export, simulate
    from targets.runner import bench

    ds = _models("data").splits()
    sys.path.insert(0, str(FIXTURE))   # a fresh clone trains it here: models._train imports data
    saved = sys.modules.pop("data", None)
    try:
        model = _models().trained()
    finally:
        sys.path.remove(str(FIXTURE))
        sys.modules.pop("data", None)
        if saved is not None:
            sys.modules["data"] = saved
    x = {"input": ds["eval"].tensors[0][:100].numpy()}
    y = ds["eval"].tensors[1][:100].numpy()
    calib = ds["calib"].tensors[0].numpy()
    cfg = ExportConfig(name="seq", precision="int8", calib_samples=64)
    example = (torch.from_numpy(x["input"][:1]),)
    sim = simulate(model, example, calib, cfg)(x, [1])
    assert [o.shape for o in sim] == [(100, 4, 10)]
    art = export(model, example, calib, cfg, tmp_path)
    rt = bench.predict(bench.load(art.path, "tflite", threads=1, input_names=["input"]), x, [1])
    assert [o.shape for o in rt] == [(100, 4, 10)]
    assert (sim[0].argmax(-1) == rt[0].argmax(-1)).mean() > 0.95          # the same program, samples aligned
    assert (sim[0].argmax(-1) == y).mean() > 0.5                          # and a reader, not chance (0.1)
