"""``release`` does not trust summary.json: files outside the run folder or with another sha256 are never packed,
and the gate is judged again from the figures (issue 15, item 3)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.release.bundle import build_bundle
from targets.errors import ConfigError, GateError
from tests.pipeline.runfolder import make_run

PASSING = {"onnx-fp32": (0.981, 0.110, 4), "onnx-int8": (0.978, 0.061, 1)}


def _edit(run_dir: Path, fn) -> None:
    path = run_dir / "summary.json"
    summary = json.loads(path.read_text())
    fn(summary)
    path.write_text(json.dumps(summary))


def test_release_refuses_an_artifact_path_outside_the_run_folder(tmp_path):
    run_dir = make_run(tmp_path / "run", figures=PASSING)
    secret = tmp_path / "secret.onnx"
    secret.write_bytes(b"private")

    def point_outside(s):
        for a in s["artifacts"]:
            a["file"] = "../secret.onnx"
            a["sha256"] = __import__("hashlib").sha256(b"private").hexdigest()
    _edit(run_dir, point_outside)
    with pytest.raises(ConfigError, match="outside the run folder"):
        build_bundle(run_dir, "local", tmp_path / "dist")
    assert not list((tmp_path / "dist").glob("*.tar.gz"))


def test_release_refuses_an_artifact_without_a_matching_sha256(tmp_path):
    run_dir = make_run(tmp_path / "run", figures=PASSING)
    _edit(run_dir, lambda s: [a.pop("sha256") for a in s["artifacts"]])
    with pytest.raises(ConfigError, match="no file or sha256"):
        build_bundle(run_dir, "local", tmp_path / "dist")


def test_release_rejudges_a_gate_the_summary_claims_passed(tmp_path):
    run_dir = make_run(tmp_path / "run", figures={"onnx-int8": (0.50, 0.061, 1)})  # 48 points below baseline

    def claim_pass(s):
        s["gate"]["passed"] = True
        s["gate"]["failures"] = []
        for a in s["artifacts"]:
            a["gate"] = {"passed": True, "failures": []}
    _edit(run_dir, claim_pass)
    with pytest.raises(GateError, match="points below baseline"):
        build_bundle(run_dir, "local", tmp_path / "dist")
