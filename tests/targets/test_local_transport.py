"""The local transport keeps the SSH transport's promises: a flooding command cannot fill this host's memory (each
stream keeps its last MAX_OUTPUT_BYTES, the first line survives), and a command past its timeout is killed."""

from __future__ import annotations

import sys
import time

import pytest

from targets.errors import RemoteCommandError
from targets.remote import MAX_OUTPUT_BYTES
from targets.transport import LocalTransport


def test_local_run_drains_both_streams_and_keeps_each_to_its_capped_tail() -> None:
    script = ("import sys; sys.stdout.write('first\\n' + 'o' * 10_000_000 + 'END'); "
              "sys.stderr.write('e' * 10_000_000); sys.exit(3)")
    res = LocalTransport().run([sys.executable, "-c", script], 60)
    assert res.exit_status == 3
    assert res.stdout.startswith("first\n") and res.stdout.endswith("oEND")
    assert len(res.stdout) == MAX_OUTPUT_BYTES + len("first\n") and len(res.stderr) == MAX_OUTPUT_BYTES


def test_local_run_passes_small_output_through_unchanged() -> None:
    res = LocalTransport().run([sys.executable, "-c", "print('{\"ok\": 1}'); import sys; print('w', file=sys.stderr)"],
                               30)
    assert res.ok and res.stdout == '{"ok": 1}\n' and res.stderr == "w\n"


def test_local_run_kills_a_command_past_its_timeout() -> None:
    start = time.monotonic()
    with pytest.raises(RemoteCommandError, match="timed out after 1s"):
        LocalTransport().run([sys.executable, "-c", "import time; time.sleep(60)"], 1)
    assert time.monotonic() - start < 15
