"""A run aimed at a board that cannot benchmark fails in seconds, before the host phase; an unmeasured gate says
so (issue 15, item 21)."""

from __future__ import annotations

import time

from pipeline.results.table import format_table
from tests.conftest import run_cli
from tests.sshd import free_port


def test_run_against_an_unreachable_board_exits_4_before_any_stage(tmp_path, digits_recipe):
    prof = tmp_path / "gone.yaml"
    prof.write_text(f"name: gone\nconnection: {{transport: ssh, host: 127.0.0.1, port: {free_port()}, "
                    "connect_timeout: 1}\nbackends: [onnx-int8]\n")
    start = time.monotonic()
    proc = run_cli("run", str(digits_recipe), "--device", str(prof), "--out", str(tmp_path / "r"))
    assert proc.returncode == 4, proc.stderr[-1500:]
    assert time.monotonic() - start < 60
    assert "gone: " in proc.stderr and "Traceback" not in proc.stderr
    assert "load model" not in proc.stderr and not (tmp_path / "r" / "stages").exists()


def test_a_gate_that_was_never_measured_says_not_measured():
    summary = {"recipe": "digits", "device": "rpi5", "baseline": {"accuracy": 0.98, "params": 1, "macs": 1},
               "stages": [], "gate": {"passed": False, "max_accuracy_drop": 1.0},
               "artifacts": [{"name": "onnx-int8", "accuracy": 0.97, "bytes": 10, "valid": False,
                              "invalid_reasons": ["rpi5: cannot connect"]}]}
    table = format_table(summary)
    assert "gate: not measured" in table and "FAILED" not in table
