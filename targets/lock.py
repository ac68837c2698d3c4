"""One job per device at a time: a lease on the device itself, so any host aiming at a board sees it.

The lock is a symlink ``<workdir>/.lock`` whose target text is ``<owner> <boot_id> <expiry> <wall expiry>``:
``ln -s`` creates it atomically with its content, so there is never a lock without an owner. Expiry is in seconds of
the device's uptime (``/proc/uptime``) within the boot named by ``/proc/sys/kernel/random/boot_id``: a wall-clock jump
on the board (NTP catching up a day, an RTC-less board setting its date) never makes a live lease look expired, and a
lease of an earlier boot is stale at once (nothing of that boot still runs). A board without them uses ``date +%s``
(boot ``wall``). The last field, the expiry by ``date +%s``, is there for older edgepipe versions sharing the board
(they read the last field of ``<owner> <expiry>``), so they do not break a new lease as long expired. A crashed
run's lease runs out and the next run breaks it; breaking checks the lease text is still the one it read, so two
waiters cannot both break and take it.

A holder records the pid of its running runner in ``<workdir>/.lock.runner-<owner>`` (written by the command itself
just before it execs the runner, see ``runner_argv_with_pid``). Whoever breaks a lease first stops that runner (TERM,
then KILL), checked by its command line to be a runner of this workdir so a reused pid is never hit: an orphaned
runner never measures while the next job runs.

The scripts fail on anything but the states they expect: a ``.lock`` that is a folder, a file or a lease text that
is not ours is reported, never "acquired" around (``ln -s`` into a folder would succeed) nor silently broken.
It works through any transport that can run ``sh``.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import socket
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from targets.errors import DeviceError
from targets.transport import Transport

# Sets $boot and $now: the device's boot id and uptime in whole seconds (or "wall" and the epoch without them).
CLOCK_SH = r'''
if [ -r /proc/sys/kernel/random/boot_id ] && [ -r /proc/uptime ]; then
  read -r boot < /proc/sys/kernel/random/boot_id; read -r now _ < /proc/uptime; now=${now%%.*}
else boot=wall; now=$(date +%s); fi
'''
# $1 lock path, $2 lease text: stops the runner of that lease's owner (its pid file), then removes the lease if it
# still is that text. The runner is signalled only if its command line names a job folder of this workdir.
STOP_HOLDER_SH = r'''
stop_holder() {
  dir=$(dirname -- "$1"); holder=${2%% *}; pf="$dir/.lock.runner-$holder"
  if [ -f "$pf" ] && [ ! -L "$pf" ]; then
    read -r pid < "$pf" || pid=""
    case $pid in ''|*[!0-9]*) pid="";; esac
    if [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] &&
       tr '\000' ' ' < "/proc/$pid/cmdline" | grep -qF -- "$dir/job-"; then
      kill -TERM "$pid" 2>/dev/null; i=0
      while [ $i -lt 10 ] && kill -0 "$pid" 2>/dev/null; do sleep 1; i=$((i + 1)); done
      kill -KILL "$pid" 2>/dev/null
    fi
    rm -f -- "$pf"
  fi
  [ "$(readlink -- "$1")" = "$2" ] && rm -f -- "$1"
  return 0
}
'''
# $1 lock path, $2 owner, $3 lease seconds. Prints "acquired <lease text>" [" broke-stale <old>"], "held <lease text>",
# "retry" (the lock changed under us), or "bad <why>" with exit 3 (a state the lock never has: fix by hand).
ACQUIRE_SH = CLOCK_SH + STOP_HOLDER_SH + r'''
lock=$1; owner=$2; lease=$3
mkdir -p -- "$(dirname -- "$lock")" || exit 2
mine="$owner $boot $((now + lease)) $(($(date +%s) + lease))"
bad() { echo "bad $*"; exit 3; }
kind() {
  if [ -d "$lock" ]; then echo "a folder"; elif [ -f "$lock" ]; then echo "a regular file"
  else echo "not a symlink"; fi
}
take() {  # 0: the lock is ours now; 1: it exists (someone's lease)
  if [ -L "$lock" ]; then return 1; fi
  [ -e "$lock" ] && bad "$lock is $(kind), not a lease edgepipe made; remove it if no job runs on the device"
  ln -s -- "$mine" "$lock" 2>/dev/null || return 1
  if [ ! -L "$lock" ] || [ "$(readlink -- "$lock")" != "$mine" ]; then
    [ -d "$lock" ] && [ ! -L "$lock" ] && rm -f -- "$lock/$mine"   # ln made the link inside a folder
    bad "$lock changed while it was taken ($(kind)); remove it if no job runs on the device"
  fi
  return 0
}
if take; then echo "acquired $mine"; exit 0; fi
cur=$(readlink -- "$lock") || { echo retry; exit 0; }
set -f; set -- $cur; set +f
case $# in
  4) hb=$2; hexp=$3; stale=0
     case $hexp in ''|*[!0-9]*) bad "$lock holds '$cur', not a lease edgepipe made; remove it if no job runs";; esac
     if [ "$hb" != "$boot" ]; then stale=1; elif [ "$hexp" -lt "$now" ]; then stale=1; fi ;;
  2) hexp=$2; stale=0   # an older edgepipe's lease: expiry in the epoch
     case $hexp in ''|*[!0-9]*) bad "$lock holds '$cur', not a lease edgepipe made; remove it if no job runs";; esac
     [ "$hexp" -lt "$(date +%s)" ] && stale=1 ;;
  *) bad "$lock holds '$cur', not a lease edgepipe made; remove it if no job runs on the device" ;;
esac
if [ "$stale" = 1 ]; then
  stop_holder "$lock" "$cur"
  if take; then echo "acquired $mine broke-stale $cur"; exit 0; fi
  echo retry; exit 0
fi
echo "held $cur"
'''
# $1 lock path, $2 our lease text: release only a lock that is still exactly ours (a broken one may be someone
# else's now), and our runner pid file with it.
RELEASE_SH = r'''
pf="$(dirname -- "$1")/.lock.runner-${2%% *}"; [ -L "$pf" ] || rm -f -- "$pf"
[ "$(readlink -- "$1")" = "$2" ] && rm -f -- "$1"; exit 0
'''
# $1 lock path, $2 the exact lease text read before: stop its runner, then remove it only if it is still that one.
BREAK_SH = STOP_HOLDER_SH + r'''stop_holder "$1" "$2"; exit 0'''
# $1 lock path. Prints the lease text (or nothing), then "<boot> <now>" of the device clock the lease is in.
READ_SH = CLOCK_SH + r'''readlink -- "$1" || echo; echo "$boot $now"; date +%s'''
# $1 pid file, then the argv: record our pid where a lease breaker finds it, then become the command.
PID_EXEC_SH = r'''pf=$1; shift; echo $$ > "$pf" || exit 125; exec "$@"'''


@dataclass
class Lease:
    owner: str
    boot: str | None  # None: an older edgepipe's lease (epoch expiry)
    expiry: int

    @classmethod
    def parse(cls, text: str) -> Lease | None:
        parts = text.split()
        if len(parts) == 4 and parts[2].isdigit() and parts[3].isdigit():
            return cls(parts[0], parts[1], int(parts[2]))
        if len(parts) == 2 and parts[1].isdigit():
            return cls(parts[0], None, int(parts[1]))
        return None


def seconds_left(lease_text: str, clock: str, epoch: str) -> int | None:
    """Seconds a lease has left by the device's clock (``READ_SH``'s lines), 0 when stale, None when not a lease."""
    lease = Lease.parse(lease_text)
    if lease is None:
        return None
    boot, _, now = clock.partition(" ")
    if lease.boot is None:
        return max(0, lease.expiry - int(epoch)) if epoch.strip().isdigit() else 0
    if lease.boot != boot or not now.strip().isdigit():
        return 0
    return max(0, lease.expiry - int(now))


def holder_is_dead(held_by: str) -> bool:
    """True when the lease belongs to a process on this very host that no longer exists (a crashed or killed run):
    its lease need not be outwaited. Holders on other hosts cannot be checked from here; their lease expires."""
    owner = held_by.split(" ", 1)[0]
    user_host, _, rest = owner.partition(":")
    host = user_host.rpartition("@")[2]
    pid = rest.partition(":")[0]
    if host != _clean(socket.gethostname()) or not pid.isdigit():
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


def _clean(text: str) -> str:
    return "".join(c if c.isalnum() or c in "@:._-" else "_" for c in text)


def lock_path(workdir: str) -> str:
    return workdir.rstrip("/") + "/.lock"


def runner_pid_path(workdir: str, owner: str) -> str:
    """Where the holder ``owner`` records the pid of the runner it is running (read by whoever breaks its lease)."""
    return f"{workdir.rstrip('/')}/.lock.runner-{owner}"


def runner_argv_with_pid(pid_file: str, argv: Sequence[str]) -> list[str]:
    """``argv`` run so that its pid is in ``pid_file`` first (the process execs into it: same pid)."""
    return ["sh", "-c", PID_EXEC_SH, "sh", pid_file, *argv]


@contextlib.contextmanager
def device_lock(transport: Transport, workdir: str, *, lease_s: float, wait_s: float, device: str = "device",
                poll_s: float = 1.0) -> Iterator[str]:
    """Hold the device for one job; waits up to ``wait_s`` for another job, breaks leases past their expiry.

    ``lease_s`` must outlast the job (the job timeout plus cleanup): the lease is not renewed while held. Yields the
    owner name (``runner_pid_path(workdir, owner)`` is where the job records its runner's pid).
    """
    path = lock_path(workdir)
    owner = _clean(f"{getpass.getuser()}@{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}")
    lease = max(1, int(lease_s))
    deadline = time.monotonic() + wait_s
    held_by = ""
    mine = ""
    while True:
        res = transport.run(["sh", "-c", ACQUIRE_SH, "sh", path, owner, str(lease)], 60)
        text = res.stdout.strip()
        last = text.splitlines()[-1] if text else ""
        if res.exit_status == 0 and last.startswith("acquired "):
            mine = last.removeprefix("acquired ").split(" broke-stale ")[0]
            break
        if last.startswith("bad "):
            raise DeviceError(f"{device}: cannot take the device lock: {last.removeprefix('bad ')}",
                              hint="no edgepipe job made it; check nothing runs there, then remove it")
        if res.exit_status != 0 or not (last.startswith("held") or last == "retry"):
            raise DeviceError(f"{device}: cannot take the device lock {path}: "
                              f"{(res.stderr.strip().splitlines() or [last or 'no output'])[-1]}",
                              hint="check the profile's workdir exists and is writable")
        held_by = last.removeprefix("held").strip() if last != "retry" else held_by
        if last == "retry" and time.monotonic() < deadline:  # the lock changed between two looks: look again
            time.sleep(min(poll_s, 0.1))
            continue
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
            transport.run(["sh", "-c", RELEASE_SH, "sh", path, mine], 60)
