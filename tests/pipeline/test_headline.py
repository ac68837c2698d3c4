"""The headline: the shipped artifact against the original model (FP32 ONNX, same device), first everywhere."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest

from pipeline.results.headline import headline
from pipeline.results.report import write_report
from pipeline.results.rundir import pick_best
from pipeline.results.table import format_table
from targets.jsonio import write_json as atomic_write_json
from tests.conftest import run_cli
from tests.pipeline.runfolder import DEFAULT_FIGURES, make_run

ORIGINAL_P50 = 0.330


def _original(bytes_: int, p50: float = ORIGINAL_P50, accuracy: float = 0.983) -> dict:
    return {"name": "original", "backend": "onnx", "precision": "fp32", "file": "artifacts/original/x.onnx",
            "bytes": bytes_, "accuracy": accuracy, "valid": True,
            "latency_ms": {"p50": p50, "p90": p50 * 1.2, "std": p50 * 0.1, "n": 300}}


def _run_with_original(root: Path) -> tuple[Path, dict]:
    run = make_run(root, figures={k: v for k, v in DEFAULT_FIGURES.items() if v[0] is not None})   # gate passes
    summary = json.loads((run / "summary.json").read_text())
    for a in summary["artifacts"]:
        a["name"] = f"{a['backend']}-{a['precision']}"
    fp32 = next(a for a in summary["artifacts"] if a["precision"] == "fp32")
    summary["artifacts"] = [fp32]   # the headline reads whatever the pick rule ships; here the one artifact
    summary["original"] = _original(fp32["bytes"] * 4)
    summary["headline"] = headline(summary)
    atomic_write_json(run / "summary.json", summary)
    return run, summary


def test_headline_compares_the_release_pick_with_the_original(tmp_path: Path) -> None:
    _, summary = _run_with_original(tmp_path / "run")
    h = summary["headline"]
    chosen = pick_best(summary["artifacts"])
    assert h["chosen"]["name"] == f"{chosen['backend']}-{chosen['precision']}" == "onnx-fp32"
    assert h["speedup"] == pytest.approx(ORIGINAL_P50 / chosen["latency_ms"]["p50"], abs=1e-3)   # 3.0x
    assert h["size_ratio"] == pytest.approx(4.0) and h["metric_drop"] == pytest.approx(0.2)    # 0.983 -> 0.981
    assert h["faster"] is True and h["device"] == "local"
    assert h["text"] == "shipped onnx-fp32: 3.0× faster, 4.0× smaller than the original, top-1 −0.2 pt (local)"


def test_headline_says_no_faster_inside_the_spread_and_why_when_there_is_no_original(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run")
    summary = json.loads((run / "summary.json").read_text())
    assert headline(summary)["text"] == "no headline on local: the original model was not measured on this device"
    fp32 = next(a for a in summary["artifacts"] if a["precision"] == "fp32")
    summary["artifacts"] = [fp32]   # the pick is then this artifact whatever the pick rule
    summary["original"] = _original(fp32["bytes"], p50=fp32["latency_ms"]["p50"] * 1.01, accuracy=0.981)
    h = headline(summary)
    assert h["faster"] is False and h["slower"] is False
    assert h["text"] == "shipped onnx-fp32: no faster (1.01×), the same size as the original, top-1 ±0.0 pt (local)"


def test_console_table_ends_and_report_opens_with_the_headline(tmp_path: Path) -> None:
    run, summary = _run_with_original(tmp_path / "run")
    assert format_table(summary).splitlines()[-1] == summary["headline"]["text"]
    html = write_report([run], tmp_path / "r.html").read_text()
    body = html[html.index("<body>"):]
    first = body[body.index("</h1>") + 5:]
    assert first.startswith(f'<p class="headline"><b>{summary["headline"]["text"]}</b></p>')


def test_release_line_and_model_card_open_with_the_headline(tmp_path: Path) -> None:
    run, summary = _run_with_original(tmp_path / "run")
    proc = run_cli("release", str(run), "--device", "local", "--dist", str(tmp_path / "dist"))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0] == summary["headline"]["text"]
    bundle = next((tmp_path / "dist").glob("*.tar.gz"))
    with tarfile.open(bundle) as tar:
        card = next(m for m in tar.getmembers() if m.name.endswith("MODEL_CARD.md"))
        text = tar.extractfile(card).read().decode()
    assert text.splitlines()[2].startswith(f"**{summary['headline']['text']}**")


def test_headline_says_nothing_ships_when_no_artifact_meets_the_gate(tmp_path: Path) -> None:
    """A gate-failing run has no shipped artifact: the headline must not say "shipped" of the fallback pick."""
    _, summary = _run_with_original(tmp_path / "run")
    for art in summary["artifacts"]:
        art["gate"] = {"passed": False, "failures": ["top-1 too low"]}
    text = headline(summary)["text"]
    assert text.startswith("no artifact meets the gate on local; the best, onnx-fp32: ") and "shipped" not in text
