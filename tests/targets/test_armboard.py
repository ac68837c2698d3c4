"""The runner on Arm code: the emulated Raspberry Pi 5 (tests/armboard.py) reached over SSH with the stock rpi5 profile.

Bench rules are lightened through the profile (a few seconds, tens of iterations: emulated timings mean nothing);
validity rules are not touched. Every test here runs real aarch64 numpy/onnxruntime/LiteRT under qemu-user.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from targets.device import benchmark
from targets.export_config import ExportConfig
from targets.profiles import load_profile
from targets.runner import RUNNER_PATH, bench
from targets.transport import open_transport
from targets.validate import host_check, validate
from tests.conftest import run_cli
from tests.targets._models import blobs, example

pytestmark = [pytest.mark.scenario, pytest.mark.ssh, pytest.mark.onnx, pytest.mark.tflite, pytest.mark.slow]
LIGHT = {"warmup": 3, "min_iterations": 30, "min_seconds": 2.0, "max_seconds": 60.0}


@pytest.fixture(scope="module")
def rpi5(armboard, tmp_path_factory):
    """The stock rpi5 profile aimed at the board, with light bench rules and a private workdir."""
    folder = tmp_path_factory.mktemp("rpi5-profile")
    return load_profile(str(armboard.profile(folder, bench=LIGHT, workdir=str(folder / "work"))))


@pytest.fixture(scope="module")
def arm_int8(tiny, tmp_path_factory):
    """The tiny model's onnx-int8 artifact made for the board (aarch64: 8-bit weights, no reduce_range)."""
    from targets.export_onnx import export

    return export(tiny.model, example(), tiny.calib, ExportConfig(name="tiny-arm", precision="int8",
                                                                   target_arch="aarch64"),
                  tmp_path_factory.mktemp("arm-int8"))


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    x, y = blobs(48, seed=5)
    path = tmp_path_factory.mktemp("inputs") / "inputs.npz"
    np.savez(path, x=x, y=y)
    return path, x, y


def test_doctor_reports_aarch64_the_runtimes_and_the_board(armboard, rpi5, tmp_path):
    proc = run_cli("doctor", str(armboard.profile(tmp_path, bench=LIGHT, workdir=str(tmp_path / "work"))))
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]
    out = proc.stdout
    assert "aarch64" in out and "Raspberry Pi 5 Model B Rev 1.0, Cortex-A76" in out
    import onnxruntime

    assert re.search(rf"ok\s+runtime onnxruntime\s+{re.escape(onnxruntime.__version__)}", out), out
    assert re.search(r"ok\s+runtime tflite\s+ai_edge_litert", out) and re.search(r"ok\s+throttling\s+0x0", out)
    assert out.strip().splitlines()[-1] == "ready"


@pytest.mark.parametrize("family,precision", [("onnx", "fp32"), ("onnx", "int8"), ("tflite", "fp32"),
                                              ("tflite", "int8")])
def test_bench_on_the_emulated_rpi5_is_valid_on_aarch64(rpi5, tiny, labelled, family, precision, tmp_path):
    path, x, y = labelled
    out = tmp_path / "outputs.npz"
    rec = benchmark(rpi5, tiny.artifact(family, precision), path, outputs=out)
    assert rec["valid"], rec["invalid_reasons"]
    env = rec["environment"]
    assert env["machine"] == "aarch64"
    # the board's own facts, not the emulating host's (2 x86 cores)
    assert env["board"] == {"model": "Raspberry Pi 5 Model B Rev 1.0", "cpu": "Cortex-A76", "cpu_count": 4,
                            "l4t": None}
    assert rec["latency_ms"]["n"] >= LIGHT["min_iterations"] and rec["startup_ms"]["load"] > 0
    host = bench.predict(bench.load(tiny.artifact(family, precision).path, family), x)[0].argmax(1)
    with np.load(out) as data:   # the board's raw outputs, scored on the host as a run does
        board = np.asarray(data["out0"]).argmax(1)
    assert float((board == y).mean()) == pytest.approx(float((host == y).mean()))


