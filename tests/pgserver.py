"""A throw-away PostgreSQL server for the store tests: Debian's initdb/pg_ctl in a temp folder, on a free port.

PostgreSQL refuses to run as root, so as root the cluster is created and started as the ``postgres`` user (the
Debian package creates it); otherwise as the current user. Trust authentication on 127.0.0.1 only; the server is
stopped and its folder removed at the end of the session.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from tests.sshd import free_port


def _bin(name: str) -> str | None:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else shutil.which(name)


def missing_reason() -> str | None:
    if not (_bin("initdb") and _bin("pg_ctl")):
        return "PostgreSQL is not installed (apt-get install postgresql)"
    if os.geteuid() == 0 and not shutil.which("runuser"):
        return "running as root without runuser to drop to the postgres user"
    try:
        import pg8000  # noqa: F401
    except ImportError:
        return "the pg8000 driver is not installed (pip install 'edgepipe[dev]')"
    return None


class Server:
    def __init__(self) -> None:
        # not under pytest's tmp folder: that is private to root, and the server runs as another user
        root = Path(tempfile.mkdtemp(prefix="edgepipe-pg-"))
        self.root, self.port = root, free_port()
        self.data = root / "data"
        self.prefix: list[str] = []
        if os.geteuid() == 0:
            self.prefix = ["runuser", "-u", "postgres", "--"]
            shutil.chown(root, "postgres", "postgres")
        self._as_owner([_bin("initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8"])
        self._as_owner([_bin("pg_ctl"), "-D", str(self.data), "-l", str(root / "log"), "-w", "-t", "60", "-o",
                        f"-p {self.port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off", "start"])
        self.url = f"postgresql+pg8000://postgres@127.0.0.1:{self.port}/postgres"

    def _as_owner(self, argv: list[str | None]) -> None:
        proc = subprocess.run([*self.prefix, *[str(a) for a in argv]], capture_output=True, text=True, timeout=120,
                              check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"{argv[0]} failed: {proc.stderr[-1500:]}")

    def stop(self) -> None:
        try:
            self._as_owner([_bin("pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop"])
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
