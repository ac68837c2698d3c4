"""An emulated Raspberry Pi 5 for the tests: an arm64 Debian userland run by Debian's qemu-user-static, behind its own
OpenSSH server on loopback (see tests/sshd.py).

Why this shape, and the traps it avoids:
- the root is extracted by ``mmdebstrap --variant=extract`` (no emulated code runs while building), and the aarch64
  wheels (numpy, onnxruntime, ai-edge-litert, the versions this checkout runs) are installed into it by the host's
  pip, so building costs about a minute and needs only the Debian mirror and PyPI;
- the root is built once per set of pinned versions into a cache folder that outlives the test session
  (``EDGEPIPE_TEST_CACHE``, else /var/cache/edgepipe-tests as root), so a re-run starts in seconds;
- the board's ``python3`` is a wrapper that runs the root's CPython under ``qemu-aarch64-static -cpu cortex-a76
  -L ROOT``: qemu's default ``-cpu max`` emulates SME and LiteRT's INT8 kernels then return garbage, so the CPU model
  is always pinned to the Pi 5's core;
- qemu passes the host's x86 /proc/cpuinfo through and onnxruntime segfaults at import on it, so the root carries a
  Raspberry Pi 5 ``/proc/cpuinfo`` (4x Cortex-A76, part 0xd0b) and ``/proc/device-tree/model``; ``-L`` serves those
  files from the root first;
- a stand-in ``vcgencmd`` on the board's PATH prints what a test writes into a state file, so the throttling path runs;
- the board's sshd runs every session with a PATH where the stock profile's ``python: python3`` is the wrapper
  (the device workdir must not exist inside the root, or ``-L`` would redirect it).
Timings under emulation mean nothing; outputs, accuracy and every code path of the runner do.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import yaml

from tests import sshd as sshd_mod

QEMU = "/usr/bin/qemu-aarch64-static"
SUITE = "bookworm"  # Python 3.11, the wheels' cp311 and the host's bytecode
INCLUDE = ["python3", "libstdc++6", "libgcc-s1"]
QEMU_CPU = "cortex-a76"
BOARD_MODEL = "Raspberry Pi 5 Model B Rev 1.0"
FIXTURE_VERSION = 1  # bump when the build below changes
PLATFORMS = ["manylinux_2_28_aarch64", "manylinux_2_27_aarch64", "manylinux_2_17_aarch64", "manylinux2014_aarch64"]
_CORE = ("processor\t: {i}\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp "
         "asimdhp cpuid asimdrdm lrcpc dcpop asimddp\nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x4"
         "\nCPU part\t: 0xd0b\nCPU revision\t: 1\n")
CPUINFO = "\n".join(_CORE.format(i=i) for i in range(4)) + (
    f"\nRevision\t: c04170\nSerial\t\t: 00000000e5a1b2c3\nModel\t\t: {BOARD_MODEL}\n")
VCGENCMD = """#!/bin/sh
# stand-in for the Raspberry Pi firmware tool: `vcgencmd get_throttled` prints what the test wrote
case "$1" in
  get_throttled) echo "throttled=$(cat "${EDGEPIPE_TEST_THROTTLED:-/nonexistent}" 2>/dev/null || echo 0x0)";;
  *) echo "error=1 error_msg=\\"Command not registered\\""; exit 1;;
