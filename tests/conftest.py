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
