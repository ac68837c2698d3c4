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
