"""The device-side command line: quoted so hostile names stay single arguments, with the pid marker first."""

from __future__ import annotations

import shlex
import subprocess

from targets.remote import KILL_GRACE_S, split_pid, wrap_command


def test_wrap_command_keeps_hostile_names_as_single_arguments():
    argv = ["python3", "/tmp/job 1/bench.py", "--artifact", "it's; rm -rf ~ $(x).onnx"]
    line = wrap_command(argv, 30)
    marker, _, rest = line.partition("; exec ")
    assert marker == "echo __edgepipe_pid=$$"
    assert shlex.split(rest) == ["timeout", "-k", str(KILL_GRACE_S), "30", *argv]


def test_wrapped_command_reports_its_pid_and_output_through_a_real_shell(tmp_path):
    odd = tmp_path / "a b;'c"
    odd.write_text("payload")
    proc = subprocess.run(["sh", "-c", wrap_command(["cat", str(odd)], 10)], capture_output=True, timeout=30,
                          check=False)
    pid, rest = split_pid(proc.stdout)
    assert proc.returncode == 0 and pid.isdigit() and rest == b"payload"
