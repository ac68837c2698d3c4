"""End-to-end runs through the real CLI on the local device."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import DIGITS, run_cli

pytestmark = pytest.mark.onnx

SUMMARY_KEYS = {"schema", "recipe", "device", "run_id", "baseline", "stages", "artifacts", "gate"}
ARTIFACT_KEYS = {"backend", "precision", "file", "sha256", "bytes", "accuracy", "latency_ms", "valid", "environment"}


@pytest.fixture(scope="module")
def fp32_run(tmp_path_factory, digits_run_recipe) -> tuple[Path, object]:
    out = tmp_path_factory.mktemp("run") / "r"
    proc = run_cli("run", str(digits_run_recipe), "--device", "local", "--out", str(out))
    return out, proc


def test_run_writes_summary_with_design_keys_and_real_values(fp32_run):
    out, proc = fp32_run
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert SUMMARY_KEYS <= summary.keys()
    assert summary["schema"] == 1 and summary["device"] == "local" and summary["recipe"] == "digits"
    assert summary["baseline"]["accuracy"] > 0.95 and summary["baseline"]["macs"] > 1e6
    art = summary["artifacts"][0]
    assert ARTIFACT_KEYS <= art.keys()
    assert (out / art["file"]).is_file() and art["bytes"] == (out / art["file"]).stat().st_size
    lat = art["latency_ms"]
    assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] and lat["n"] >= 200
    assert art["environment"]["runtime"].startswith("onnxruntime ")
    assert abs(art["accuracy"] - summary["baseline"]["accuracy"]) < 1e-5  # FP32 reproduces the model exactly
    assert summary["gate"]["passed"] is True


def test_run_prints_a_table_and_logs_to_run_log(fp32_run):
    out, proc = fp32_run
    assert "onnx-fp32" in proc.stderr and "p90 ms" in proc.stderr
    log = (out / "run.log").read_text()
    assert "export onnx-fp32" in log and "bench onnx-fp32 on local" in log
    assert (out / "bench" / "onnx-fp32.json").is_file()


def test_bench_cli_measures_an_artifact_alone(fp32_run):
    out, _ = fp32_run
    artifact = next((out / "artifacts").glob("*.onnx"))
    proc = run_cli("bench", str(artifact), "--device", "local", "--json", "--inputs", str(out / "inputs/eval.npz"))
    assert proc.returncode == 0, proc.stderr
    rec = json.loads(proc.stdout)
    assert rec["latency_ms"]["n"] >= 200 and rec["accuracy"] > 0.95


def test_run_exits_3_when_the_latency_gate_fails(tmp_path, digits_run_recipe):
    proc = run_cli("run", str(digits_run_recipe), "--device", "local", "--out", str(tmp_path / "r"), "--set",
                   "gate.max_latency_ms=0.000001")
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert "onnx-fp32: p90 latency" in proc.stderr and "Traceback" not in proc.stderr
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["gate"]["passed"] is False and summary["artifacts"][0]["latency_ms"]["n"] > 0


def test_run_exits_2_naming_an_unknown_device(tmp_path, digits_recipe):
    proc = run_cli("run", str(digits_recipe), "--device", "no-such-board", "--out", str(tmp_path / "r"))
    assert proc.returncode == 2
    assert "unknown device 'no-such-board'" in proc.stderr and "Traceback" not in proc.stderr


def test_run_is_recorded_in_the_results_store(fp32_run):
    out, proc = fp32_run
    summary = json.loads((out / "summary.json").read_text())
    hist = run_cli("history", "--recipe", "digits", "--device", "local")
    assert hist.returncode == 0, hist.stderr
    assert summary["run_id"] in hist.stdout and "complete" in hist.stdout


def test_run_measures_the_original_and_ends_with_its_headline(fp32_run):
    """No stages: the shipped onnx-fp32 is the original's twin, so the headline must say so -- same size, same
    top-1, a speed-up that is the ratio of the two measured p50s and no claim of "faster" inside the noise."""
    out, proc = fp32_run
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    original, art = summary["original"], summary["artifacts"][0]
    assert original["valid"] and original["latency_ms"]["n"] >= 200 and (out / original["file"]).is_file()
    assert original["file"].startswith("artifacts/original/") and original["bytes"] == art["bytes"]
    assert original["accuracy"] == pytest.approx(summary["baseline"]["accuracy"], abs=1e-5)
    h = summary["headline"]
    assert h["chosen"]["name"] == "onnx-fp32" and h["original"]["name"] == "original"
    assert h["speedup"] == pytest.approx(original["latency_ms"]["p50"] / art["latency_ms"]["p50"], abs=1e-3)
    assert h["size_ratio"] == 1.0 and h["metric_drop"] == 0.0
    assert h["text"].startswith("shipped onnx-fp32: ") and h["text"].endswith("the same size as the original, "
                                                                               "top-1 ±0.0 pt (local)")
    assert proc.stderr.rstrip().splitlines()[-1] == h["text"]


def test_rerun_reuses_the_original_export_and_measurement(fp32_run, tmp_path):
    import shutil

    out, _ = fp32_run
    again = tmp_path / "again"
    shutil.copytree(out, again)
    first = json.loads((again / "summary.json").read_text())["original"]
    proc = run_cli("run", str(DIGITS / "tiny.yaml"), "--device", "local", "--out", str(again), "--set", "stages={}",
                   "--set", "backends=[onnx-fp32]", "--set", "gate.max_latency_ms=1000")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "original model: FP32 ONNX export re-used" in proc.stderr
    assert "original model on local: measurement re-used" in proc.stderr
    second = json.loads((again / "summary.json").read_text())["original"]
    assert second["sha256"] == first["sha256"] and second["latency_ms"] == first["latency_ms"]


def test_a_tampered_cached_original_measurement_is_measured_again(fp32_run, tmp_path):
    """The original's cached figure is re-checked with the runner's rules like every cached measurement (issue 19):
    an edited original.json (n=1, p90 below p50) is discarded with a warning, never the headline's reference."""
    import shutil

    out, _ = fp32_run
    again = tmp_path / "tampered"
    shutil.copytree(out, again)
    cache = again / "original.json"
    data = json.loads(cache.read_text())
    data["record"]["bench"]["latency_ms"].update(n=1, p90=data["record"]["bench"]["latency_ms"]["p50"] / 2)
    cache.write_text(json.dumps(data))
    proc = run_cli("run", str(DIGITS / "tiny.yaml"), "--device", "local", "--out", str(again), "--set", "stages={}",
                   "--set", "backends=[onnx-fp32]", "--set", "gate.max_latency_ms=1000")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "original.json is invalid (percentiles out of order" in proc.stderr
    assert "original model on local: measurement re-used" not in proc.stderr
    second = json.loads((again / "summary.json").read_text())["original"]
    assert second["latency_ms"]["n"] > 1 and second["valid"] is True
