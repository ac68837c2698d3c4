"""Issue 12's model end to end: SE blocks, depthwise convolutions and a two-branch concat trained on digits (with an
outlier channel, so per-tensor INT8 loses ~20 points); with auto_keep_float every INT8 backend passes its check within
max_drop 1.0 and the summary, the table and the report show the layers kept in float."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.conftest import ROOT, run_cli

RECIPE = ROOT / "tests" / "fixtures" / "se_digits" / "recipe.yaml"

pytestmark = [pytest.mark.scenario, pytest.mark.slow, pytest.mark.onnx, pytest.mark.openvino, pytest.mark.tflite,
              pytest.mark.skipif(not os.environ.get("EDGEPIPE_ISSUE12_E2E"),
                                 reason="~15 min on 2 contended cores (3 searches of 8-12 tries); make test runs "
                                        "the revert path on "
                                        "every backend with a tiny model (tests/targets/test_mixed_precision.py); "
                                        "set EDGEPIPE_ISSUE12_E2E=1 to run")]


def test_auto_keep_float_brings_every_int8_backend_within_max_drop(tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = run_cli("run", str(RECIPE), "--device", "local", "--out", str(out), timeout=3600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    by = {a["name"]: a for a in summary["artifacts"]}
    for name in ("onnx-int8", "openvino-int8", "tflite-int8"):
        mp = by[name]["metadata"]["mixed_precision"]
        assert mp["int8_score"] < mp["fp32_score"] - 1.0          # all-INT8 missed the limit ...
        assert mp["reverted"] and mp["drop"] <= 1.0 and mp["ranking"]   # ... and the search met it
        assert set(mp["reverted"]) <= set(by[name]["metadata"]["keep_float"])
        assert by[name]["gate"]["passed"], by[name]["gate"]
        assert f"{name}: kept in float by auto_keep_float: {', '.join(mp['reverted'])}" in proc.stderr
    report = run_cli("report", str(out), "--out", str(tmp_path / "r.html"))
    assert report.returncode == 0, report.stderr
    html = (tmp_path / "r.html").read_text()
    assert "Mixed precision (auto_keep_float)" in html
    assert all(", ".join(by[n]["metadata"]["mixed_precision"]["reverted"]) in html
               for n in ("onnx-int8", "openvino-int8", "tflite-int8"))