esac
"""


def _pin(name: str) -> str:
    return f"{name}=={metadata.version(name)}"


def wheels() -> list[str]:
    """The aarch64 wheels of exactly the versions this checkout runs on the host (so INT8 outputs can be compared)."""
    return [_pin("numpy"), _pin("onnxruntime"), _pin("ai-edge-litert")]


def missing_reason() -> str | None:
    if platform.machine() != "x86_64":
        return "the emulated arm64 board is built on x86_64 hosts"
    if os.geteuid() != 0:
        return "the emulated arm64 board needs root (mmdebstrap --mode=root): run the tests as root"
    if not os.path.exists(QEMU):
        return f"{QEMU} not found: apt-get install -y qemu-user-static"
    if not shutil.which("mmdebstrap"):
        return "mmdebstrap not found: apt-get install -y mmdebstrap"
    if sys.version_info[:2] != (3, 11):
        return "the arm64 board root is Debian bookworm (Python 3.11); run the tests with Python 3.11"
    for name in ("numpy", "onnxruntime", "ai-edge-litert"):
        try:
            metadata.version(name)
        except metadata.PackageNotFoundError:
            return f"{name} is not installed on the host: the board gets the same version (pip install -e '.[all]')"
    return sshd_mod.missing_reason()


def cache_root() -> Path:
    if os.environ.get("EDGEPIPE_TEST_CACHE"):
        return Path(os.environ["EDGEPIPE_TEST_CACHE"])
    return Path("/var/cache/edgepipe-tests") if os.geteuid() == 0 else Path.home() / ".cache" / "edgepipe-tests"


def spec() -> dict[str, object]:
    return {"version": FIXTURE_VERSION, "suite": SUITE, "include": INCLUDE, "wheels": wheels(),
            "platforms": PLATFORMS, "cpu": QEMU_CPU, "cpuinfo": CPUINFO, "model": BOARD_MODEL,
}


def _mirrors() -> list[str]:
    """The host's apt sources when the host is Debian (a CI image's mirror or proxy), else Debian's own mirror."""
    found = [str(p) for p in sorted(Path("/etc/apt/sources.list.d").glob("*.sources"))]
    legacy = Path("/etc/apt/sources.list")
    if legacy.is_file() and any(ln.strip().startswith("deb ") for ln in legacy.read_text().splitlines()):
        found.append(str(legacy))
    debian = Path("/etc/debian_version").is_file() and "debian" in Path("/etc/os-release").read_text().lower()
    return found if (found and debian) else ["http://deb.debian.org/debian"]


def _run(argv: list[str], log: Path, timeout: float, check: bool = True) -> None:
    with open(log, "ab") as fh:
        fh.write(("$ " + " ".join(argv) + "\n").encode())
        fh.flush()
        proc = subprocess.run(argv, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                              timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{argv[0]} exited {proc.returncode}; see {log}:\n{log.read_text()[-3000:]}")


def pip_install_aarch64(target: Path, packages: list[str], log: Path, deps: bool = True) -> None:
    """The host's pip, asked for aarch64 cp311 wheels (without the manylinux_2_27 tag pip silently picks an old
    ai-edge-litert)."""
    argv = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-compile",
            "--only-binary=:all:", "--implementation", "cp", "--python-version", "3.11", "--abi", "cp311",
            *[f"--platform={p}" for p in PLATFORMS], "--target", str(target), *([] if deps else ["--no-deps"]),
            *packages]
    _run(argv, log, timeout=600)


def _build(root: Path, log: Path) -> None:
    _run(["mmdebstrap", "--quiet", "--mode=root", "--variant=extract", "--arch=arm64",
          f"--include={','.join(INCLUDE)}", SUITE, str(root), *_mirrors()], log, timeout=600)
    site = root / "usr" / "lib" / "python3" / "dist-packages"
    pip_install_aarch64(site, wheels(), log)
    # bytecode compiled natively (same 3.11 magic): the emulated interpreter would spend minutes on it
    _run([sys.executable, "-m", "compileall", "-q", "-j", "0", "-s", str(root), "-p", "/",
          str(root / "usr" / "lib" / "python3.11"), str(site)], log, timeout=600, check=False)
    (root / "proc" / "device-tree").mkdir(parents=True, exist_ok=True)
    (root / "proc" / "cpuinfo").write_text(CPUINFO)
    (root / "proc" / "device-tree" / "model").write_bytes(BOARD_MODEL.encode() + b"\0")


