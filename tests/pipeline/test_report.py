from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from pipeline.results.report import compare_runs, write_report
from pipeline.results.rundir import pareto_front
from tests.conftest import run_cli
from tests.pipeline.runfolder import make_run

SLOWER = {"onnx-fp32": (0.981, 0.150, 4), "onnx-int8": (0.979, 0.062, 1), "openvino-int8": (0.975, 0.052, 1)}


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp("report")
    a = make_run(root / "a", run_id="run-a")
    b = make_run(root / "b", run_id="run-b", started="2026-11-23T17:00:00+00:00", figures=SLOWER,
                 invalid={"openvino-int8": ["only 50 of 200 iterations within max_seconds=30"]})
    c = make_run(root / "c", run_id="run-c", device="rpi5")
    out = write_report([b, c, a], root / "out" / "report.html")
    return out, out.read_text()


def test_pareto_front_keeps_only_undominated_points() -> None:
    pts = [("a", 0.90, 1.0, 0), ("b", 0.95, 2.0, 0), ("c", 0.94, 3.0, 0), ("d", 0.80, 0.5, 0), ("e", 0.97, 2.5, 0)]
    assert pareto_front(pts) == ["d", "a", "b", "e"]


def test_pareto_front_prefers_lower_values_when_metric_is_lower_is_better() -> None:
    pts = [("a", 0.30, 1.0, 0), ("b", 0.10, 2.0, 0), ("c", 0.20, 3.0, 0), ("d", 0.50, 0.5, 0)]   # e.g. mse
    assert pareto_front(pts, higher_is_better=False) == ["d", "a", "b"]
    assert pareto_front(pts) == ["d"]          # read as higher-is-better, the fastest point would dominate all


def test_compare_runs_flags_p50_regression_beyond_threshold(tmp_path: Path) -> None:
    import json
    old = json.loads((make_run(tmp_path / "a") / "summary.json").read_text())
    new = json.loads((make_run(tmp_path / "b", figures=SLOWER) / "summary.json").read_text())
    cmp = compare_runs(old, new, 0.10)
    assert cmp["regressions"] == ["onnx-fp32"]  # 0.110 -> 0.150 ms is +36%; onnx-int8 +1.6% is within 10%
    rows = {r["artifact"]: r for r in cmp["rows"]}
    assert rows["tflite-int8"]["status"] == "removed"
    assert rows["onnx-int8"]["accuracy"] == (0.978, 0.979)
    assert compare_runs(old, new, 0.5)["regressions"] == []


def test_write_report_embeds_plots_and_tables_per_device(report: tuple[Path, str]) -> None:
    path, text = report
    assert path.stat().st_mode & 0o777 == 0o644
    assert "<script" not in text and "http://" not in text and "https://" not in text  # opens offline
    images = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)
    assert len(images) == 9  # three runs x (accuracy vs latency, size, stage trail)
    assert all(base64.b64decode(i).startswith(b"\x89PNG\r\n\x1a\n") for i in images)
    assert text.index('id="device-local"') < text.index('id="device-rpi5"')
    assert text.count("<th>p99 ms</th>") == 3 and text.count("<td>onnx-int8</td>") >= 3
    assert "only 50 of 200 iterations within max_seconds=30" in text
    assert "cannot export op aten::_fake_op" in text
    assert "onnxruntime 1.32.0" in text and "governor performance" in text


def test_write_report_compares_runs_of_same_recipe_and_device(report: tuple[Path, str]) -> None:
    _, text = report
    assert text.count("<h3>Changes from") == 1  # run-c is on another device: nothing to compare it with
    assert "Changes from <code>run-a</code> to <code>run-b</code>" in text
    assert "Latency regression (p50 worse by more than 10%): onnx-fp32" in text
    assert "0.110 → 0.150 (+36.4%)" in text


CHECK_IMAGES = """<script>
window.onload = () => {
  const imgs = [...document.images];
  const ok = imgs.filter(i => i.complete && i.naturalWidth > 0).length;
  document.body.setAttribute('data-images', imgs.length + '/' + ok);
};
</script>"""


def test_report_images_render_in_headless_chromium(report: tuple[Path, str], tmp_path: Path) -> None:
    if not (shutil.which("chromium") or shutil.which("chromium-browser")):
        (pytest.fail if os.environ.get("EDGEPIPE_REQUIRE_SYSTEM_TESTS") else pytest.skip)(
            "headless Chromium is not installed (apt-get install chromium)")
    _, text = report
    page = tmp_path / "probe.html"
    page.write_text(text.replace("</body>", CHECK_IMAGES + "</body>"))
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    with tempfile.TemporaryDirectory() as profile:
        proc = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu",
                               "--disable-background-networking", "--disable-component-update", "--disable-sync",
                               "--no-first-run",
                               f"--user-data-dir={profile}", "--virtual-time-budget=5000", "--dump-dom",
                               page.as_uri()], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert 'data-images="9/9"' in proc.stdout


def test_cli_report_writes_html_and_rejects_missing_folder(tmp_path: Path, run_dir: Path) -> None:
    out = tmp_path / "r.html"
    proc = run_cli("report", str(run_dir), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert out.read_text().count("<img ") == 3
    missing = run_cli("report", str(tmp_path / "nope"), "--out", str(out))
    assert missing.returncode == 2 and "no summary.json" in missing.stderr and "Traceback" not in missing.stderr


def test_write_report_adds_trend_from_three_runs_of_a_recipe(tmp_path: Path) -> None:
    runs = [make_run(tmp_path / f"r{i}", run_id=f"run-{i}", started=f"2026-11-2{i}T10:00:00+00:00",
                     figures={"onnx-int8": (0.978, 0.061 * (1 + i / 10), 1)}) for i in range(3)]
    text = write_report(runs, tmp_path / "trend.html").read_text()
    assert text.count("<h3>Trend: digits on local</h3>") == 1
    assert text.count("<img ") == 3 * 3 + 1  # three plots per run, plus the trend
    assert text.count("<h3>Changes from") == 2


def test_report_shows_the_int8_scheme_each_artifact_was_made_with() -> None:
    from pipeline.results.report import _int8_section

    arts = [{"name": "m", "backend": "onnx", "precision": "int8", "file": "m.int8.onnx",
             "metadata": {"int8": {"scheme": "dynamic", "requested": "auto",
                                   "scheme_why": "attention model: per call"}}},
            {"name": "m", "backend": "onnx", "precision": "fp32", "file": "m.fp32.onnx", "metadata": {}}]
    html = _int8_section({"artifacts": arts})
    assert "<h4>INT8 scheme</h4>" in html
    assert "<td>dynamic</td><td>auto</td><td>attention model: per call</td>" in html
    assert html.count("<tr>") == 2    # header + the one INT8 artifact, not the FP32 one
    assert "INT8 scheme" not in _int8_section({"artifacts": arts[1:]})
