"""How a command runs on a device: wrapped so it can be found and killed there, and how its exit is read.

Plain text and bytes, no paramiko: the SSH transport sends ``wrap_command(argv, secs)`` and reads the output back
through ``split_pid``; the first stdout line names the pid of the device-side ``timeout``, so Ctrl-C or a stalled
link on our side can still kill the command on the board, and ``timeout`` itself ends it at its deadline.
"""

from __future__ import annotations

import select
import shlex
import time
from collections.abc import Sequence
from typing import Protocol

KILL_GRACE_S = 5  # after SIGTERM, `timeout -k` sends SIGKILL this much later
PID_MARK = b"__edgepipe_pid="  # first line of every command's stdout: the pid of its `timeout` wrapper
TIMEOUT_EXITS = (124, 137)  # GNU timeout: 124 = timed out (TERM worked), 137 = needed KILL
JOB_MARK = ".edgepipe-job"  # in every job folder edgepipe makes: the stale-job purge removes only marked folders
# $1 workdir. Makes a fresh job folder with its marker, which holds "<boot_id> <uptime s>" of its birth (the same
# clock as the lease, targets.lock: a wall-clock jump does not age it). Prints the folder.
MAKE_JOB_SH = r'''
if [ -r /proc/sys/kernel/random/boot_id ] && [ -r /proc/uptime ]; then
  read -r boot < /proc/sys/kernel/random/boot_id; read -r now _ < /proc/uptime; now=${now%%.*}
else boot=wall; now=$(date +%s); fi
mkdir -p -- "$1" && d=$(mktemp -d "$1/job-XXXXXXXX") && echo "$boot $now" > "$d/.edgepipe-job" && echo "$d"
'''
# $1 workdir, $2 minutes. Removes job folders edgepipe made (marked, see MAKE_JOB_SH) older than that, of this boot
# by uptime or of an earlier boot; anything else named job-* is not ours and stays.
PURGE_JOBS_SH = r'''
if [ -r /proc/sys/kernel/random/boot_id ] && [ -r /proc/uptime ]; then
  read -r boot < /proc/sys/kernel/random/boot_id; read -r now _ < /proc/uptime; now=${now%%.*}
else boot=wall; now=$(date +%s); fi
for d in "$1"/job-*; do
  [ -d "$d" ] && [ ! -L "$d" ] && [ -f "$d/.edgepipe-job" ] && [ ! -L "$d/.edgepipe-job" ] || continue
  read -r b t < "$d/.edgepipe-job" || continue
  case $t in ''|*[!0-9]*) continue;; esac
  if [ "$b" != "$boot" ] || [ $((now - t)) -gt $(($2 * 60)) ]; then rm -rf -- "$d"; fi
done
exit 0
'''
SHA256_SH = ('sha256sum < "$1" 2>/dev/null || python3 -c '
             '"import hashlib,sys; print(hashlib.sha256(open(sys.argv[1],\'rb\').read()).hexdigest())" "$1"')


class Channel(Protocol):
    """The part of a paramiko channel ``await_pid`` reads from (select() works on its fileno)."""

    closed: bool

    def recv_ready(self) -> bool: ...
    def recv(self, nbytes: int) -> bytes: ...
    def fileno(self) -> int: ...


MAX_OUTPUT_BYTES = 4 << 20  # per stream: a runner prints one JSON line; a flood must not fill the host's memory


class TailBuffer(bytearray):
    """A bytearray that keeps the first line (the pid marker) and the last ``cap`` bytes of what is appended."""

    def __init__(self, cap: int = MAX_OUTPUT_BYTES, head: int = 4096) -> None:
        super().__init__()
        self.cap, self.head_cap = cap, head
        self.dropped = 0

    def __iadd__(self, data: bytes) -> TailBuffer:  # type: ignore[override,misc]
        self.extend(data)
        if len(self) > self.cap + self.head_cap:
            nl = self.find(b"\n", 0, self.head_cap)
            keep_head = nl + 1 if nl >= 0 else 0
            cut = len(self) - self.cap
            if cut > keep_head:
                self.dropped += cut - keep_head
                del self[keep_head:cut]
        return self


def wrap_command(argv: Sequence[str], secs: int) -> str:
    """One shell line: print our pid, then become `timeout`, which runs the quoted argv in its own process group."""
    return f"echo {PID_MARK.decode()}$$; exec timeout -k {KILL_GRACE_S} {secs} {shlex.join(argv)}"


def await_pid(chan: Channel, out: bytearray, wait_s: float = 3.0) -> None:
    """Interrupted early, the marker line may still be in flight: without the pid the command could not be killed."""
    deadline = time.monotonic() + wait_s
    try:
        while not split_pid(bytes(out))[0] and time.monotonic() < deadline and not chan.closed:
            if chan.recv_ready():
                out += chan.recv(1 << 16)
            else:
                select.select([chan], [], [], 0.1)
    except (OSError, EOFError):
        pass


def split_pid(out: bytes) -> tuple[bytes, bytes]:
    """(pid, the command's own stdout). Anything a login script printed before our marker is dropped."""
    _, mark, tail = out.partition(PID_MARK)
    if not mark:
        return b"", out
    pid, _, rest = tail.partition(b"\n")
    return (pid.strip() if pid.strip().isdigit() else b""), rest
