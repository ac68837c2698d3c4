"""``edgepipe doctor NAME``: can this device give trustworthy figures, and if not, what to fix.

It checks in the order a job needs things (host key, login, Python, numpy, runtimes, execution providers, then the
state that skews latency: governor, temperature, throttling, free disk), stops at the first check everything else
depends on, and uses the very runner a benchmark uses (``bench.py --probe``), so "doctor passes" means "bench runs".
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from targets.errors import DeviceError, HostKeyError, printable
from targets.lock import READ_SH, lock_path, seconds_left
from targets.profiles import DeviceProfile
from targets.runner import RUNNER_PATH
from targets.transport import Transport, open_transport

RUNTIME_OF = {"onnx": "onnxruntime", "openvino": "openvino", "tflite": "tflite"}
MIN_FREE_BYTES = 200 * 1024 * 1024
HOT_C = 80.0


@dataclass
class Check:
    name: str
    ok: bool
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _ask(message: str) -> bool:
    import sys

    from targets.errors import ConfigError

    if not sys.stdin or not sys.stdin.isatty():
        raise ConfigError("doctor --trust needs a terminal to confirm the host key fingerprint",
                          hint="run it interactively, or add the key yourself: ssh-keyscan -p PORT HOST >> known_hosts "
                               "after checking its fingerprint on the device")
    try:
        return input(f"{message}\nAdd this key to known_hosts? [y/N] ").strip().lower() in ("y", "yes")
    except EOFError:
        return False


def check_host_key(profile: DeviceProfile, trust: bool, confirm: Callable[[str], bool]) -> Check:
    """Compare the key the device presents with known_hosts; with ``trust`` add an unknown one after confirmation.

    A *changed* key is never replaced here: that needs a human to look at the device and remove the old line.
    """
    from targets import ssh  # lazy: paramiko only when a profile uses SSH

    c = profile.connection
    known_hosts = Path(c.known_hosts).expanduser() if c.known_hosts else ssh.default_known_hosts()
    if ssh.resolve_endpoint(c.host or "", c.user, c.port, c.key)["proxyjump"]:
        return Check("host key", True, "behind a ProxyJump: checked against known_hosts when connecting")
    try:
        hostname, port, key = ssh.fetch_host_key(c.host or "", c.port, c.connect_timeout)
    except Exception as exc:  # noqa: BLE001 - any failure here means "not reachable", reported as a check
        return Check("reachable", False, f"cannot reach {c.host}:{c.port or 22}: {type(exc).__name__}: {exc}")
    entry = ssh.host_entry(hostname, port)
    shown = f"{entry} {key.get_name()} {ssh.fingerprint(key)}"
    recorded = ssh.known_key(known_hosts, hostname, port)
    if recorded is not None:
        if recorded.get_base64() == key.get_base64():
            return Check("host key", True, f"{shown} matches {known_hosts}")
        return Check("host key", False, f"CHANGED: device presents {shown}, {known_hosts} has "
                                        f"{ssh.fingerprint(recorded)}; verify on the device, then "
                                        f"`ssh-keygen -f {known_hosts} -R '{entry}'`")
    if trust and confirm(f"{profile.name}: {shown} is not in {known_hosts}. Check it on the device with "
                         f"`ssh-keygen -lf /etc/ssh/ssh_host_{key.get_name().split('-')[-1]}_key.pub`."):
        ssh.add_known_host(known_hosts, hostname, port, key)
        return Check("host key", True, f"added {shown} to {known_hosts}")
    return Check("host key", False, f"unknown: {shown} is not in {known_hosts}; "
                                    f"run `edgepipe doctor {profile.name} --trust` to review and add it")


def probe(profile: DeviceProfile, tr: Transport) -> dict[str, Any]:
    """Run ``bench.py --probe`` in a fresh job folder (so free disk is measured where jobs run)."""
    tel = profile.telemetry
    job = tr.make_job_dir(profile.workdir)
    try:
        tr.put(RUNNER_PATH, f"{job}/bench.py")
        argv = [tr.python(profile.python), f"{job}/bench.py", "--probe"]
        for flag, value in (("--thermal", tel.thermal), ("--throttled-cmd", tel.throttled),
                            ("--power-mode-cmd", tel.power_mode), ("--clocks-cmd", tel.clocks)):
            if value:
                argv += [flag, value]
        res = tr.run(argv, timeout=120)
    finally:
        tr.remove_tree(job)
    line = next((ln for ln in reversed(res.stdout.splitlines()) if ln.startswith("{")), "")
    if not line:
        last = (res.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"{profile.python} exited {res.exit_status}: {last}"}
    return json.loads(line)


def lock_check(profile: DeviceProfile, tr: Transport) -> Check:
    """Informational: a held lock means a job is running there now (figures taken meanwhile would be disturbed)."""
    res = tr.run(["sh", "-c", READ_SH, "sh", lock_path(profile.workdir)], 30)
    lines = res.stdout.split("\n")
    holder, clock, epoch = (lines[0].strip(), lines[1].strip(), lines[2].strip()) if len(lines) > 3 else ("", "", "")
    if not holder:
        return Check("device lock", True, "free")
    left = seconds_left(holder, clock, epoch)
    owner = holder.split(" ", 1)[0]
    if left is None:
        return Check("device lock", False, f"{lock_path(profile.workdir)} holds {holder!r}, not an edgepipe lease; "
                                           "remove it if no job runs there")
    return Check("device lock", True, f"held by {owner}, lease {left}s left" if left > 0 else
                 f"stale lease of {owner} (expired; the next job breaks it)")


def probe_checks(profile: DeviceProfile, info: dict[str, Any]) -> list[Check]:
    env, state = info.get("environment", {}), info.get("state", {})
    board = env.get("board") or {}
    facts = ", ".join(str(v) for v in (board.get("model"), board.get("cpu"), board.get("l4t")) if v)
    checks = [Check("python", True, f"{profile.python}: Python {env.get('python')} on {env.get('os')}"
                    + (f" ({facts})" if facts else "")),
              Check("numpy", True, f"numpy {env.get('numpy')}")]
    families = sorted({b.split("-")[0] for b in profile.backends})
    for fam in families:
        name = RUNTIME_OF[fam]
        version = info.get("runtimes", {}).get(name)
        why = (info.get("runtime_errors") or {}).get(name)  # present but unusable, e.g. a NumPy 1.x build
        checks.append(Check(f"runtime {name}", bool(version),
                            version or why or f"not importable by {profile.python}; needed for {fam}-* backends"))
    if "onnx" in families:
        have = info.get("onnx_providers") or []
        missing = [p for p in profile.runtime.onnx_providers if p not in have]
        checks.append(Check("execution providers", not missing,
                            f"available: {', '.join(have) or 'none'}"
                            + (f"; MISSING {', '.join(missing)}: runs would fall back and be marked invalid"
                               if missing else "")))
    gov = state.get("governor")
    checks.append(Check("governor", gov in (None, "performance"),
                        "not exposed (container or VM)" if gov is None else
                        f"{gov}" + ("" if gov == "performance" else
                                    "; for stable figures: echo performance | sudo tee "
                                    "/sys/devices/system/cpu/cpu*/cpufreq/scaling_governor")))
    temp = state.get("temp_c")
    checks.append(Check("temperature", temp is None or temp < HOT_C,
                        "no thermal sensor exposed" if temp is None else f"{temp:.1f} C"
                        + ("" if temp < HOT_C else f" (>= {HOT_C:.0f} C: let it cool or add a heatsink/fan)")))
    if profile.telemetry.throttled:
        flags = state.get("throttled")
        checks.append(Check("throttling", bool(flags) and not flags["now"],
                            f"{flags['raw']} (now: {flags['now']}, since boot: {flags['since_boot']})" if flags
                            else f"`{profile.telemetry.throttled}` gave nothing"))
    if profile.telemetry.power_mode:
        pm = state.get("power_mode")
        checks.append(Check("power mode", bool(pm), (pm or f"`{profile.telemetry.power_mode}` gave nothing")
                            .replace("\n", " ")[:200]))
    if profile.telemetry.clocks:
        clocks = state.get("clocks")
        checks.append(Check("clocks", bool(clocks), (clocks or f"`{profile.telemetry.clocks}` gave nothing")
                            .replace("\n", " ")[:200]))
    free = int(info.get("free_bytes") or 0)
    checks.append(Check("free disk", free >= MIN_FREE_BYTES,
                        f"{free / 2**20:.0f} MiB free in {info.get('workdir', profile.workdir)}"))
    return checks


def format_checks(profile: DeviceProfile, checks: list[Check]) -> str:
    """One line per check, failures marked, and a last line saying whether the device is ready."""
    width = max((len(c.name) for c in checks), default=0)
    lines = [f"{profile.name} ({profile.description or profile.connection.transport})"]
    lines += [f"  {'ok  ' if c.ok else 'FAIL'}  {c.name:<{width}}  {c.detail}" for c in checks]
    bad = [c.name for c in checks if not c.ok]
    lines.append("ready" if not bad else f"not ready: fix {', '.join(bad)}")
    return "\n".join(printable(line) for line in lines)  # details come from the profile and the board


def doctor(profile: DeviceProfile, trust: bool = False, confirm: Callable[[str], bool] = _ask) -> list[Check]:
    """Every check, in order; stops early only where later checks cannot run (no route, untrusted key, no python)."""
    checks: list[Check] = []
    if not profile.is_local:
        hk = check_host_key(profile, trust, confirm)
        checks.append(hk)
        if not hk.ok:
            return checks
    try:
        tr = open_transport(profile)
    except DeviceError as exc:
        return [*checks, Check("reachable", False, exc.message + (f" ({exc.hint})" if exc.hint else ""))]
    try:
        try:
            info = probe(profile, tr)
        except HostKeyError as exc:
            return [*checks, Check("host key", False, exc.message)]
        except DeviceError as exc:
            return [*checks, Check("reachable", False, exc.message + (f" ({exc.hint})" if exc.hint else ""))]
        where = "this host" if profile.is_local else f"{profile.connection.user or ''}@{profile.connection.host}"
        checks.append(Check("reachable", True, f"{where}, workdir {profile.workdir}"))
        checks.append(lock_check(profile, tr))
        if "error" in info:
            err = info["error"]
            name = "numpy" if "numpy" in err else "python"
            return [*checks, Check(name, False, f"{err}; install Python 3 and numpy on the device")]
        return checks + probe_checks(profile, info)
    finally:
        tr.close()
