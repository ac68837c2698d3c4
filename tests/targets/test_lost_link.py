"""A lost SSH link, a command killed by SIGKILL and a flood of output (issue 15, items 12 and 14)."""

from __future__ import annotations

import logging
import threading
import time

import pytest

from targets.errors import DeviceError, RemoteCommandError
from targets.profiles import load_profile
from targets.remote import TailBuffer
from targets.ssh import SSHTransport
from tests.sshd import CuttableProxy


def test_tail_buffer_keeps_the_first_line_and_the_tail():
    buf = TailBuffer(cap=1000, head=100)
    buf += b"__edgepipe_pid=42\n"
    for _ in range(1000):
        buf += b"x" * 1000
    buf += b'{"result": 1}\n'
    assert len(buf) <= 1100 and bytes(buf).startswith(b"__edgepipe_pid=42\n")
    assert bytes(buf).endswith(b'{"result": 1}\n') and buf.dropped > 900_000


def test_remote_flood_is_capped_and_keeps_the_last_line(sshd, tmp_path):
    prof = load_profile(str(sshd.profile("flood", tmp_path)))
    tr = SSHTransport.from_profile(prof)
    try:
        res = tr.run(["sh", "-c", "head -c 30000000 /dev/zero | tr '\\0' x; echo; echo LAST"], 60)
    finally:
        tr.close()
    assert len(res.stdout) < 5 << 20 and res.stdout.endswith("LAST\n")


def test_a_command_killed_by_sigkill_says_so(sshd, tmp_path):
    prof = load_profile(str(sshd.profile("oom", tmp_path)))
    tr = SSHTransport.from_profile(prof)
    try:
        with pytest.raises(RemoteCommandError, match="killed by a signal"):
            tr.run(["sh", "-c", "kill -9 $$"], 20)
    finally:
        tr.close()


def test_a_link_lost_mid_command_is_exit_4_naming_the_host_with_no_paramiko_noise(sshd, tmp_path, capfd):
    proxy = CuttableProxy(sshd.port)
    kh = sshd.known_hosts_for(proxy.port, tmp_path / "kh_lost")
    prof = load_profile(str(sshd.profile("lost", tmp_path, port=proxy.port, known_hosts=str(kh),
                                         connect_timeout=2)))
    tr = SSHTransport.from_profile(prof, retries=1, backoff_s=0.1)
    threading.Timer(1.0, proxy.cut).start()
    start = time.monotonic()
    try:
        with pytest.raises(DeviceError) as info:
            tr.run(["sleep", "20"], 30)
    finally:
        tr.close()
    assert time.monotonic() - start < 20
    assert info.value.exit_code == 4 and "lost the connection to 127.0.0.1" in str(info.value)
    assert "runner failed (exit -1)" not in str(info.value)
    assert logging.getLogger("paramiko").handlers  # never Python's last-resort handler on stderr
    assert "Traceback" not in capfd.readouterr().err


def test_put_of_a_file_whose_name_holds_a_newline_arrives_intact(sshd, tmp_path):
    prof = load_profile(str(sshd.profile("nl", tmp_path)))
    tr = SSHTransport.from_profile(prof)
    try:
        job = tr.make_job_dir(prof.workdir)
        src = tmp_path / "odd\nname.onnx"
        src.write_bytes(b"model bytes")
        tr.put(src, f"{job}/odd\nname.onnx")
    finally:
        tr.close()
    from pathlib import Path

    assert Path(job, "odd\nname.onnx").read_bytes() == b"model bytes"
