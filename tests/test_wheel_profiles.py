"""A wheel install carries the device profiles: ``--device local`` works outside a checkout (issue 15, item 18).

Economical: the wheel is built without dependencies or isolation, installed with --no-deps into a throw-away
prefix, and run with this venv's site-packages behind it (torch etc. come from there, edgepipe from the wheel).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_wheel_install_lists_and_loads_the_local_profile_outside_the_checkout(tmp_path):
    src = tmp_path / "src"
    subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", "-o", str(tmp_path / "src.tar"), "HEAD"],
                   check=True)
    src.mkdir()
    subprocess.run(["tar", "-xf", str(tmp_path / "src.tar"), "-C", str(src)], check=True)
    for rel in ("pyproject.toml", "targets/profiles.py"):  # the working tree's version of what this test is about
        (src / rel).write_bytes((ROOT / rel).read_bytes())
    wheels = tmp_path / "wheels"
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(wheels), str(src)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    [wheel] = wheels.glob("edgepipe-*.whl")
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, capture_output=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(target)
    code = ("import targets.profiles as p, sys; assert str(p.PROFILE_DIR).startswith(sys.argv[1]), p.PROFILE_DIR; "
            "print(sorted(p.list_profiles())); print(p.load_profile('local').name)")
    res = subprocess.run([sys.executable, "-c", code, str(target)], capture_output=True, text=True, cwd=elsewhere,
                         env=env, check=False)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "'rpi5'" in res.stdout and res.stdout.strip().endswith("local")
    cli = subprocess.run([sys.executable, "-m", "pipeline.cli", "devices"], capture_output=True, text=True,
                         cwd=elsewhere, env=env, check=False)
    assert cli.returncode == 0 and "local" in cli.stdout, cli.stderr[-2000:]


def test_editable_install_prints_no_setuptools_warning_when_built_from_the_checkout(tmp_path):
    """``pip install -e .`` shows the backend's warnings; the package layout must not make setuptools warn."""
    src = tmp_path / "src"
    subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", "-o", str(tmp_path / "src.tar"), "HEAD"],
                   check=True)
    src.mkdir()
    subprocess.run(["tar", "-xf", str(tmp_path / "src.tar"), "-C", str(src)], check=True)
    (src / "pyproject.toml").write_bytes((ROOT / "pyproject.toml").read_bytes())
    code = "import sys; from setuptools import build_meta as b; print(b.build_editable(sys.argv[1]))"
    proc = subprocess.run([sys.executable, "-W", "always", "-c", code, str(tmp_path / "wheels")],
                          capture_output=True, text=True, cwd=src, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout + proc.stderr
    assert "editable" in proc.stdout and "Warning" not in out and "same name" not in out, out[-2000:]
    [wheel] = (tmp_path / "wheels").glob("edgepipe-*.whl")
    import zipfile

    pth = [n for n in zipfile.ZipFile(wheel).namelist() if n.endswith(".pth")]
    assert pth, "an editable wheel adds the checkout with a .pth file"
