"""The SSH transport: the only module that imports paramiko.

Trust comes first: the host key is checked against known_hosts during the key exchange, before authentication, so
an unknown or changed key stops the connection before a single byte of ours is sent. Every remote command is an
argv joined with ``shlex.join`` and run under ``timeout`` on the device, so a hung benchmark dies *there*, not just
on our side. Uploads land under a temporary name, are verified by SHA-256 computed on the device and only then
renamed, so the final path never holds half a file.
"""

from __future__ import annotations

import getpass
import logging
import math
import os
import select
import shlex
import socket
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import paramiko

from targets.artifact import sha256_file
from targets.errors import ConfigError, DeviceError, HostKeyError, RemoteCommandError, TransferError
from targets.remote import (
    KILL_GRACE_S,
    MAKE_JOB_SH,
    SHA256_SH,
    TIMEOUT_EXITS,
    TailBuffer,
    await_pid,
    split_pid,
    wrap_command,
)
from targets.safe_files import check_sha256, hash_stream, open_regular
from targets.transport import CommandResult

T = TypeVar("T")
# paramiko logs transport failures with tracebacks; without a handler Python prints them on stderr. They belong in
# run.log (a run attaches its log handler to the root logger), never on the console.
logging.getLogger("paramiko").addHandler(logging.NullHandler())
CONNECT_ERRORS = (paramiko.SSHException, OSError, EOFError)

class Unreachable(DeviceError):
    """Connecting failed at the network level: worth a retry, unlike a bad key or a refused login."""


# What a dropped or stalled connection raises. A plain OSError from SFTP is the server refusing (no such folder,
# permission denied): that is not retried, it becomes a TransferError.
TRANSPORT_ERRORS = (paramiko.SSHException, EOFError, ConnectionError, TimeoutError, Unreachable)


def ssh_config_path() -> Path:
    return Path(os.environ.get("EDGEPIPE_SSH_CONFIG") or "~/.ssh/config").expanduser()


def default_known_hosts() -> Path:
    return Path("~/.ssh/known_hosts").expanduser()


def host_entry(host: str, port: int) -> str:
    """How OpenSSH names a host in known_hosts: bare on port 22, ``[host]:port`` elsewhere."""
    return host if port == 22 else f"[{host}]:{port}"


def fingerprint(key: paramiko.PKey) -> str:
    return key.fingerprint  # "SHA256:..." like `ssh-keygen -lf`


class _RefuseUnknown(paramiko.MissingHostKeyPolicy):
    """RejectPolicy that says how to trust the host instead of paramiko's bare 'not found'."""

    def __init__(self, profile_name: str, known_hosts: Path, ssh_command: str) -> None:
        self.profile_name = profile_name
        self.known_hosts = known_hosts
        self.ssh_command = ssh_command

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        raise HostKeyError(
            f"{self.profile_name}: host {hostname} is not in {self.known_hosts} "
            f"({key.get_name()} key {fingerprint(key)}); nothing was sent",
            hint=f"check the fingerprint on the device (ssh-keygen -lf /etc/ssh/ssh_host_*_key.pub), then run "
                 f"`edgepipe doctor {self.profile_name} --trust` or `{self.ssh_command}` once to add it")


def resolve_endpoint(host: str, user: str | None, port: int | None, key: str | None) -> dict[str, Any]:
    """Merge the profile's connection with ~/.ssh/config (HostName, User, Port, IdentityFile, ProxyJump)."""
    path = ssh_config_path()
    cfg = dict(paramiko.SSHConfig.from_path(str(path)).lookup(host)) if path.is_file() else {}
    if key and not Path(key).expanduser().is_file():
        raise ConfigError(f"connection.key: {key} does not exist",
                          hint="point --key / connection.key at your private key, or leave it out to use ssh-agent")
    if key:
        _check_key_file(Path(key).expanduser())
    # Like OpenSSH, IdentityFile lines for keys that are not there (a `Host *` default) are skipped quietly.
    keys = [key] if key else [k for k in cfg.get("identityfile") or [] if Path(k).expanduser().is_file()]
    none = ("", "none")
    return {"alias": host, "hostname": cfg.get("hostname", host),
            "user": user or cfg.get("user") or getpass.getuser(), "port": int(port or cfg.get("port") or 22),
            "keys": [str(Path(k).expanduser()) for k in keys],
            "proxyjump": None if str(cfg.get("proxyjump", "")).lower() in none else cfg["proxyjump"],
            "proxycommand": None if str(cfg.get("proxycommand", "")).lower() in none else cfg["proxycommand"]}


