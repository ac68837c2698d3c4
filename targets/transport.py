"""One interface to a device, whether it is this host or a board over SSH.

A transport runs an argv list (never a shell string: the SSH transport quotes every piece), copies files in and out,
and makes and removes folders. ``targets.device`` builds benchmark jobs on top of it; ``targets.ssh`` is the only
module that talks paramiko.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from targets.errors import RemoteCommandError, TransferError
from targets.safe_files import copy_regular


@dataclass
class CommandResult:
    argv: list[str]
    exit_status: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def ok(self) -> bool:
        return self.exit_status == 0


class Transport(Protocol):
    name: str

    def run(self, argv: Sequence[str], timeout: float) -> CommandResult: ...
    def put(self, local: Path, remote: str, *, sha256: str | None = None, root: Path | None = None) -> None: ...
    def get(self, remote: str, local: Path) -> None: ...
    def make_job_dir(self, workdir: str) -> str: ...
    def remove_tree(self, path: str) -> None: ...
    def python(self, configured: str) -> str: ...
    def close(self) -> None: ...


class LocalTransport:
    """This host: subprocesses and file copies, the same job layout a board gets."""

    name = "local"

    def run(self, argv: Sequence[str], timeout: float) -> CommandResult:
        """Like the SSH transport: each stream keeps only its last ``MAX_OUTPUT_BYTES`` (a runner prints one JSON
        line; a command that floods its output must not fill this host's memory), and a timeout kills it."""
        import threading

        from targets.remote import TailBuffer

        start = time.perf_counter()
        try:
            proc = subprocess.Popen(list(argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    stdin=subprocess.DEVNULL)
        except OSError as exc:
            raise RemoteCommandError(f"local: cannot start {argv[0]}: {exc.strerror}") from exc
        bufs = (TailBuffer(), TailBuffer())

        def pump(stream: Any, buf: TailBuffer) -> None:
            for chunk in iter(lambda: stream.read1(1 << 16), b""):
                buf += chunk

        pumps = [threading.Thread(target=pump, args=(stream, buf), daemon=True)
                 for stream, buf in zip((proc.stdout, proc.stderr), bufs, strict=True)]
        for t in pumps:
            t.start()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            proc.kill()
            proc.wait()
            raise RemoteCommandError(f"local: command timed out after {timeout:.0f}s and edgepipe killed it "
                                     f"(connection.command_timeout): {argv[0]}",
                                     hint="raise connection.command_timeout in the profile") from exc
        except BaseException:  # Ctrl-C or SIGTERM (targets.signals): the command must not outlive us
            proc.kill()
            proc.wait()
            raise
        finally:
            for t in pumps:
                t.join(timeout=10)
        out, err = (bytes(b).decode(errors="replace") for b in bufs)
        return CommandResult(list(argv), proc.returncode, out, err, time.perf_counter() - start)

    def put(self, local: Path, remote: str, *, sha256: str | None = None, root: Path | None = None) -> None:
        """Copy a regular, single-link file that is really inside ``root`` (default: its own folder); with
        ``sha256`` only those bytes (``targets.safe_files``)."""
        try:
            copy_regular(local, remote, root, sha256=sha256)
        except OSError as exc:
            raise TransferError(f"local: cannot copy {local} to {remote}: {exc.strerror}") from exc

    def get(self, remote: str, local: Path) -> None:
        self.put(Path(remote), str(local))

    def make_job_dir(self, workdir: str) -> str:
        """The same script a board runs (``targets.remote.MAKE_JOB_SH``): a fresh folder with edgepipe's marker."""
        from targets.remote import MAKE_JOB_SH

        res = self.run(["sh", "-c", MAKE_JOB_SH, "sh", workdir], 60)
        lines = res.stdout.strip().splitlines()
        if not res.ok or not lines:
            raise RemoteCommandError(f"local: cannot create a job folder under {workdir}: "
                                     f"{(res.stderr.strip().splitlines() or ['no output'])[-1]}",
                                     exit_status=res.exit_status, stderr=res.stderr,
                                     hint="check the profile's workdir is writable")
        return lines[-1]

    def remove_tree(self, path: str) -> None:
        shutil.rmtree(path, ignore_errors=True)

    def python(self, configured: str) -> str:
        return sys.executable if configured == "current" else configured

    def close(self) -> None:
        return None


def open_transport(profile: object, **kwargs: object) -> Transport:
    """The transport a profile asks for; SSH is imported only when used (paramiko is an extra)."""
    transport = profile.connection.transport  # type: ignore[attr-defined]
    if transport == "local":
        return LocalTransport()
    from targets.ssh import SSHTransport

    return SSHTransport.from_profile(profile, **kwargs)
