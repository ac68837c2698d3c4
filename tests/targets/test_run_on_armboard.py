"""`edgepipe run` as a fleet: this host and the emulated Raspberry Pi 5, the latter through the stock
device_profiles/rpi5.yaml with connection overrides only (EDGEPIPE_RPI5_HOST/PORT/USER/KEY/KNOWN_HOSTS)."""

from __future__ import annotations

import json

import pytest

from targets.export_onnx import host_has_vnni
from tests.conftest import run_cli

pytestmark = [pytest.mark.scenario, pytest.mark.ssh, pytest.mark.slow, pytest.mark.onnx, pytest.mark.tflite]


def test_fleet_run_with_the_stock_rpi5_profile_passes_its_gate(armboard, tmp_path, digits_recipe, monkeypatch):
    for key, value in armboard.env("rpi5").items():
        monkeypatch.setenv(key, value)
    out = tmp_path / "fleet"
    proc = run_cli("run", str(digits_recipe), "--device", "local", "--device", "rpi5", "--out", str(out),
                   "--set", "stages={}", "--set", "backends=[onnx-int8]", timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    board = json.loads((out / "rpi5" / "summary.json").read_text())
    local = json.loads((out / "local" / "summary.json").read_text())
    assert board["device"] == "rpi5" and board["gate"]["passed"] and local["gate"]["passed"]
    arts = {a["name"]: a for a in board["artifacts"]}
    assert set(arts) == {"onnx-int8"}  # TFLite on the board: test_armboard.py (its export costs minutes, twice)
    for a in arts.values():
        assert a["valid"], a["invalid_reasons"]
        bench = a["bench"]
        assert bench["environment"]["machine"] == "aarch64"
        assert bench["environment"]["board"]["model"] == "Raspberry Pi 5 Model B Rev 1.0"
        assert bench["rules"]["min_iterations"] == 100 and bench["rules"]["min_seconds"] == 10  # stock rules
        assert bench["state"]["before"]["throttled"]["raw"] == "0x0"  # the profile's vcgencmd ran
    # the board got its own onnx-int8 (8-bit weights, no reduce_range), checked on this host the way the Pi computes
    onnx = arts["onnx-int8"]
    assert onnx["metadata"]["int8"]["arch"] == "aarch64" and onnx["metadata"]["int8"]["reduce_range"] is False
    assert onnx["validation"]["check"]["optimization"] == ("all" if host_has_vnni() else "basic")
    assert onnx["validation"]["top1_agreement"] >= 0.95
    # the host benchmarked its own x86 artifact, made for its kernels
    local_onnx = next(a for a in local["artifacts"] if a["name"] == "onnx-int8")
    assert local_onnx["metadata"]["int8"]["arch"] == "x86_64"
    if host_has_vnni():   # VNNI x86 and Arm share one scheme (U8S8, no reduce_range): the same bytes are right
        assert local_onnx["metadata"]["int8"]["reduce_range"] is False
    else:                 # AVX2-only x86 needs reduce_range (7-bit weights): a different file from the Pi's
        assert local_onnx["metadata"]["int8"]["reduce_range"] is True and local_onnx["sha256"] != onnx["sha256"]