def _check_key_file(path: Path) -> None:
    """A key file paramiko cannot parse is the user's mistake, found before any network: not three retries blamed
    on the network. An encrypted key parses far enough to say it needs a passphrase; that is left to ssh-agent."""
    try:
        paramiko.PKey.from_path(path)
    except paramiko.PasswordRequiredException:
        return
    except (paramiko.SSHException, ValueError, TypeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"connection.key: {path} is not a private key edgepipe can read "
                          f"({type(exc).__name__}: {str(exc)[:120]})",
                          hint="give an OpenSSH or PEM private key (ssh-keygen -t ed25519), not a .pub or another "
                               "file") from None
    except OSError as exc:
        raise ConfigError(f"connection.key: cannot read {path} ({exc.strerror})",
                          hint="check the file's permissions") from None


def _parse_jump(hop: str) -> tuple[str, str | None, int | None]:
    """``[user@]host[:port]`` or ``[user@][host]:port`` -> (host, user, port)."""
    user, _, hostport = hop.strip().rpartition("@")
    host, port = hostport, None
    if hostport.startswith("["):
        host, _, rest = hostport[1:].partition("]")
        port = int(rest[1:]) if rest.startswith(":") else None
    elif hostport.count(":") == 1:
        host, p = hostport.split(":")
        port = int(p)
    return host, user or None, port


def _tunnel(profile_name: str, via: paramiko.SSHClient, host: str, port: int, timeout: float) -> paramiko.Channel:
    try:
        return via.get_transport().open_channel("direct-tcpip", (host, port), ("127.0.0.1", 0), timeout=timeout)
    except CONNECT_ERRORS as exc:
        raise Unreachable(f"{profile_name}: the jump host cannot reach {host}:{port}: {exc}",
                          hint="check ProxyJump in ~/.ssh/config and that the jump host allows TCP forwarding"
                          ) from exc


def connect_client(profile_name: str, host: str, user: str | None, port: int | None, key: str | None,
                   known_hosts: Path, timeout: float, *, sock: Any = None,
                   _depth: int = 0) -> tuple[paramiko.SSHClient, list[Any]]:
    """An authenticated client whose host key matched known_hosts, plus the jump clients to close with it.

    Every hop of a ProxyJump chain is verified against the same known_hosts: a bastion is no less a stranger.
    """
    ep = resolve_endpoint(host, user, port, key)
    hops: list[Any] = []
    try:
        if sock is None and ep["proxyjump"]:
            if _depth > 4:
                raise DeviceError(f"{profile_name}: ProxyJump chain for {host} is too deep", hint="check ~/.ssh/config")
            via: paramiko.SSHClient | None = None
            for hop in ep["proxyjump"].split(","):
                jh, ju, jp = _parse_jump(hop)
                jsock = _tunnel(profile_name, via, jh, jp or 22, timeout) if via else None
                via, sub = connect_client(profile_name, jh, ju, jp, None, known_hosts, timeout, sock=jsock,
                                          _depth=_depth + 1)
                hops += [*sub, via]
            sock = _tunnel(profile_name, via, ep["hostname"], ep["port"], timeout)
        elif sock is None and ep["proxycommand"]:
            sock = paramiko.ProxyCommand(ep["proxycommand"])
    except DeviceError:
        _close_all(hops)
        raise
    client = paramiko.SSHClient()
    if known_hosts.is_file():
        client.load_host_keys(str(known_hosts))
    ssh_cmd = " ".join(["ssh", *(["-p", str(ep["port"])] if ep["port"] != 22 else []),
                        *(["-o", f"UserKnownHostsFile={known_hosts}"] if known_hosts != default_known_hosts() else []),
                        f"{ep['user']}@{ep['hostname']}"])
    client.set_missing_host_key_policy(_RefuseUnknown(profile_name, known_hosts, ssh_cmd))
    try:
        client.connect(ep["hostname"], port=ep["port"], username=ep["user"], key_filename=ep["keys"] or None,
                       timeout=timeout, banner_timeout=timeout, auth_timeout=timeout, channel_timeout=timeout,
                       allow_agent=True, look_for_keys=not ep["keys"], sock=sock)
    except (HostKeyError, *CONNECT_ERRORS) as exc:
        client.close()
        _close_all(hops)
        raise _connect_error(profile_name, ep, known_hosts, exc) from (None if isinstance(exc, paramiko.SSHException)
                                                                        else exc)
    return client, hops


