"""`edgepipe run` of the demo over SSH to a real loopback sshd, alone and as a fleet with the local device."""

from __future__ import annotations

import json

import pytest
import yaml

from targets.profiles import load_profile
from tests.conftest import assert_gate_verdict_only, run_cli

pytestmark = [pytest.mark.scenario, pytest.mark.ssh, pytest.mark.slow, pytest.mark.onnx, pytest.mark.tflite]

# The fleet and SSH paths are under test here, not the demo's figures (tests/pipeline/test_demo.py): the recipe as
# shipped at the scale knob (README "Scale"), nothing turned off. The board is the test's own device: its profile
# lists the two backends measured on both devices.
FLEET_SCALE = ["--scale", "0.25"]
BOARD_BACKENDS = ["onnx-int8", "tflite-int8"]


def _board(sshd, folder, backends):
    path = sshd.profile("board", folder)
    data = yaml.safe_load(path.read_text())
    data["backends"] = list(backends)
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.openvino
def test_demo_runs_over_ssh_and_locally_as_a_fleet(sshd, tmp_path, digits_recipe):
    board = _board(sshd, tmp_path, BOARD_BACKENDS)
    out = tmp_path / "fleet"
    proc = run_cli("run", str(digits_recipe), "--device", "local", "--device", str(board), "--out", str(out),
                   *FLEET_SCALE, timeout=1500)
    summaries = {d: json.loads((out / d / "summary.json").read_text()) for d in ("local", "board")}
    assert_gate_verdict_only(proc, summaries.values())
    for device, summary in summaries.items():
        assert summary["device"] == device and summary["scale"]["factor"] == 0.25
        arts = {a["name"]: a for a in summary["artifacts"]}
        assert set(arts) == (set(load_profile("local").backends) if device == "local" else set(BOARD_BACKENDS))
        for a in arts.values():
            assert a["valid"] and a["latency_ms"]["n"] >= 20
            assert (out / device / a["file"]).is_file()
    # the same artifacts (same bytes) were measured on both devices, and accuracy agrees
    for name in BOARD_BACKENDS:
        local = next(a for a in summaries["local"]["artifacts"] if a["name"] == name)
        board_rec = next(a for a in summaries["board"]["artifacts"] if a["name"] == name)
        assert local["sha256"] == board_rec["sha256"]
        assert local["accuracy"] == board_rec["accuracy"]
    # over SSH the board's job folder is gone afterwards (only the lock folder may remain, released)
    leftovers = [p.name for p in (tmp_path / "work").iterdir()] if (tmp_path / "work").exists() else []
    assert not [n for n in leftovers if n.startswith("job")], leftovers
    assert "bench onnx-int8 on board" in (out / "run.log").read_text()


SIX = {"onnx-fp32", "onnx-int8", "openvino-fp32", "openvino-int8", "tflite-fp32", "tflite-int8"}


@pytest.mark.openvino
@pytest.mark.parametrize("example,metric", [("tokens", "top1"), ("multihead", "all_heads")])
def test_any_model_example_runs_every_stage_and_six_backends_on_this_host_and_over_ssh(sshd, tmp_path, example,
                                                                                        metric, monkeypatch):
    """The two any-model examples end to end as a fleet (this host + the board over SSH): distill, prune, PTQ and
    all six fp32/int8 backends -- openvino-int8 included: it failed its check on both until NNCF was kept off the
    attention MatMuls and the multi-head recipe chose full bias correction (issue 10) -- every artifact checked and
    measured in the example's own metric, the board's raw outputs scored on the host.

    The recipe as shipped at the scale knob (README "Scale"; its real teacher trained from scratch in a fresh cache
    as on a clean CI clone); the board's profile lists the recipe's six backends. One fleet run instead of a local
    and an SSH run saves the whole chain once per example."""
    monkeypatch.setenv("EDGEPIPE_EXAMPLES_CACHE", str(tmp_path / "cache"))     # trained from scratch, as on CI
    from pathlib import Path

    recipe = Path(__file__).resolve().parents[2] / "examples" / example / "recipe.yaml"
    board = _board(sshd, tmp_path, sorted(SIX))
    out = tmp_path / example
    proc = run_cli("run", str(recipe), "--device", "local", "--device", str(board), "--out", str(out),
                   "--scale", "0.1", timeout=1800)
    summaries = {d: json.loads((out / d / "summary.json").read_text()) for d in ("local", "board")}
    for device, summary in summaries.items():
        assert [s["name"] for s in summary["stages"]] == ["distill", "prune", "quantize"]
        assert summary["baseline"]["metric"]["name"] == metric and summary["gate"]["metric"] == metric
        arts = {a["name"]: a for a in summary["artifacts"]}
        assert set(arts) == SIX, device
        for name, a in arts.items():
            assert not a.get("error"), (device, name, a.get("error"))
            assert a["metric"]["name"] == metric and a["latency_ms"]["n"] >= 20, (device, name)
            assert len(a["validation"]["per_output"]) == (3 if example == "multihead" else 1)
            assert (out / device / "outputs" / f"{name}.npz").is_file()   # raw outputs came back, scored here
    # the same bytes on both devices score the same: the board's outputs are the host's
    for name in SIX:
        here, there = (next(a for a in summaries[d]["artifacts"] if a["name"] == name) for d in ("local", "board"))
        assert here["sha256"] == there["sha256"] and here["metric"]["value"] == there["metric"]["value"], name
    # the gate speaks the metric, and its verdict agrees with the exit code
    assert_gate_verdict_only(proc, summaries.values())
    if example == "multihead":   # summary.json field for field (schema 1, tests/golden.py)
        from tests.golden import assert_summary_fields

        for summary in summaries.values():
            assert_summary_fields(summary, "multihead")
    # the eval inputs travel inside each job's own folder (issue 20 item 6): no shared inputs file on the board
    leftovers = [p.name for p in (tmp_path / "work").iterdir()] if (tmp_path / "work").exists() else []
    assert not [n for n in leftovers if n.startswith(("job", "inputs-"))], leftovers
