"""The device lock and stale-job cleanup through the local transport: the same lease a board gets, on this host."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from targets.artifact import Artifact
from targets.device import benchmark
from targets.doctor import lock_check
from targets.lock import DeviceBusyError, device_lock
from targets.profiles import load_profile
from targets.transport import LocalTransport


def test_lock_waits_for_holder_then_proceeds(tmp_path):
    tr = LocalTransport()
    order: list[str] = []

    def second() -> None:
        with device_lock(tr, str(tmp_path), lease_s=60, wait_s=10, poll_s=0.05):
            order.append("second")

    with device_lock(tr, str(tmp_path), lease_s=60, wait_s=0):
        t = threading.Thread(target=second)
        t.start()
        time.sleep(0.4)
        order.append("first-done")
    t.join()
    assert order == ["first-done", "second"]
    assert not (tmp_path / ".lock").exists()


def test_lock_raises_busy_when_live_lease_outlasts_wait(tmp_path):
    tr = LocalTransport()
    with device_lock(tr, str(tmp_path), lease_s=60, wait_s=0), pytest.raises(DeviceBusyError) as info:
        with device_lock(tr, str(tmp_path), lease_s=60, wait_s=0.2, poll_s=0.05, device="board"):
            pass
    assert info.value.exit_code == 4 and "board: busy" in str(info.value)


def test_lock_breaks_expired_lease_and_keeps_foreign_lock_on_release(tmp_path):
    tr = LocalTransport()
    lock = Path(tmp_path) / ".lock"
    os.symlink("ghost@gone:1:x 5", lock)  # lease expired in 1970
    with device_lock(tr, str(tmp_path), lease_s=60, wait_s=0) as owner:
        assert os.readlink(lock).startswith(owner + " ")
        os.remove(lock)
        os.symlink("other@host:2:y 9999999999", lock)  # someone else's lock now: must survive our release
    assert os.readlink(lock) == "other@host:2:y 9999999999"


@pytest.mark.onnx
def test_benchmark_purges_only_marked_stale_job_folders_when_it_holds_the_lock(tmp_path):
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "r",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "relu.onnx")
    wd = tmp_path / "wd"
    old, recent, foreign = wd / "job-crashed1", wd / "job-running", wd / "job-notours"
    boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    uptime = int(float(Path("/proc/uptime").read_text().split()[0]))
    # edgepipe's marker: "<boot id> <uptime at creation>"; the crashed job's is of an earlier boot (stale at once)
    for d, mark in ((old, f"{'0' * 8}-earlier-boot {uptime}"), (recent, f"{boot} {uptime}"), (foreign, None)):
        d.mkdir(parents=True)
        (d / "model.onnx.part-1234").write_bytes(np.zeros(10).tobytes())
        if mark is not None:
            (d / ".edgepipe-job").write_text(mark + "\n")
    hour_ago = time.time() - 3600
    for d in (old, foreign):
        os.utime(d, (hour_ago, hour_ago))
    prof_file = tmp_path / "p.yaml"
    prof_file.write_text(f"name: p\npython: current\nworkdir: {wd}\nbackends: [onnx-fp32]\n"
                         "bench: {warmup: 1, min_iterations: 20, min_seconds: 0.05, max_seconds: 5}\n")
    benchmark(load_profile(str(prof_file)), Artifact.from_files(tmp_path / "relu.onnx", backend="onnx",
                                                                precision="fp32"))
    # only the old folder edgepipe marked is removed; a recent one and one edgepipe never made are left alone
    assert sorted(p.name for p in wd.iterdir()) == ["job-notours", "job-running"]


def test_doctor_lock_check_names_holder_when_lease_live(tmp_path):
    prof_file = tmp_path / "p.yaml"
    prof_file.write_text(f"name: p\npython: current\nworkdir: {tmp_path}\nbackends: [onnx-fp32]\n")
    prof = load_profile(str(prof_file))
    assert lock_check(prof, LocalTransport()).detail == "free"
    os.symlink(f"ci@runner:7:abc {int(time.time()) + 300}", tmp_path / ".lock")
    detail = lock_check(prof, LocalTransport()).detail
    assert detail.startswith("held by ci@runner:7:abc, lease ") and "s left" in detail


def test_lock_breaks_a_live_lease_whose_local_holder_process_is_gone(tmp_path):
    import socket
    import subprocess

    proc = subprocess.Popen(["true"])
    proc.wait()
    lock = Path(tmp_path) / ".lock"
    os.symlink(f"me@{socket.gethostname()}:{proc.pid}:abc {int(time.time()) + 3600}", lock)
    start = time.monotonic()
    with device_lock(LocalTransport(), str(tmp_path), lease_s=60, wait_s=0.5, poll_s=0.05):
        pass
    assert time.monotonic() - start < 5


def test_benchmark_waits_at_least_a_whole_lease(tmp_path, monkeypatch):
    import contextlib

    import targets.device as device

    seen = {}

    @contextlib.contextmanager
    def spy(tr, workdir, *, lease_s, wait_s, device="device", poll_s=1.0):
        seen.update(lease=lease_s, wait=wait_s)
        raise RuntimeError("stop here")
        yield

    monkeypatch.setattr(device, "device_lock", spy)
    prof = load_profile("local")
    with pytest.raises(RuntimeError, match="stop here"):
        device.benchmark(prof, Artifact(path="x.onnx", backend="onnx", precision="fp32", sha256="", bytes=0))
    assert seen["wait"] > seen["lease"]
