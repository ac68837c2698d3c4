"""Third-party console noise goes to run.log; the console keeps edgepipe's own lines (issue 15, item 20)."""

from __future__ import annotations

import pytest

from tests.conftest import run_cli

NOISY = """
    import logging
    import os
    import sys
    import warnings

    import torch
    from torch import nn
    from torch.utils.data import TensorDataset


    def model():
        os.write(2, b"oneDNN custom operations are on. You may see slightly different numerical results\\n")
        print("Failed to load libtorchao_ops_aten.so", file=sys.stderr)
        logging.getLogger("somelib").warning("somelib says hello")
        warnings.warn("some library UserWarning", UserWarning)
        return nn.Sequential(nn.Flatten(), nn.Linear(64, 10))


    def splits():
        g = torch.Generator().manual_seed(0)
        ds = TensorDataset(torch.randn(32, 1, 8, 8, generator=g), torch.randint(0, 10, (32,), generator=g))
        return {"train": ds, "calib": ds, "eval": ds}
"""

RECIPE = """
    name: noisy
    model: {factory: "noisy:model", input_shape: [1, 1, 8, 8]}
    data: {factory: "noisy:splits"}
    backends: [onnx-fp32]
    gate: {max_accuracy_drop: 100}
"""

FAST = """
name: fast
connection: {transport: local}
python: current
workdir: WORKDIR
backends: [onnx-fp32]
bench: {warmup: 1, min_iterations: 20, min_seconds: 0.05, max_seconds: 5}
"""


@pytest.mark.onnx
def test_run_console_shows_our_lines_and_run_log_keeps_the_noise(write_recipe, tmp_path):
    recipe = write_recipe(RECIPE, {"noisy.py": NOISY})
    prof = tmp_path / "fast.yaml"
    prof.write_text(FAST.replace("WORKDIR", str(tmp_path / "wd")))
    proc = run_cli("run", str(recipe), "--device", str(prof), "--out", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    for noise in ("oneDNN", "libtorchao", "somelib says hello", "UserWarning"):
        assert noise not in proc.stderr, proc.stderr
    assert "load model and data" in proc.stderr and "gate: passed" in proc.stderr
    log = (tmp_path / "out" / "run.log").read_text()
    for noise in ("oneDNN", "libtorchao", "somelib says hello", "UserWarning"):
        assert noise in log


TINY = """
    import torch
    from torch import nn
    from torch.utils.data import TensorDataset


    def model():
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                             nn.Linear(4, 10))


    def splits():
        g = torch.Generator().manual_seed(0)
        ds = TensorDataset(torch.randn(32, 1, 8, 8, generator=g), torch.randint(0, 10, (32,), generator=g))
        return {"train": ds, "calib": ds, "eval": ds}
"""

INT8 = """
    name: int8noise
    model: {factory: "tiny:model", input_shape: [1, 1, 8, 8]}
    data: {factory: "tiny:splits"}
    stages:
      quantize: {mode: ptq, calib_samples: 16}
    backends: [openvino-int8, tflite-int8]
    gate: {max_accuracy_drop: 100}
"""

#: what NNCF, TensorFlow/absl, oneDNN and torchao print during an INT8 run, none of which is edgepipe's
THIRD_PARTY = ("Statistics collection", "Fast Bias correction", "absl", "oneDNN", "flatbuffer_export",
               "Estimated count of arithmetic ops", "TensorFlow", "Failed to load", "━")


@pytest.mark.openvino
@pytest.mark.tflite
def test_int8_run_console_has_no_third_party_lines_when_the_real_exporters_run(write_recipe, tmp_path):
    recipe = write_recipe(INT8, {"tiny.py": TINY})
    prof = tmp_path / "fast.yaml"
    prof.write_text(FAST.replace("WORKDIR", str(tmp_path / "wd")).replace("[onnx-fp32]", "[onnx-fp32, "
                                                                          "openvino-int8, tflite-int8]"))
    proc = run_cli("run", str(recipe), "--device", str(prof), "--out", str(tmp_path / "out"))
    console = proc.stdout + proc.stderr
    assert "export openvino-int8" in proc.stderr and "export tflite-int8" in proc.stderr, console[-3000:]
    leaked = [n for n in THIRD_PARTY if n in console]
    assert not leaked, f"{leaked} on the console:\n{console}"
    assert proc.stdout == ""   # edgepipe's own lines are on stderr; stdout only carries --json
    log = (tmp_path / "out" / "run.log").read_text()
    for noise in ("Statistics collection", "absl", "oneDNN"):   # routed, not lost
        assert noise in log, log[-3000:]


@pytest.mark.slow
@pytest.mark.openvino
@pytest.mark.tflite
def test_search_console_has_no_third_party_lines_and_int8_candidates_are_measured(write_recipe, tmp_path):
    recipe = write_recipe(INT8 + """
    search: {space: {quantize.calibration: [minmax]}, strategy: exhaustive, confirm_rounds: 0}
    """, {"tiny.py": TINY})
    prof = tmp_path / "fast.yaml"
    prof.write_text(FAST.replace("WORKDIR", str(tmp_path / "wd")))
    proc = run_cli("search", str(recipe), "--device", str(prof), "--out", str(tmp_path / "out"), "--cache",
                   str(tmp_path / "cache"))
    console = proc.stdout + proc.stderr
    assert proc.returncode in (0, 3), console[-3000:]   # 3: random weights, so INT8 may lose to float (no pick)
    assert "measured calibration minmax · tflite-int8" in proc.stderr, console[-3000:]
    leaked = [n for n in THIRD_PARTY if n in console]
    assert not leaked, f"{leaked} on the console:\n{console}"
    assert "Statistics collection" in (tmp_path / "out" / "search.log").read_text()