def _connect_error(profile_name: str, ep: dict[str, Any], known_hosts: Path, exc: BaseException) -> DeviceError:
    where = f"{ep['user']}@{ep['hostname']}:{ep['port']}"
    if isinstance(exc, HostKeyError):
        return exc
    if isinstance(exc, paramiko.BadHostKeyException):
        entry = host_entry(ep["hostname"], ep["port"])
        return HostKeyError(
            f"{profile_name}: the host key of {entry} CHANGED (now {exc.key.get_name()} {fingerprint(exc.key)}, "
            f"known_hosts has {fingerprint(exc.expected_key)}); refusing to connect, nothing was sent",
            hint=f"if the device was reinstalled, verify the new fingerprint on it and remove the old entry with "
                 f"`ssh-keygen -f {known_hosts} -R '{entry}'`; otherwise someone may be intercepting the connection")
    if isinstance(exc, paramiko.AuthenticationException) or "authentication methods" in str(exc):
        return DeviceError(f"{profile_name}: authentication failed for {where}: {exc}",
                           hint="check connection.user and connection.key (or --user/--key, ssh-agent)")
    return Unreachable(f"{profile_name}: cannot connect to {where}: {exc}",
                       hint="check the device is on, connection.host/port, or raise connection.connect_timeout")


def _close_all(items: list[Any]) -> None:
    for item in reversed(items):
        try:
            item.close()
        except Exception:  # noqa: BLE001 - closing is best effort
            pass


def fetch_host_key(host: str, port: int | None, timeout: float) -> tuple[str, int, paramiko.PKey]:
    """The key a server presents, without authenticating: what ``doctor --trust`` shows before adding it."""
    ep = resolve_endpoint(host, None, port, None)
    sock = socket.create_connection((ep["hostname"], ep["port"]), timeout=timeout)
    tr = paramiko.Transport(sock)
    try:
        tr.start_client(timeout=timeout)
        return ep["hostname"], ep["port"], tr.get_remote_server_key()
    finally:
        tr.close()


def known_key(known_hosts: Path, hostname: str, port: int) -> paramiko.PKey | None:
    """The recorded key for a host; None when unknown."""
    if not known_hosts.is_file():
        return None
    keys = paramiko.HostKeys(str(known_hosts)).lookup(host_entry(hostname, port))
    return next(iter(keys.values()), None) if keys else None


def add_known_host(known_hosts: Path, hostname: str, port: int, key: paramiko.PKey) -> None:
    """Append one OpenSSH-format line (the file may hold hashed entries and comments we must not rewrite)."""
    known_hosts.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    line = f"{host_entry(hostname, port)} {key.get_name()} {key.get_base64()}\n"
    fd = os.open(known_hosts, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "a") as fh:
        fh.write(line)


