"""A figure is valid only when it met its own minimums, a floor, the board's temperature rule and (when asked) a
repeat check; ``edgepipe bench`` exits 3 on an invalid figure (issue 15, items 7-10)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from targets.artifact import Artifact
from targets.device import benchmark
from targets.errors import ConfigError
from targets.profiles import load_profile
from targets.runner import bench
from tests.conftest import run_cli
from tests.targets.runner.test_bench_validity import _tiny

pytestmark = pytest.mark.onnx


def _profile(tmp_path: Path, bench_rules: str, telemetry: str = "{thermal: null}") -> Path:
    f = tmp_path / "p.yaml"
    f.write_text(f"name: here\nconnection: {{transport: local}}\npython: current\nworkdir: {tmp_path / 'wd'}\n"
                 f"backends: [onnx-fp32]\nruntime: {{threads: 1}}\nbench: {bench_rules}\ntelemetry: {telemetry}\n")
    return f


@pytest.mark.parametrize("rules, key", [
    ("{warmup: 0, min_iterations: 1, min_seconds: 0, max_seconds: 5}", "bench.min_iterations"),
    ("{warmup: 1, min_iterations: 50, min_seconds: 10, max_seconds: 0.3}", "bench.max_seconds"),
])
def test_profile_rejects_rules_below_the_floor_or_max_below_min(tmp_path, rules, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_profile(str(_profile(tmp_path, rules)))


def _run(tmp_path: Path, *extra: str) -> dict:
    args = bench.build_parser().parse_args(["--artifact", str(_tiny(tmp_path / "t.onnx")), "--threads", "1",
                                            "--warmup", "0", *extra])
    return bench.benchmark(args)


def test_runner_invalid_when_it_stops_at_max_seconds_before_min_seconds(tmp_path):
    rec = _run(tmp_path, "--min-iterations", "20", "--min-seconds", "10", "--max-seconds", "0.3")
    assert rec["valid"] is False and any("min_seconds=10" in r for r in rec["invalid_reasons"])


def test_runner_invalid_when_asked_for_fewer_than_the_floor(tmp_path):
    rec = _run(tmp_path, "--min-iterations", "1", "--min-seconds", "0", "--max-seconds", "5")
    assert rec["valid"] is False and any("floor" in r for r in rec["invalid_reasons"])


def test_runner_invalid_when_the_board_is_hotter_than_its_rule(tmp_path):
    hot = tmp_path / "temp"
    hot.write_text("95000\n")
    rec = _run(tmp_path, "--min-iterations", "20", "--min-seconds", "0.05", "--thermal", str(hot),
               "--max-temp-c", "80")
    assert rec["valid"] is False and any("95.0 °C" in r and "80" in r for r in rec["invalid_reasons"])


def test_bench_cli_exits_3_on_an_invalid_figure_and_still_prints_it(tmp_path):
    hot = tmp_path / "temp"
    hot.write_text("95000\n")
    prof = _profile(tmp_path, "{warmup: 1, min_iterations: 20, min_seconds: 0.05, max_seconds: 5}",
                    f"{{thermal: {hot}, max_temp_c: 80}}")
    proc = run_cli("bench", str(_tiny(tmp_path / "t.onnx")), "--device", str(prof), "--json")
    assert proc.returncode == 3, proc.stderr
    assert json.loads(proc.stdout)["valid"] is False and "not valid" in proc.stderr


def test_repeat_check_records_spread_and_flags_medians_apart(tmp_path):
    art = Artifact.from_files(_tiny(tmp_path / "t.onnx"), backend="onnx", precision="fp32")
    prof = load_profile(str(_profile(tmp_path, "{warmup: 1, min_iterations: 20, min_seconds: 0.05, max_seconds: 5, "
                                              "repeat: 2, repeat_tolerance: 0.0}")))
    rec = benchmark(prof, art)
    rep = rec["repeat"]
    assert len(rep["p50"]) == 2 and rep["spread"] >= 0 and rep["tolerance"] == 0.0
    if rep["spread"] > 0:
        assert rec["valid"] is False and any("repeat check" in r for r in rec["invalid_reasons"])


def test_bench_cli_repeat_records_both_medians(tmp_path):
    prof = _profile(tmp_path, "{warmup: 1, min_iterations: 20, min_seconds: 0.05, max_seconds: 5, "
                              "repeat_tolerance: 100}")
    proc = run_cli("bench", str(_tiny(tmp_path / "t.onnx")), "--device", str(prof), "--json", "--repeat", "2")
    assert proc.returncode == 0, proc.stderr[-1500:]
    rep = json.loads(proc.stdout)["repeat"]
    assert len(rep["p50"]) == 2 and rep["stable"] is True
