"""examples/lm as a fleet: this host, a board over a real loopback sshd and the emulated Raspberry Pi 5 (stock
rpi5 profile, connection overrides only). Every device measures generation with the runner on its own CPU, and the
float artifact decodes PyTorch's greedy tokens on each (issue 24: "over SSH to the loopback board and the emulated
Pi in the tests")."""

from __future__ import annotations

import json

import pytest
import yaml

from tests.conftest import assert_gate_verdict_only, run_cli
from tests.examples.conftest import EXAMPLES

pytestmark = [pytest.mark.scenario, pytest.mark.ssh, pytest.mark.slow, pytest.mark.onnx]

BACKENDS = ["onnx-fp32", "onnx-int4"]


def test_lm_generates_on_the_host_the_ssh_board_and_the_emulated_pi(sshd, armboard, tmp_path, monkeypatch):
    for key, value in armboard.env("rpi5").items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    board = sshd.profile("board", tmp_path)
    data = yaml.safe_load(board.read_text())
    data["backends"] = list(BACKENDS)
    board.write_text(yaml.safe_dump(data))
    out = tmp_path / "fleet"
    proc = run_cli("run", str(EXAMPLES / "lm" / "recipe.yaml"), "--device", "local", "--device", str(board),
                   "--device", "rpi5", "--out", str(out), "--scale", "0.1", "--set", f"backends=[{','.join(BACKENDS)}]",
                   timeout=2400)
    summaries = {d: json.loads((out / d / "summary.json").read_text()) for d in ("local", "board", "rpi5")}
    assert_gate_verdict_only(proc, summaries.values())
    machines = {}
    for device, summary in summaries.items():
        arts = {a["name"]: a for a in summary["artifacts"]}
        assert list(arts) == BACKENDS, device
        for name, art in arts.items():
            assert not art.get("error"), (device, name, art.get("error"))
            gen = art["generation"]
            assert gen["ttft_ms"]["n"] >= 1 and gen["decode_tokens_per_s"]["p50"] > 0, (device, name)
            assert gen["valid"] is True or gen["why"], (device, name)
            assert gen["peak_rss_mb"] > 10, (device, name)
        assert arts["onnx-fp32"]["generation"]["greedy_matches_torch"] is True, device
        assert arts["onnx-int4"]["metadata"]["weight_only"]["bits"] == 4, device
        machines[device] = arts["onnx-fp32"]["bench"]["environment"]["machine"]
    assert machines == {"local": "x86_64", "board": "x86_64", "rpi5": "aarch64"}
