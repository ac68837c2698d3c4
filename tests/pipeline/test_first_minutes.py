"""What a new user meets in the first ten minutes (issue 23): history's figures, the first release key, check's
one-line problems with a "did you mean"."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.results.history import format_history, history
from pipeline.results.store import open_store, record_summary
from tests.conftest import run_cli
from tests.pipeline.runfolder import make_run


def _with_metric(run: Path, name: str, values: dict[str, float], baseline: float) -> Path:
    """Rewrite a fabricated run's figures as another metric (what a cosine or user-metric run stores)."""
    path = run / "summary.json"
    summary = json.loads(path.read_text())
    summary["baseline"].pop("accuracy", None)
    summary["baseline"]["metric"] = {"name": name, "value": baseline, "higher_is_better": True, "unit": "raw"}
    for art in summary["artifacts"]:
        key = f"{art['backend']}-{art['precision']}"
        if key in values:
            art.pop("accuracy", None)
            art["metric"] = {"name": name, "value": values[key], "higher_is_better": True, "unit": "raw"}
    path.write_text(json.dumps(summary))
    return run


def test_history_shows_the_runs_own_metric_and_baseline_when_it_is_not_accuracy(tmp_path):
    st = open_store(tmp_path / "h.db")
    run = _with_metric(make_run(tmp_path / "r", run_id="cos-1"), "cosine",
                       {"onnx-fp32": 0.99981, "onnx-int8": 0.9912, "openvino-int8": 0.9904}, 0.99995)
    record_summary(run_dir=run, store=st)
    [row] = history(st)
    assert row["metric"] == "cosine" and row["baseline_metric"] == pytest.approx(0.99995)
    header, rule, line = format_history([row]).splitlines()
    spans, at = [], 0
    for dashes in rule.split("  "):   # the rule's dash groups are the columns
        spans.append((at, at + len(dashes)))
        at += len(dashes) + 2
    cells = {header[a:b].strip(): line[a:b].strip() for a, b in spans}
    from pipeline.results.rundir import artifact_name, pick_best

    shipped = pick_best(json.loads((run / "summary.json").read_text())["artifacts"])   # the release's pick
    assert cells["metric"] == "cosine" and cells["baseline"] == "0.99995" and cells["best"] == artifact_name(shipped)
    assert "base acc" not in header


def test_history_names_no_best_when_every_artifact_scores_zero(tmp_path):
    st = open_store(tmp_path / "h.db")
    run = make_run(tmp_path / "r", run_id="zero-1", figures={"onnx-fp32": (0.0, 0.11, 4), "onnx-int8": (0.0, 0.06, 1)},
                   gate={"max_accuracy_drop": 100})
    record_summary(run_dir=run, store=st)
    [row] = history(st)
    assert row["valid"] == 2 and row["best"] is None and row["best_accuracy"] is None
    assert "onnx-int8" not in format_history([row]) and "onnx-fp32" not in format_history([row])


def test_first_release_says_where_it_created_the_signing_key_and_how_to_use_ones_own(tmp_path, monkeypatch):
    run = make_run(tmp_path / "run", figures={"onnx-fp32": (0.981, 0.110, 4)})
    monkeypatch.delenv("EDGEPIPE_SIGNING_KEY", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    first = run_cli("release", str(run), "--dist", str(tmp_path / "dist"), "--version", "1")
    assert first.returncode == 0, first.stderr
    key = tmp_path / "config" / "edgepipe" / "release-ed25519.key"
    [line] = [ln for ln in first.stderr.splitlines() if "signing key" in ln]
    assert str(key) in line and "--key" in line and "EDGEPIPE_SIGNING_KEY" in line and "edgepipe keygen" in line
    assert key.is_file()
    again = run_cli("release", str(run), "--dist", str(tmp_path / "dist2"), "--version", "1")
    assert again.returncode == 0 and "created" not in again.stderr   # said once, when it was made


def test_check_suggests_the_closest_key_and_metric_without_pydantics_prefix(write_recipe):
    recipe = write_recipe("""
        name: nearmiss
        model: {factory: "tiny:model", input_shape: [1, 1, 8, 8]}
        data: {factory: "tiny:model", eval_sample: 100}
        task: {metric: mAP50}
        stages:
          distill: {temprature: 3.0}
        gate: {max_accuracy_drop: 1.0}
        colour: red
    """, {"tiny.py": "def model():\n    pass\n"})
    proc = run_cli("check", str(recipe))
    assert proc.returncode == 2, proc.stderr
    err = proc.stderr
    assert "data.eval_sample: unknown key; did you mean 'eval_samples'?" in err
    assert "task.metric: unknown metric 'mAP50'; did you mean 'map50'?" in err
    assert "stages.distill.temprature: unknown key; did you mean 'temperature'?" in err
    assert "colour: unknown key (check the spelling)" in err   # nothing close: no guess
    assert "Value error" not in err and "Traceback" not in err
