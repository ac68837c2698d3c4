"""The device lock through the local transport: the same lease file a board gets, on this host."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from targets.lock import DeviceBusyError, device_lock
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
