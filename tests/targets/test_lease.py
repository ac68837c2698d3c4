"""The device lease survives clock jumps, stops an orphaned runner before it is broken, refuses states it did not
make, and a SIGTERM on the host unwinds like Ctrl-C (issue 20, item 5); runs never share eval inputs (item 6)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from targets.artifact import Artifact
from targets.errors import DeviceError
from targets.lock import DeviceBusyError, device_lock
from targets.transport import LocalTransport

ROOT = Path(__file__).resolve().parents[2]


def _relu(path: Path) -> Path:
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "r",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def _profile(tmp_path: Path, wd: Path, min_seconds: float = 0.05, max_seconds: float = 5) -> Path:
    prof = tmp_path / "p.yaml"
    prof.write_text(f"name: p\npython: current\nworkdir: {wd}\nbackends: [onnx-fp32]\n"
                    f"bench: {{warmup: 1, min_iterations: 20, min_seconds: {min_seconds}, "
                    f"max_seconds: {max_seconds}}}\n")
    return prof


def _runners(wd: Path) -> list[int]:
    """Pids of processes running a runner out of a job folder of ``wd``."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (proc / "stat").read_text().split(")")[-1].split()[0]
        except OSError:
            continue
        if f"{wd}/job-" in cmd and "bench.py" in cmd and state != "Z":
            found.append(int(proc.name))
    return found


@pytest.fixture
def reap(tmp_path):
    """Whatever happens, no runner of this test outlives it (a failing test must not leave one burning a core)."""
    yield
    for pid in _runners(tmp_path / "wd"):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _wait_for(cond, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.1)


def test_lock_keeps_a_live_lease_when_the_device_clock_jumps_a_day(tmp_path, monkeypatch):
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "date").write_text(f"#!/bin/sh\necho {int(time.time()) + 86400}\n")  # the board's clock, a day ahead
    (fake / "date").chmod(0o755)
    tr = LocalTransport()
    with device_lock(tr, str(tmp_path), lease_s=600, wait_s=0):
        monkeypatch.setenv("PATH", f"{fake}:{os.environ['PATH']}")
        with pytest.raises(DeviceBusyError), device_lock(tr, str(tmp_path), lease_s=600, wait_s=0.3, poll_s=0.05):
            pass


def test_lock_breaks_a_lease_of_an_earlier_boot_at_once(tmp_path):
    lock = tmp_path / ".lock"
    far = int(time.time()) * 10
    os.symlink(f"ci@elsewhere:7:abc 00000000-0000-0000-0000-000000000000 {far} {far}", lock)
    with device_lock(LocalTransport(), str(tmp_path), lease_s=60, wait_s=0) as owner:
        assert os.readlink(lock).startswith(owner + " ")
    assert not lock.exists() and not lock.is_symlink()


def test_lock_refuses_a_lock_path_that_is_a_folder(tmp_path):
    (tmp_path / ".lock").mkdir()
    with pytest.raises(DeviceError, match="is a folder, not a lease") as info:
        with device_lock(LocalTransport(), str(tmp_path), lease_s=60, wait_s=0):
            pass
    assert not isinstance(info.value, DeviceBusyError)
    assert list((tmp_path / ".lock").iterdir()) == []  # nothing was linked inside it


def test_lock_refuses_a_lease_text_it_did_not_write(tmp_path):
    os.symlink("someone else's lock", tmp_path / ".lock")
    with pytest.raises(DeviceError, match="not a lease edgepipe made"):
        with device_lock(LocalTransport(), str(tmp_path), lease_s=60, wait_s=0):
            pass
    assert os.readlink(tmp_path / ".lock") == "someone else's lock"


