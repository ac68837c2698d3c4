"""Issue 21's face-detector case with a model trained here (~6 s): three outputs on very different scales (boxes in
pixels, class scores in 0..1, landmarks), scored by mAP@0.5 through a host postprocess. Pruning with fine-tuning
keeps every head (the balanced output-matching default), a prune that falls past the gate stops at once with one line,
and the release's example prints boxes."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from tests.conftest import ROOT, run_cli

RECIPE = ROOT / "tests" / "fixtures" / "faces3" / "recipe.yaml"
pytestmark = pytest.mark.onnx


def test_prune_past_the_gate_stops_before_any_export_with_one_line(tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = run_cli("run", str(RECIPE), "--device", "local", "--out", str(out),
                   "--set", "stages={prune: {ratio: 0.75, finetune_epochs: 0}}", timeout=900)
    assert proc.returncode == 3, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("edgepipe: error: stage prune: mAP@0.5 ") and "points below the original's" in last
    assert "max_metric_drop 3" in last and "stages.prune.allow_gate_miss: true" in last
    assert "Traceback" not in proc.stderr and not list((out / "artifacts").glob("*.onnx"))


def test_pruned_three_head_detector_keeps_its_map_exports_and_releases_boxes(tmp_path: Path) -> None:
    out, dist = tmp_path / "run", tmp_path / "dist"
    proc = run_cli("run", str(RECIPE), "--device", "local", "--out", str(out), "--set", "gate.max_metric_drop=6",
                   "--set", "stages={prune: {ratio: 0.25, finetune_epochs: 3, latency_guard: false}}", timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    base = summary["baseline"]["metric"]["value"]
    assert base > 0.85                                          # a trained detector
    assert summary["stages"][0]["metric"]["value"] > base - 0.06   # not the "mAP 0.000" after pruning
    assert {a["name"] for a in summary["artifacts"]} == {"onnx-fp32", "onnx-int8"} and summary["gate"]["passed"]
    rel = run_cli("release", str(out), "--device", "local", "--dist", str(dist))
    assert rel.returncode == 0, rel.stderr
    bundle = next(dist.glob("faces3-local-*.tar.gz"))
    with tarfile.open(bundle, "r:gz") as tar:
        tar.extractall(tmp_path / "unpacked", filter="data")
    example = subprocess.run([sys.executable, "example.py"], cwd=next((tmp_path / "unpacked").iterdir()),
                             capture_output=True, text=True, timeout=120)
    assert example.returncode == 0, example.stderr
    assert example.stdout.startswith("input 0: 1 candidates, best 1 boxes (x1 y1 x2 y2 score class): "), \
        example.stdout