def _board_outputs(profile, artifacts, x, tmp_path) -> dict[str, np.ndarray]:
    """Raw outputs computed on the board by the runner's own load/predict, all artifacts in one emulated process."""
    np.save(tmp_path / "x.npy", x)
    tr = open_transport(profile)
    try:
        job = tr.make_job_dir(profile.workdir)
        try:
            tr.put(RUNNER_PATH, f"{job}/bench.py")
            tr.put(tmp_path / "x.npy", f"{job}/x.npy")
            for a in artifacts:
                tr.put(Path(a.path), f"{job}/{Path(a.path).name}")
            names = [Path(a.path).name for a in artifacts]
            script = ("import sys, numpy as np; sys.path.insert(0, sys.argv[1]); import bench; "
                      "x = np.load(sys.argv[1] + '/x.npy'); "
                      "np.savez(sys.argv[1] + '/out.npz', **{n: bench.predict(bench.load(sys.argv[1] + '/' + n, "
                      "threads=4), x)[0] for n in sys.argv[2:]})")
            res = tr.run([tr.python(profile.python), "-c", script, job, *names], timeout=300)
            assert res.ok, res.stderr[-2000:]
            tr.get(f"{job}/out.npz", tmp_path / "out.npz")
        finally:
            tr.remove_tree(job)
    finally:
        tr.close()
    with np.load(tmp_path / "out.npz") as data:
        return {n: data[n] for n in data.files}


def test_int8_outputs_on_the_board_equal_the_hosts(rpi5, tiny, arm_int8, labelled, tmp_path):
    _, x, _ = labelled
    same = [tiny.artifact("onnx", "int8"), tiny.artifact("tflite", "int8")]
    board = _board_outputs(rpi5, [*same, arm_int8], x, tmp_path)
    for art in same:  # integer kernels on both sides: the same numbers, bit for bit
        host = bench.predict(bench.load(art.path, art.backend), x)[0]
        np.testing.assert_array_equal(board[Path(art.path).name], host, err_msg=art.path)
    # the Arm artifact: the host's check (validate) computes what the board computes
    check = host_check(arm_int8)
    host = bench.predict(bench.load(arm_int8.path, "onnx", optimization=check["optimization"]), x)[0]
    on_board = board[Path(arm_int8.path).name]
    assert (on_board.argmax(1) == host.argmax(1)).all()
    np.testing.assert_allclose(on_board, host, atol=0.02 * float(np.abs(host).max()))


def test_arm_int8_artifact_passes_the_host_check_that_judges_the_board(tiny, arm_int8):
    report = validate(arm_int8, tiny.x, tiny.ref)
    assert report["check"] == host_check(arm_int8) and report["top1_agreement"] >= 0.95
    from targets.export_onnx import host_has_vnni

    if not host_has_vnni():  # this host's fused kernels saturate on 8-bit weights: exactly the case being fixed
        assert report["check"]["optimization"] == "basic"
        full = bench.predict(bench.load(arm_int8.path, "onnx"), tiny.x)[0]
        basic = bench.predict(bench.load(arm_int8.path, "onnx", optimization="basic"), tiny.x)[0]
        assert np.abs(full - basic).max() > np.abs(basic - tiny.ref).max() / 10  # the fused result is off


def test_throttling_stand_in_makes_the_result_invalid(armboard, rpi5, tiny):
    armboard.set_throttled(0x50005)  # under-voltage + throttled now, and both since boot
    try:
        rec = benchmark(rpi5, tiny.artifact("onnx", "fp32"))
    finally:
        armboard.set_throttled(0x0)
    assert rec["valid"] is False
    assert any("throttled before the run (0x50005)" in r for r in rec["invalid_reasons"]), rec["invalid_reasons"]
    assert rec["state"]["after"]["throttled"]["under_voltage_now"] is True
