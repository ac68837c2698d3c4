"""Benchmark jobs on a device: upload the runner, the artifact and the inputs, run, parse one JSON line, clean up.

The job folder is fresh per job under the profile's ``workdir`` and removed afterwards, whatever happened (an
error, a timeout, Ctrl-C). A job holds the device lock (``targets.lock``) from upload to cleanup, so two runs aimed at
one board never overlap and disturb each other's figures; the whole job is bounded by ``connection.job_timeout``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from targets.artifact import Artifact
from targets.errors import DeviceError, RemoteCommandError
from targets.lock import device_lock
from targets.profiles import DeviceProfile
from targets.runner import RUNNER_PATH
from targets.transport import Transport, open_transport

STALE_JOB_MIN = 10


def runner_argv(profile: DeviceProfile, python: str, job: str, artifact_name: str, backend: str,
                inputs_name: str | None, precision: str | None = None) -> list[str]:
    rules, rt, tel = profile.bench, profile.runtime, profile.telemetry
    argv = [python, f"{job}/bench.py", "--artifact", f"{job}/{artifact_name}", "--backend", backend,
            *(["--precision", precision] if precision else []),
            "--threads", str(rt.threads), "--warmup", str(rules.warmup),
            "--min-iterations", str(rules.min_iterations), "--min-seconds", str(rules.min_seconds),
            "--max-seconds", str(rules.max_seconds), "--providers", ",".join(rt.onnx_providers)]
    if inputs_name:
        argv += ["--inputs", f"{job}/{inputs_name}"]
    for flag, value in (("--thermal", tel.thermal), ("--throttled-cmd", tel.throttled),
                        ("--power-mode-cmd", tel.power_mode), ("--clocks-cmd", tel.clocks)):
        if value:
            argv += [flag, value]
    return argv


def parse_runner_output(result_stdout: str, context: str) -> dict[str, Any]:
    for line in reversed(result_stdout.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                break
    raise RemoteCommandError(f"{context}: the runner printed no JSON result",
                             hint="run `edgepipe doctor` on the device to check python and numpy")


def benchmark(profile: DeviceProfile, artifact: Artifact, inputs: Path | None = None,
              transport: Transport | None = None) -> dict[str, Any]:
    """Run the on-device runner for one artifact and return its JSON record (latency, accuracy, state)."""
    own = transport is None
    tr = transport or open_transport(profile)
    job_timeout = profile.connection.job_timeout
    try:
        with device_lock(tr, profile.workdir, lease_s=job_timeout + 120, wait_s=job_timeout, device=profile.name):
            return _job(profile, tr, artifact, inputs, time.monotonic() + job_timeout)
    finally:
        if own:
            tr.close()


def _job(profile: DeviceProfile, tr: Transport, artifact: Artifact, inputs: Path | None,
         deadline: float) -> dict[str, Any]:
    context = f"{profile.name}: {Path(artifact.path).name}"

    def remaining() -> float:
        left = deadline - time.monotonic()
        if left <= 0:
            raise DeviceError(f"{context}: the job ran past connection.job_timeout="
                              f"{profile.connection.job_timeout:.0f}s", hint="raise it in the profile")
        return left

    # We hold the device lock, so no other job runs here: job folders older than STALE_JOB_MIN are leftovers of a
    # run that lost its link or its host mid-job (cleanup could not reach the device then).
    tr.run(["find", profile.workdir, "-maxdepth", "1", "-name", "job-*", "-mmin", f"+{STALE_JOB_MIN}",
            "-exec", "rm", "-rf", "{}", "+"], timeout=60)
    job = tr.make_job_dir(profile.workdir)
    try:
        tr.put(RUNNER_PATH, f"{job}/bench.py")
        for f in artifact.files or [artifact.path]:
            remaining()
            tr.put(Path(f), f"{job}/{Path(f).name}")
        inputs_name = None
        if inputs is not None:
            inputs_name = inputs.name
            tr.put(inputs, f"{job}/{inputs_name}")
        argv = runner_argv(profile, tr.python(profile.python), job, Path(artifact.path).name,
                           artifact.backend, inputs_name, artifact.precision)
        res = tr.run(argv, timeout=min(profile.connection.command_timeout, remaining()))
        record = parse_runner_output(res.stdout, context) if res.stdout.strip() else None
        if record is None or "error" in record or not res.ok:
            detail = (record or {}).get("error") or res.stderr.strip().splitlines()[-1:] or ["no output"]
            raise RemoteCommandError(f"{context}: runner failed (exit {res.exit_status}): {detail}",
                                     exit_status=res.exit_status, stderr=res.stderr)
        return record
    finally:
        tr.remove_tree(job)
