"""A device with tflite_runtime (every wheel of it was built for NumPy 1.x) and NumPy 2: doctor must not pass it, and
the runner must say what to install instead of ``SystemError ... CreateWrapperFromFile``.

The real tflite-runtime 2.14.0 wheel (x86_64; there is no cp311 aarch64 wheel) is installed into the test cache, not
into the venv, and a device interpreter sees it with ai_edge_litert hidden -- a board that only has tflite_runtime.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from targets.runner import RUNNER_PATH
from tests import armboard, sshd
from tests.conftest import run_cli

pytestmark = pytest.mark.tflite
WHEEL = "tflite-runtime==2.14.0"
MESSAGE = "tflite_runtime was built for NumPy 1.x: install numpy<2 or ai-edge-litert"


@pytest.fixture(scope="module")
def device_python(tmp_path_factory) -> Path:
    if int(np.__version__.split(".")[0]) < 2:
        pytest.skip("the host has NumPy 1.x: tflite_runtime works with it")
    if not (sys.platform == "linux" and sys.version_info[:2] <= (3, 11)):
        pytest.skip(f"{WHEEL} has wheels for Linux and CPython <= 3.11 only")
    site = armboard.cache_root() / "tflite-runtime-2.14.0"
    if not (site / "tflite_runtime").is_dir():
        tmp = site.with_name(site.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        proc = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                               "--no-deps", "--only-binary=:all:", "--target", str(tmp), WHEEL],
                              capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            pytest.skip(f"cannot install {WHEEL} from the package index: {proc.stderr.strip()[-300:]}")
        shutil.rmtree(site, ignore_errors=True)
        tmp.rename(site)
    folder = tmp_path_factory.mktemp("tflite-runtime-device")
    (folder / "blockers").mkdir()
    (folder / "blockers" / "sitecustomize.py").write_text(sshd.BLOCKER)
    python = folder / "python3"
    python.write_text(f'#!/bin/sh\nPYTHONPATH={folder / "blockers"}:{site} EDGEPIPE_TEST_BLOCK=ai_edge_litert '
                      f'exec {sys.executable} "$@"\n')
    python.chmod(0o755)
    return python


def _runner(python: Path, *args: str) -> tuple[int, dict]:
    proc = subprocess.run([str(python), str(RUNNER_PATH), *args], capture_output=True, text=True, timeout=300,
                          check=False)
    line = next(ln for ln in reversed(proc.stdout.splitlines()) if ln.startswith("{"))
    return proc.returncode, json.loads(line)


def test_runner_names_the_numpy1_build_instead_of_a_system_error(device_python, tiny):
    code, out = _runner(device_python, "--artifact", tiny.artifact("tflite", "fp32").path, "--backend", "tflite",
                        "--min-iterations", "1", "--min-seconds", "0", "--warmup", "0")
    assert code == 2
    assert out["error"].startswith(MESSAGE) and "numpy 2." in out["error"], out


def test_probe_builds_an_interpreter_and_reports_the_pair_unusable(device_python):
    _, info = _runner(device_python, "--probe")
    assert info["runtimes"]["tflite"] is None
    assert info["runtime_errors"]["tflite"].startswith(MESSAGE)
    _, ok = _runner(Path(sys.executable), "--probe")  # the host's ai_edge_litert passes the same self-test
    assert ok["runtimes"]["tflite"].startswith("ai_edge_litert ")


def test_doctor_fails_the_tflite_runtime_check_with_the_fix(device_python, tmp_path):
    profile = tmp_path / "tfl-board.yaml"
    profile.write_text(yaml.safe_dump({"name": "tfl-board", "connection": {"transport": "local"},
                                       "python": str(device_python), "workdir": str(tmp_path / "work"),
                                       "backends": ["tflite-fp32"]}))
    proc = run_cli("doctor", str(profile))
    assert proc.returncode != 0
    line = next(ln for ln in proc.stdout.splitlines() if "runtime tflite" in ln)
    assert line.strip().startswith("FAIL") and MESSAGE in line, proc.stdout
