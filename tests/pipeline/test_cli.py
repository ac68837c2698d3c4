"""`edgepipe backends`: the capability table as the user sees it, with what this machine lacks and how to get it."""

from __future__ import annotations

import argparse

import targets
from pipeline.cli import cmd_backends
from targets import BACKENDS, CAPABILITIES
from tests.conftest import run_cli


def test_backends_lists_every_backend_with_its_installed_runtime():
    proc = run_cli("backends", "--strict")
    assert proc.returncode == 0, proc.stderr
    for name in BACKENDS:
        assert name in proc.stdout
    for cap in CAPABILITIES.values():
        assert f"{cap['runtime']} " in proc.stdout and cap["suffix"] in proc.stdout


def test_backends_names_the_extra_for_a_missing_runtime_and_strict_fails(monkeypatch, capsys):
    monkeypatch.setitem(targets.CAPABILITIES, "openvino",
                        {**CAPABILITIES["openvino"], "runtime": "edgepipe_no_such_runtime"})
    assert cmd_backends(argparse.Namespace(strict=False)) == 0
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if ln.startswith("openvino-fp32"))
    assert "MISSING edgepipe_no_such_runtime" in line and "pip install 'edgepipe[openvino]'" in line
    assert "MISSING" not in out.replace(line, "")
    assert cmd_backends(argparse.Namespace(strict=True)) == 2