def ensure_root(log: Path | None = None) -> tuple[Path, float]:
    """The arm64 root for the pinned versions, built if absent; returns (root, seconds spent building, 0 if cached).

    Built beside its final place and renamed into it, under a lock, so an interrupted or concurrent build never leaves
    a half root behind."""
    key = hashlib.sha256(json.dumps(spec(), sort_keys=True).encode()).hexdigest()[:16]
    cache = cache_root()
    cache.mkdir(parents=True, exist_ok=True)
    final = cache / f"arm64-rpi5-{key}"
    if (final / ".complete").is_file():
        os.utime(final / ".complete")  # in use: kept by the clean-up below
        return final / "root", 0.0
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (final / ".complete").is_file():
            return final / "root", 0.0
        start = time.monotonic()
        tmp = cache / f".build-{key}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            _build(tmp / "root", log or tmp / "build.log")
            (tmp / "spec.json").write_text(json.dumps(spec(), indent=1))
            (tmp / ".complete").write_text(time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
            shutil.rmtree(final, ignore_errors=True)
            tmp.rename(final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        for old in cache.glob("arm64-rpi5-*"):  # roots of other pins unused for a week (another checkout may
            done = old / ".complete"            # be using one right now)
            if old != final and (not done.is_file() or time.time() - done.stat().st_mtime > 7 * 86400):
                shutil.rmtree(old, ignore_errors=True)
        return final / "root", time.monotonic() - start


@dataclass
class Board:
    """The emulated board: its root, its sshd, the folder with its ``python3``, and the throttle state file."""

    root: Path
    server: sshd_mod.Server
    bin: Path
    throttled: Path
    build_seconds: float

    @property
    def python(self) -> Path:
        return self.bin / "python3"

    def connection(self) -> dict[str, object]:
        """The connection overrides of the stock rpi5 profile that reach this board."""
        s = self.server
        return {"host": "127.0.0.1", "port": s.port, "user": s.user, "key": str(s.user_key),
                "known_hosts": str(s.known_hosts)}

    def env(self, name: str = "rpi5") -> dict[str, str]:
        """The same overrides as EDGEPIPE_<NAME>_* variables (how CI points a stock profile at a lab board)."""
        stem = "EDGEPIPE_" + name.upper().replace("-", "_") + "_"
        return {stem + k.upper(): str(v) for k, v in self.connection().items()}

    def profile(self, folder: Path, name: str = "rpi5", **changes: object) -> Path:
        """device_profiles/rpi5.yaml with this board's connection and ``changes`` (e.g. lighter bench rules)."""
        data = yaml.safe_load((Path(__file__).resolve().parent.parent / "device_profiles" / "rpi5.yaml").read_text())
        data["name"] = name
        data["connection"] = {**data["connection"], **self.connection()}
        data.update(changes)
        path = folder / f"{name}.yaml"
        path.write_text(yaml.safe_dump(data))
        return path

    def set_throttled(self, value: int) -> None:
        self.throttled.write_text(hex(value) + "\n")

    def stop(self) -> None:
        self.server.stop()


def start_board(folder: Path) -> Board:
    root, seconds = ensure_root(folder / "build.log")
    folder.mkdir(parents=True, exist_ok=True)
    bindir = folder / "bin"
    bindir.mkdir(exist_ok=True)
    python = bindir / "python3"
    python.write_text(f'#!/bin/sh\nexec {QEMU} -cpu {QEMU_CPU} -L {root} {root}/usr/bin/python3.11 "$@"\n')
    python.chmod(0o755)
    # vcgencmd sits beside python3, not in the root: qemu-user does not apply -L to execve, so a program the
    # emulated runner starts is looked up on the host (a host shell script, as the stand-in is, runs natively)
    vc = bindir / "vcgencmd"
    vc.write_text(VCGENCMD)
    vc.chmod(0o755)
    throttled = folder / "throttled"
    throttled.write_text("0x0\n")
    # Every session of the board's sshd goes through this: root's own login scripts on the host (a pyenv shim
    # first in PATH, say) must not decide which python3 the stock profile's `python: python3` finds.
    shell = folder / "board-session"
    shell.write_text(f"""#!/bin/sh
PATH={bindir}:/usr/local/bin:/usr/bin:/bin EDGEPIPE_TEST_THROTTLED={throttled}
export PATH EDGEPIPE_TEST_THROTTLED
case "$SSH_ORIGINAL_COMMAND" in
  internal-sftp) exec /usr/lib/openssh/sftp-server;;
esac
exec /bin/sh -c "$SSH_ORIGINAL_COMMAND"
""")
    shell.chmod(0o755)
    server = sshd_mod.start_server(folder / "sshd", extra_config=[f"ForceCommand {shell}"])
    return Board(root, server, bindir, throttled, seconds)


@contextlib.contextmanager
def board(folder: Path):
    b = start_board(folder)
    try:
        yield b
    finally:
        b.stop()
