"""One job per device at a time: a lease on the device itself, so any host aiming at a board sees it.

The lock is a symlink ``<workdir>/.lock`` whose target text is ``<owner> <expiry>``: ``ln -s`` creates it atomically
with its content, so there is never a lock without an owner. Expiry is in the device's own clock (no skew between
hosts). A crashed run's lease runs out and the next run breaks it; breaking checks the owner text is still the one
it read, so two waiters cannot both break and take it. It works through any transport that can run ``sh``.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import socket
import time
import uuid
from collections.abc import Iterator

from targets.errors import DeviceError
from targets.transport import Transport

# $1 lock path, $2 owner, $3 lease seconds. Prints "acquired" or "held <owner> <expiry>".
ACQUIRE_SH = r'''
lock=$1; owner=$2; lease=$3
mkdir -p -- "$(dirname -- "$lock")" || exit 2
now=$(date +%s)
if ln -s -- "$owner $((now + lease))" "$lock" 2>/dev/null; then echo acquired; exit 0; fi
cur=$(readlink -- "$lock") || cur=""
exp=${cur##* }
case $exp in ''|*[!0-9]*) exp=0;; esac
if [ "$exp" -lt "$now" ] && [ "$(readlink -- "$lock")" = "$cur" ]; then
  rm -f -- "$lock"
  if ln -s -- "$owner $((now + lease))" "$lock" 2>/dev/null; then echo "acquired broke-stale $cur"; exit 0; fi
  cur=$(readlink -- "$lock")
fi
echo "held $cur"
'''
# The lease text is "<owner> <expiry>": release only a lock that is still ours (a broken one may be someone else's).
RELEASE_SH = r'''cur=$(readlink -- "$1") && [ "${cur% *}" = "$2" ] && rm -f -- "$1"; exit 0'''


# $1 lock path, $2 the exact lease text read before: remove it only if it is still that one.
BREAK_SH = r'''[ "$(readlink -- "$1")" = "$2" ] && rm -f -- "$1"; exit 0'''


def holder_is_dead(held_by: str) -> bool:
    """True when the lease belongs to a process on this very host that no longer exists (a crashed or killed run):
    its lease need not be outwaited. Holders on other hosts cannot be checked from here; their lease expires."""
    owner = held_by.rsplit(" ", 1)[0]
    user_host, _, rest = owner.partition(":")
    host = user_host.rpartition("@")[2]
    pid = rest.partition(":")[0]
    if host != socket.gethostname().replace(" ", "_") or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:  # exists, owned by someone else
        return False
    return False


class DeviceBusyError(DeviceError):
    """Another job holds the device longer than we were willing to wait."""


def lock_path(workdir: str) -> str:
    return workdir.rstrip("/") + "/.lock"


@contextlib.contextmanager
def device_lock(transport: Transport, workdir: str, *, lease_s: float, wait_s: float, device: str = "device",
                poll_s: float = 1.0) -> Iterator[str]:
    """Hold the device for one job; waits up to ``wait_s`` for another job, breaks leases past their expiry.

    ``lease_s`` must outlast the job (the job timeout plus cleanup): the lease is not renewed while held.
    """
    path = lock_path(workdir)
    owner = f"{getpass.getuser()}@{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}".replace(" ", "_")
    lease = max(1, int(lease_s))
    deadline = time.monotonic() + wait_s
    held_by = ""
    while True:
        res = transport.run(["sh", "-c", ACQUIRE_SH, "sh", path, owner, str(lease)], 60)
        text = res.stdout.strip()
        if res.exit_status == 0 and text.startswith("acquired"):
            break
        if res.exit_status != 0 and not text.startswith("held"):
            raise DeviceError(f"{device}: cannot take the device lock {path}: "
                              f"{(res.stderr.strip().splitlines() or ['no output'])[-1]}",
                              hint="check the profile's workdir exists and is writable")
        held_by = text.removeprefix("held").strip()
        if held_by and holder_is_dead(held_by):
            transport.run(["sh", "-c", BREAK_SH, "sh", path, held_by], 60)
            continue
        if time.monotonic() >= deadline:
            raise DeviceBusyError(f"{device}: busy, another job holds {path} ({held_by})",
                                  hint="wait for it to finish; a crashed job's lease expires by itself")
        time.sleep(poll_s)
    try:
        yield owner
    finally:
        with contextlib.suppress(DeviceError):
            transport.run(["sh", "-c", RELEASE_SH, "sh", path, owner], 60)
