"""A real, throw-away OpenSSH server on loopback for the SSH tests (Debian's /usr/sbin/sshd).

It gets its own host key, user key, sshd_config, authorized_keys and pid file in a temp folder, listens on a free
port of 127.0.0.1 and logs in as the current user. The "device" Python is a wrapper that cannot import torch or this
repository, so a passing test proves the runner really is self-contained.
"""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

SSHD = "/usr/sbin/sshd"
BLOCKER = '''import importlib.abc, os, sys
BLOCKED = {"torch", "pipeline", "targets", *os.environ.get("EDGEPIPE_TEST_BLOCK", "").split(",")} - {""}
class _Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is not available on this test device")
        return None
sys.meta_path.insert(0, _Block())
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def missing_reason() -> str | None:
    if not os.path.exists(SSHD):
        return f"{SSHD} not found: apt-get install -y openssh-server"
    if not shutil.which("ssh-keygen"):
        return "ssh-keygen not found: apt-get install -y openssh-client"
    return None


def keygen(path: Path) -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return Path(f"{path}.pub").read_text().strip()


@dataclass
class Server:
    root: Path
    port: int
    user: str
    user_key: Path
    host_key_line: str  # "ssh-ed25519 AAAA..." of the server
    known_hosts: Path
    python: Path  # the device-side interpreter wrapper (no torch, no edgepipe)
    proc: subprocess.Popen | None = None

    def known_hosts_for(self, port: int, path: Path) -> Path:
        path.write_text(f"[127.0.0.1]:{port} {self.host_key_line}\n")
        return path

    def profile(self, name: str, folder: Path, **connection: object) -> Path:
        """A profile file aimed at this server; ``connection`` overrides any field (port, known_hosts, ...)."""
        conn = {"transport": "ssh", "host": "127.0.0.1", "port": self.port, "user": self.user,
                "key": str(self.user_key), "known_hosts": str(self.known_hosts), "connect_timeout": 5,
                "command_timeout": 60, "job_timeout": 120, **connection}
        data = {"name": name, "description": "loopback sshd for tests", "arch": os.uname().machine,
                "connection": conn, "python": str(self.python), "workdir": str(folder / "work"),
                "backends": ["onnx-fp32"], "runtime": {"threads": 1, "onnx_providers": ["CPUExecutionProvider"]},
                "bench": {"warmup": 2, "min_iterations": 20, "min_seconds": 0.05, "max_seconds": 10}}
        path = folder / f"{name}.yaml"
        path.write_text(yaml.safe_dump(data))
        return path

    def python_without(self, *modules: str) -> Path:
        """Another device interpreter that also lacks ``modules`` (a board where numpy was never installed)."""
        path = self.root / f"device-python-without-{'-'.join(modules)}"
        path.write_text(f'#!/bin/sh\nEDGEPIPE_TEST_BLOCK={",".join(modules)} exec {self.python} "$@"\n')
        path.chmod(0o755)
        return path

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def start_server(root: Path, extra_config: list[str] | None = None) -> Server:
    """``extra_config``: more sshd_config lines (e.g. ``SetEnv PATH=...`` for a board whose python3 is elsewhere)."""
    root.mkdir(parents=True, exist_ok=True)
    host_key = root / "ssh_host_ed25519_key"
    host_line = " ".join(keygen(host_key).split()[:2])
    user_key = root / "id_ed25519"
    (root / "authorized_keys").write_text(keygen(user_key) + "\n")
    port = free_port()
    (root / "sshd_config").write_text("\n".join([
        f"Port {port}", "ListenAddress 127.0.0.1", f"HostKey {host_key}", f"PidFile {root / 'sshd.pid'}",
        f"AuthorizedKeysFile {root / 'authorized_keys'}", "UsePAM no", "StrictModes no",
        "PermitRootLogin prohibit-password", "PasswordAuthentication no", "KbdInteractiveAuthentication no",
        "PubkeyAuthentication yes", "AllowTcpForwarding yes", "Subsystem sftp internal-sftp",
        "MaxStartups 64", "MaxSessions 64", "LogLevel ERROR", *(extra_config or []), ""]))
    if os.geteuid() == 0:
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # privilege separation folder sshd insists on
    blockers = root / "blockers"
    blockers.mkdir()
    (blockers / "sitecustomize.py").write_text(BLOCKER)
    python = root / "device-python"
    python.write_text(f'#!/bin/sh\nPYTHONPATH={blockers} exec {sys.executable} "$@"\n')
    python.chmod(0o755)
    with open(root / "sshd.log", "wb") as log:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(root / "sshd_config")], stdout=log, stderr=log)
    server = Server(root, port, getpass.getuser(), user_key, host_line,
                    root / "known_hosts", python, proc)
    server.known_hosts_for(port, server.known_hosts)
    for _ in range(100):
        if proc.poll() is not None:
            raise RuntimeError(f"sshd exited ({proc.returncode}): {(root / 'sshd.log').read_text()[-2000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return server
        except OSError:
            time.sleep(0.1)
    server.stop()
    raise RuntimeError("sshd did not start listening within 10 s")


class CuttableProxy:
    """A TCP relay in front of sshd that can be cut mid-stream: the device 'disappears' under a running upload."""

    def __init__(self, target_port: int, cut_after_bytes: int | None = None) -> None:
        self.target_port = target_port
        self.cut_after_bytes = cut_after_bytes
        self.sent = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.socks: list[socket.socket] = []
        self.cut_event = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.cut_event.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            self.socks += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, counting: bool) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
                if counting:
                    self.sent += len(data)
                    if self.cut_after_bytes is not None and self.sent >= self.cut_after_bytes:
                        self.cut()
                        return
        except OSError:
            pass

    def drop_connections(self) -> None:
        """A network blip: open connections die, new ones are still accepted."""
        for s in self.socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()
        self.socks = []

    def cut(self) -> None:
        """Everything stops, as if the board lost power: the listener too, so reconnecting fails."""
        self.cut_event.set()
        for s in [self.listener, *self.socks]:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()