@pytest.mark.onnx
def test_breaking_a_dead_holders_lease_stops_its_orphaned_runner_first(tmp_path, reap):
    """A host killed with SIGKILL (nothing can catch it) leaves its runner measuring; the next job stops it."""
    model, wd = _relu(tmp_path / "relu.onnx"), tmp_path / "wd"
    prof = _profile(tmp_path, wd, min_seconds=120, max_seconds=120)
    script = ("import sys; from targets.artifact import Artifact; from targets.device import benchmark; "
              "from targets.profiles import load_profile; "
              f"benchmark(load_profile({str(prof)!r}), Artifact.from_files({str(model)!r}, backend='onnx', "
              "precision='fp32'))")
    host = subprocess.Popen([sys.executable, "-c", script], env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        _wait_for(lambda: bool(_runners(wd)))
        runner = _runners(wd)[0]
    finally:
        host.kill()
        host.wait()
    assert runner in _runners(wd)  # orphaned: still measuring
    with device_lock(LocalTransport(), str(wd), lease_s=60, wait_s=20, poll_s=0.1):
        assert _runners(wd) == []  # stopped before we hold the device


@pytest.mark.onnx
def test_sigterm_on_bench_kills_the_runner_removes_the_job_folder_and_releases_the_lock(tmp_path, reap):
    model, wd = _relu(tmp_path / "relu.onnx"), tmp_path / "wd"
    prof = _profile(tmp_path, wd, min_seconds=120, max_seconds=120)
    cli = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "bench", str(model), "--device", str(prof)],
                           env={**os.environ, "PYTHONPATH": str(ROOT)}, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(lambda: bool(_runners(wd)))
        cli.send_signal(signal.SIGTERM)
        _, err = cli.communicate(timeout=30)
    finally:
        if cli.poll() is None:
            cli.kill()
    assert cli.returncode == -signal.SIGTERM and "terminated; the device's job folder and lock" in err
    assert _runners(wd) == []
    assert sorted(p.name for p in wd.iterdir()) == []  # no job folder, no .lock, no pid file


@pytest.mark.onnx
def test_a_run_finishing_between_two_jobs_of_another_leaves_its_inputs_alone(tmp_path):
    """Run A benchmarks the same data on the same board between run B's two artifacts: B's second job still has
    its inputs (before, A removed the shared inputs-<digest>.npz and B's job failed with exit 4)."""
    from pipeline.phases.measure import measure_device
    from pipeline.phases.outcome import ExportOutcome
    from pipeline.ui.progress import Progress
    from targets.profiles import load_profile

    wd = tmp_path / "wd"
    profile = load_profile(str(_profile(tmp_path, wd)))
    inputs = tmp_path / "eval.npz"
    np.savez(inputs, x=np.ones((4, 4), np.float32))
    arts = {}
    for name in ("a", "b"):
        folder = tmp_path / name
        folder.mkdir()
        arts[name] = Artifact.from_files(_relu(folder / "relu.onnx"), backend="onnx", precision="fp32")

    def outcomes(*names: str) -> dict:
        return {n: ExportOutcome("onnx", "fp32", arts[n]) for n in names}

    class OtherRunMidway(Progress):
        def step(self, name):  # before B's second job, all of run A happens
            if name.startswith("bench b"):
                recs, errs = measure_device(profile, outcomes("a"), tmp_path / "runA", tmp_path / "runA",
                                            inputs, Progress(stream=open(os.devnull, "w")))
                assert errs == [], errs
            return super().step(name)

    records, errors = measure_device(profile, outcomes("a", "b"), tmp_path / "runB", tmp_path / "runB", inputs,
                                     OtherRunMidway(stream=open(os.devnull, "w")))
    assert errors == [], [str(e) for e in errors]
    assert [r["valid"] for r in records] == [True, True], json.dumps(records)[:400]
    assert sorted(p.name for p in wd.iterdir()) == []  # nothing left on the board


def test_a_lease_keeps_an_older_edgepipes_reading_of_it_live(tmp_path):
    """Older versions on the same board read the last field as the epoch expiry: it must be ours, in the future."""
    with device_lock(LocalTransport(), str(tmp_path), lease_s=600, wait_s=0) as owner:
        text = os.readlink(tmp_path / ".lock")
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        assert text.split()[0] == owner and text.split()[1] == boot
        assert int(text.rsplit(" ", 1)[1]) > time.time() + 590