class SSHTransport:
    """One device over SSH. Use one instance per thread; a lock guards (re)connecting within an instance."""

    name = "ssh"

    def __init__(self, profile_name: str, host: str, *, user: str | None = None, port: int | None = None,
                 key: str | None = None, known_hosts: str | Path | None = None, connect_timeout: float = 10.0,
                 command_timeout: float = 600.0, retries: int = 2, backoff_s: float = 1.0) -> None:
        self.profile_name = profile_name
        self.host, self.user, self.port, self.key = host, user, port, key
        self.known_hosts = Path(known_hosts).expanduser() if known_hosts else default_known_hosts()
        self.connect_timeout = connect_timeout
        self.command_timeout = command_timeout
        self.retries = retries
        self.backoff_s = backoff_s
        self._client: paramiko.SSHClient | None = None
        self._hops: list[Any] = []
        self._lock = threading.RLock()
        self._gone = False  # the last call found the device unreachable after all its retries

    @classmethod
    def from_profile(cls, profile: Any, **kw: Any) -> SSHTransport:
        c = profile.connection
        args: dict[str, Any] = {"user": c.user, "port": c.port, "key": c.key, "known_hosts": c.known_hosts,
                                "connect_timeout": c.connect_timeout, "command_timeout": c.command_timeout}
        args.update(kw)
        return cls(profile.name, c.host, **args)

    # ------------------------------------------------------------------------------------------------- connection
    def connect(self) -> paramiko.SSHClient:
        with self._lock:
            tr = self._client.get_transport() if self._client else None
            if tr is None or not tr.is_active():
                self._drop()
                self._client, self._hops = connect_client(self.profile_name, self.host, self.user, self.port,
                                                          self.key, self.known_hosts, self.connect_timeout)
                self._client.get_transport().set_keepalive(15)
            return self._client

    def _drop(self) -> None:
        if self._client is not None:
            _close_all([*self._hops, self._client])
        self._client, self._hops = None, []

    def close(self) -> None:
        with self._lock:
            self._drop()

    def _retrying(self, what: str, fn: Callable[[], T], error: type[DeviceError] = DeviceError) -> T:
        """Retry transport failures (reset, timeout) with back-off; never a command that merely failed.

        Once a device could not be reached after every retry, later calls (the cleanup after that very failure)
        try once instead of backing off again, until a connection succeeds.
        """
        retries = 0 if self._gone else self.retries
        lost = False  # the link broke after it was up (as opposed to never coming up)
        for attempt in range(retries + 1):
            try:
                result = fn()
                self._gone = False
                return result
            except TRANSPORT_ERRORS as exc:
                self.close()
                lost = lost or not isinstance(exc, Unreachable)
                if attempt == retries:
                    self._gone = self._gone or isinstance(exc, Unreachable)
                    detail = exc.message if isinstance(exc, DeviceError) else f"{type(exc).__name__}: {exc}"
                    if lost:
                        raise error(f"{self.profile_name}: lost the connection to {self.host} while {what} "
                                    f"({attempt + 1} attempts; {detail})",
                                    hint="check the device and the network; the next run cleans up its job folder "
                                         "and lock") from exc
                    raise error(f"{self.profile_name}: {what} failed after {attempt + 1} attempts: {detail}",
                                hint="check the network to the device; the job folder may need cleanup") from exc
                time.sleep(self.backoff_s * 2 ** attempt)
        raise AssertionError("unreachable")

    # ------------------------------------------------------------------------------------------------- commands
    def run(self, argv: Sequence[str], timeout: float | None = None) -> CommandResult:
        limit = float(timeout or self.command_timeout)
        return self._retrying(f"running {argv[0]}", lambda: self._run_once(list(argv), limit))

    def _run_once(self, argv: list[str], limit: float) -> CommandResult:
        # `timeout` runs the command in its own process group and signals all of it, so children die too; the
        # first stdout line is its pid, so Ctrl-C or a stalled link on our side can still kill it on the device.
        secs = max(1, math.ceil(limit))
        command = wrap_command(argv, secs)
        start = time.perf_counter()
        chan = self.connect().get_transport().open_session(timeout=self.connect_timeout)
        out, err = TailBuffer(), TailBuffer()  # capped: only the tail of a flood is kept
        finished = False
        try:
            chan.exec_command(command)
            chan.shutdown_write()
            deadline = time.monotonic() + secs + KILL_GRACE_S + self.connect_timeout
            exited_at = 0.0
            while True:  # drain both streams together: a chatty command must never fill a window and hang
                busy = False
                while chan.recv_ready():
                    out += chan.recv(1 << 16)
                    busy = True
                while chan.recv_stderr_ready():
                    err += chan.recv_stderr(1 << 16)
                    busy = True
                if chan.exit_status_ready() and not chan.recv_ready() and not chan.recv_stderr_ready():
                    # sshd may send the exit status before the last output: read on until EOF (briefly)
                    if chan.eof_received or chan.closed:
                        break
                    exited_at = exited_at or time.monotonic()
                    if time.monotonic() - exited_at > 2.0:
                        break
                if chan.closed and not busy:
                    raise EOFError("channel closed before the command's exit status arrived")
                if time.monotonic() > deadline:
                    raise RemoteCommandError(
                        f"{self.profile_name}: {argv[0]} gave no exit status {secs}s after its timeout",
                        hint="the device or network stalled; the command was killed on the device")
                if not busy:
                    select.select([chan], [], [], 0.2)
            status = chan.recv_exit_status()
            if status == -1:  # no exit status: the link died, or the command was killed by a signal
                link = self._client.get_transport() if self._client else None
                if link is None or not link.is_active():
                    raise ConnectionResetError("the connection dropped while the command ran")
                if time.perf_counter() - start >= secs - 0.5:  # `timeout -k` ends with SIGKILL on its group
                    raise RemoteCommandError(
                        f"{self.profile_name}: command timed out after {secs}s and edgepipe's timeout killed it on "
                        f"the device: {shlex.join(argv)[:200]}", exit_status=-1,
                        stderr=err.decode(errors="replace")[-2000:],
                        hint="raise connection.command_timeout in the profile, or check the device")
                raise RemoteCommandError(f"{self.profile_name}: {argv[0]} was killed by a signal on the device "
                                         "(out of memory? the OOM killer uses SIGKILL)", exit_status=-1,
                                         stderr=err.decode(errors="replace")[-2000:],
                                         hint="check `dmesg` on the device; a smaller model or fewer threads helps")
            finished = True
        finally:
            if not finished:
                await_pid(chan, out)
            chan.close()
            if not finished:
                self._kill_remote(bytes(out))
        _, rest = split_pid(bytes(out))
        res = CommandResult(argv, status, rest.decode(errors="replace"), err.decode(errors="replace"),
                            time.perf_counter() - start)
        if status == 127 and "timeout" in res.stderr and "not found" in res.stderr:
            raise RemoteCommandError(f"{self.profile_name}: the device has no `timeout` command",
                                     exit_status=status, stderr=res.stderr,
                                     hint="install coreutils (or busybox) on the device")
        if status in TIMEOUT_EXITS and res.seconds >= secs - 0.5:
            raise RemoteCommandError(f"{self.profile_name}: command timed out after {secs}s and edgepipe's timeout "
                                     f"killed it on the device: {shlex.join(argv)[:200]}", exit_status=status,
                                     stderr=res.stderr,
                                     hint="raise connection.command_timeout in the profile, or check the device")
        return res

    def _kill_remote(self, out: bytes) -> None:
        """SIGTERM to `timeout`, which passes it to the command's process group and SIGKILLs it if it lingers."""
        pid, _ = split_pid(out)
        if not pid:
            return
        try:
            chan = self.connect().get_transport().open_session(timeout=self.connect_timeout)
            try:
                chan.exec_command(shlex.join(["kill", "-TERM", pid.decode()]))
                chan.recv_exit_status()
            finally:
                chan.close()
        except (DeviceError, *TRANSPORT_ERRORS, OSError):
            pass  # the link is gone: the on-device `timeout` still ends the command at its deadline

    def check(self, argv: Sequence[str], what: str, timeout: float | None = None) -> CommandResult:
        res = self.run(argv, timeout)
        if not res.ok:
            last = (res.stderr.strip().splitlines() or ["no output"])[-1]
            raise RemoteCommandError(f"{self.profile_name}: {what} failed (exit {res.exit_status}): {last}",
                                     exit_status=res.exit_status, stderr=res.stderr)
        return res

    # ------------------------------------------------------------------------------------------------- files
    def make_job_dir(self, workdir: str) -> str:
        res = self.check(["sh", "-c", MAKE_JOB_SH, "sh", workdir], f"creating a job folder under {workdir}", 60)
        return res.stdout.strip().splitlines()[-1]

    def remove_tree(self, path: str) -> None:
        """Best effort: cleanup must never hide the error that got us here."""
        try:
            self.run(["rm", "-rf", "--", path], 60)
        except DeviceError:
            pass

    def remote_sha256(self, path: str) -> str:
        res = self.check(["sh", "-c", SHA256_SH, "sh", path], f"checksumming {path}", 300)
        return res.stdout.split()[0] if res.stdout.split() else ""

    def put(self, local: Path, remote: str, *, sha256: str | None = None, root: Path | None = None) -> None:
        """Upload a regular, single-link file really inside ``root`` (default: its folder; ``targets.safe_files``),
        from the one file descriptor that was hashed; with ``sha256`` only those bytes. A failed or corrupted upload
        leaves nothing on the device: the temporary name is removed."""
        local = Path(local)
        with open_regular(local, root) as fh:
            want, size = hash_stream(fh)
            check_sha256(local, want, sha256)

            def send(s: paramiko.SFTPClient, tmp: str) -> None:
                fh.seek(0)
                s.putfo(fh, tmp, file_size=size, confirm=True)

            for attempt in (1, 2):
                tmp = f"{remote}.part-{uuid.uuid4().hex[:8]}"
                try:
                    self._retrying(f"uploading {local.name}", lambda tmp=tmp: self._sftp(lambda s: send(s, tmp)),
                                   TransferError)
                    got = self.remote_sha256(tmp)
                except BaseException:
                    self.remove_tree(tmp)
                    raise
                if got == want:  # `mv` in one folder is an atomic rename, and every SFTP server side has it
                    self.check(["mv", "-f", "--", tmp, remote], f"renaming {local.name} into place", 60)
                    return
                self.remove_tree(tmp)
                if attempt == 2:
                    raise TransferError(f"{self.profile_name}: {local.name} arrived corrupted twice "
                                        f"(sha256 {got[:12]} on the device, {want[:12]} here)",
                                        hint="check the device's storage and network; nothing was left at " + remote)

    def get(self, remote: str, local: Path) -> None:
        local = Path(local)
        tmp = local.with_name(f".{local.name}.part-{uuid.uuid4().hex[:8]}")
        try:
            self._retrying(f"downloading {remote}", lambda: self._sftp(lambda s: s.get(remote, str(tmp))),
                           TransferError)
            if sha256_file(tmp) != self.remote_sha256(remote):
                raise TransferError(f"{self.profile_name}: {remote} changed or was corrupted while downloading")
            os.replace(tmp, local)
        finally:
            tmp.unlink(missing_ok=True)

    def _sftp(self, fn: Callable[[paramiko.SFTPClient], T]) -> T:
        client = self.connect()
        sftp = client.open_sftp()
        try:
            sftp.get_channel().settimeout(self.command_timeout)
            return fn(sftp)
        except TRANSPORT_ERRORS:
            raise
        except OSError as exc:
            link = client.get_transport()
            if link is None or not link.is_active():  # paramiko says "Socket is closed": the link died
                raise ConnectionResetError(f"connection lost: {exc}") from exc
            if "size mismatch in put" in str(exc):  # the upload stopped short: the device's disk is full
                raise TransferError(f"{self.profile_name}: the device ran out of space while uploading ({exc})",
                                    hint="free space in the profile's workdir on the device (`df -h` there)"
                                    ) from exc
            # The SFTP server said no (no such folder, permission denied): retrying will not change its mind.
            raise TransferError(f"{self.profile_name}: SFTP error: {exc}",
                                hint="check the workdir exists and is writable on the device") from exc
        finally:
            sftp.close()

    def python(self, configured: str) -> str:
        return "python3" if configured == "current" else configured
