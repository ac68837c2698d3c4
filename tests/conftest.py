"""Shared fixtures: the demo recipe, a writer for throw-away recipes, and a quick CLI runner."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DIGITS = ROOT / "examples" / "digits"


@pytest.fixture(scope="session", autouse=True)
def _private_results_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Tests (and the CLI subprocesses they start, which inherit the environment) never touch the user's store.

    Session-scoped so it is in place before module-scoped fixtures that run the real CLI."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EDGEPIPE_DB", str(tmp_path_factory.mktemp("results-store") / "results.db"))
        key = tmp_path_factory.mktemp("signing") / "release.key"   # never ~/.config
        from pipeline.release.signing import generate_key

        generate_key(key)   # a named key must exist: EDGEPIPE_SIGNING_KEY never creates one
        mp.setenv("EDGEPIPE_SIGNING_KEY", str(key))
        yield


@pytest.fixture(scope="session")
def digits_recipe() -> Path:
    """The digits chain on the tiny 32x32 teacher (examples/digits/tiny.yaml, seconds per stage), as shipped; tests
    shorten it only with ``--scale`` (README "Scale"). The demo itself is DIGITS / "recipe.yaml" (tests/pipeline/
    test_demo.py runs it)."""
    return DIGITS / "tiny.yaml"


@pytest.fixture(scope="session")
def digits_run_recipe() -> Path:
    """The run-mechanics tests' own recipe: the demo's teacher and data, no stages, onnx-fp32 (seconds a run)."""
    return ROOT / "tests" / "fixtures" / "digits_run" / "recipe.yaml"


@pytest.fixture
def write_recipe(tmp_path: Path):
    """Write a recipe (and optional side files) into a fresh folder; returns the recipe path."""

    def _write(text: str, files: dict[str, str] | None = None) -> Path:
        for name, body in (files or {}).items():
            (tmp_path / name).write_text(textwrap.dedent(body))
        path = tmp_path / "recipe.yaml"
        path.write_text(textwrap.dedent(text))
        return path

    return _write


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """The real command line in a subprocess: exit codes and stderr exactly as a user sees them."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], capture_output=True, text=True,
                          cwd=cwd or ROOT, env=env, timeout=timeout, check=False)


def assert_gate_verdict_only(proc: subprocess.CompletedProcess[str], summaries) -> None:
    """A run at ``--scale`` below 1 exits 0, or 3 when the only failures are the gate's metric-drop limits (a shortened
    training can land under a gate the full recipe meets: README "Scale"); anything else is a failure."""
    summaries = list(summaries)
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.returncode in (0, 3), proc.stderr[-3000:]
    assert (proc.returncode == 0) == all(s["gate"]["passed"] for s in summaries)
    for s in summaries:
        assert all(" below baseline " in f or " worse than baseline " in f for f in s["gate"]["failures"]), \
            s["gate"]["failures"]


SIX = ("onnx-fp32", "onnx-int8", "openvino-fp32", "openvino-int8", "tflite-fp32", "tflite-int8")


def assert_artifacts_honest(summary: dict, out: Path, names) -> None:
    """Each artifact the recipe asked for, in order: its file on disk with the summary's sha256, a finite value in
    the task's own metric, a validity verdict (a measurement marked invalid says why), and a gate verdict that is
    exactly its metric drop against ``gate.max_metric_drop``; a backend that cannot build the model states why in
    one line and fails the gate."""
    import hashlib
    import math

    from targets import units

    gate, metric = summary["gate"], summary["baseline"]["metric"]["name"]
    limit = units.max_metric_drop(gate)
    assert gate["max_latency_ms"] is None and gate["max_bytes"] is None   # the verdict is the metric drop alone
    arts = {a["name"]: a for a in summary["artifacts"]}
    verdicts = {v["artifact"]: v for v in gate["artifacts"]}
    assert list(arts) == list(names) and list(verdicts) == list(names), (list(arts), list(verdicts))
    for name, art in arts.items():
        if art.get("error"):
            assert "\n" not in art["error"] and len(art["error"]) > 20, (name, art["error"])
            assert verdicts[name]["passed"] is False and art["error"] in verdicts[name]["failures"][0], name
            continue
        path = out / art["file"]
        assert path.is_file() and hashlib.sha256(path.read_bytes()).hexdigest() == art["sha256"], name
        assert art["metric"]["name"] == metric and math.isfinite(art["metric"]["value"]), (name, art["metric"])
        assert art["latency_ms"]["p50"] > 0 and art["latency_ms"]["n"] >= 20, name
        assert art["valid"] is True and art["invalid_reasons"] == [] or \
            art["valid"] is False and all(r.strip() for r in art["invalid_reasons"]) and art["invalid_reasons"], name
        drop = units.drop(gate["baseline_metric"], art["metric"]["value"], art["metric"])
        assert verdicts[name]["passed"] is art["gate"]["passed"] is (drop <= limit + 1e-9), (name, drop, limit)
    assert gate["passed"] is all(v["passed"] for v in verdicts.values())


TINY_MODELS = """
    import torch
    from torch import nn

    def tiny():
        return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                             nn.Linear(4, 10))
"""

#: a linear classifier on random 8x8 inputs (module `tiny`: model, splits): a real run folder in seconds
TINY = """
    import torch
    from torch import nn
    from torch.utils.data import TensorDataset

    def model():
        torch.manual_seed(0)
        return nn.Sequential(nn.Flatten(), nn.Linear(64, 10))

    def splits():
        g = torch.Generator().manual_seed(0)
        ds = TensorDataset(torch.randn(32, 1, 8, 8, generator=g), torch.randint(0, 10, (32,), generator=g))
        return {"train": ds, "calib": ds, "eval": ds}
"""
