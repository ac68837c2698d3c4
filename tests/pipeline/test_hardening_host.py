"""Host-side hardening (issue 20): non-finite metrics, a bounded eval set, hangs, and failures that were safe but
unclear. Each test failed on 5144bd4 (a NaN passed the gate, a 10^9-item dataset passed `check`, a silent server hung
`run`, a sleeping factory hung `check`, ...)."""

from __future__ import annotations

import io
import json
import math
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from pipeline.recipe.config import load_recipe
from pipeline.recipe.metrics import resolve_metric
from pipeline.results.gate import check_artifact
from targets.errors import ConfigError
from tests.conftest import ROOT, TINY, run_cli
from tests.pipeline.runfolder import make_run

METRICS = """
    import math

    class Base:
        primary = "score"
        higher_is_better = True
        def update(self, outputs, targets):
            pass

    class Nan(Base):
        def compute(self):
            return {"score": math.nan}

    class Inf(Base):
        def compute(self):
            return {"score": math.inf}

    class Raises(Base):
        def update(self, outputs, targets):
            raise ZeroDivisionError("division by zero in my metric")
        def compute(self):
            return {"score": 1.0}

    class Text(Base):
        def compute(self):
            return {"score": "0.9"}
"""


def _recipe(write_recipe, extra: str = "", files: dict[str, str] | None = None, name: str = "hard") -> Path:
    return write_recipe(textwrap.dedent(f"""
        name: {name}
        model: {{factory: "tiny:model", input_shape: [1, 1, 8, 8]}}
        data: {{factory: "tiny:splits"}}
        backends: [onnx-fp32]
        gate: {{max_accuracy_drop: 100}}
    """) + textwrap.dedent(extra), {"tiny.py": TINY, **(files or {})})


def _one_line(proc: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in proc.stderr and proc.stderr.startswith("edgepipe: error: "), proc.stderr[-1500:]


def _ends_in_one_error(stderr: str) -> None:
    """A run prints its progress lines first; the failure is then one last line."""
    lines = stderr.strip().splitlines()
    assert "Traceback" not in stderr and lines and lines[-1].startswith("edgepipe: error: "), stderr[-1500:]
    assert sum(1 for line in lines if line.startswith("edgepipe: error: ")) == 1, stderr[-1500:]


def _statuses(db: Path, recipe: str) -> list[str]:
    import sqlite3

    with sqlite3.connect(db) as conn:
        return [r[0] for r in conn.execute("SELECT status FROM runs WHERE recipe = ?", (recipe,))]


# ------------------------------------------------------------------------------------------------ 4: non-finite
@pytest.mark.parametrize("cls", ["Nan", "Inf"])
def test_a_nan_or_inf_user_metric_is_an_error_naming_the_metric(tmp_path, cls):
    (tmp_path / "m.py").write_text(textwrap.dedent(METRICS))
    spec = resolve_metric(f"m:{cls}", tmp_path)
    with pytest.raises(ConfigError, match=rf"task.metric 'm:{cls}' \(score\).*not a finite number"):
        spec.score([np.ones((2, 3), np.float32)], np.array([0, 1]))


@pytest.mark.parametrize("cls, expected", [("Raises", "ZeroDivisionError: division by zero in my metric"),
                                           ("Text", "'score' = '0.9' \\(str\\), not a number")])
def test_a_metric_that_raises_or_returns_a_string_is_a_config_error_naming_it(tmp_path, cls, expected):
    (tmp_path / "m.py").write_text(textwrap.dedent(METRICS))
    spec = resolve_metric(f"m:{cls}", tmp_path)
    with pytest.raises(ConfigError, match=rf"task.metric 'm:{cls}' \(score\).*{expected}") as info:
        spec.score([np.ones((2, 3), np.float32)], np.array([0, 1]))
    assert info.value.exit_code == 2


@pytest.mark.parametrize("cls", ["Nan", "Raises"])
def test_run_with_a_nan_or_raising_metric_exits_2_in_one_line_and_writes_no_nan(write_recipe, tmp_path, cls):
    recipe = _recipe(write_recipe, f"task: {{metric: 'm:{cls}'}}\n", {"m.py": METRICS})
    out = tmp_path / "out"
    proc = run_cli("run", str(recipe), "--device", "local", "--out", str(out))
    assert proc.returncode == 2, proc.stderr[-1500:]
    _ends_in_one_error(proc.stderr)
    assert f"'m:{cls}'" in proc.stderr.splitlines()[-1]
    summary = out / "summary.json"
    assert not summary.exists() or "NaN" not in summary.read_text()


def test_gate_fails_an_artifact_whose_metric_or_latency_is_not_finite():
    base = {"metric": {"name": "score", "value": 0.5, "higher_is_better": True, "unit": "raw"}}
    limits = {"max_metric_drop": 0.1, "max_latency_ms": 10.0, "max_bytes": None}
    nan_metric = {"name": "onnx-fp32", "metric": {"name": "score", "value": math.nan}, "valid": True,
                  "latency_ms": {"p90": 1.0}}
    failures = check_artifact(nan_metric, limits, base, "local")
    assert failures and "score is nan, not a finite number" in failures[0]
    nan_latency = {"name": "onnx-fp32", "metric": {"name": "score", "value": 0.5}, "valid": True,
                   "latency_ms": {"p90": math.nan}}
    assert any("p90 latency on local is nan" in f for f in check_artifact(nan_latency, limits, base, "local"))


def test_json_writes_refuse_nan_naming_the_key_and_leave_no_file(tmp_path):
    from targets.jsonio import write_json

    target = tmp_path / "summary.json"
    with pytest.raises(ConfigError, match=r"artifacts\[0\]\.metric\.value is not a finite number"):
        write_json(target, {"artifacts": [{"metric": {"value": math.nan}}]})
    assert list(tmp_path.iterdir()) == []


def test_the_store_refuses_a_summary_holding_nan(tmp_path):
    from pipeline.results.store import open_store

    summary = json.loads((make_run(tmp_path / "run") / "summary.json").read_text())
    summary["artifacts"][0]["metric"] = {"name": "top1", "value": math.inf}
    st = open_store(tmp_path / "s.db")
    try:
        with pytest.raises(ConfigError, match=r"artifacts\[0\]\.metric\.value is not a finite number"):
            st.finish_run(summary)
        assert st.get_run(summary["run_id"]) is None
    finally:
        st.close()


def test_the_stage_cache_refuses_a_nan_record_and_leaves_no_entry(tmp_path):
    from torch import nn

    from pipeline.stages.cache import StageCache

    cache = StageCache(tmp_path, "prune")
    with pytest.raises(ConfigError, match="accuracy is not a finite number"):
        cache.store("k", nn.Linear(2, 2), {"accuracy": math.nan})
    assert cache.lookup("k") is None and [p.name for p in cache.root.iterdir()] == []


def test_nan_weights_are_named_as_such_before_any_export(write_recipe):
    from pipeline.recipe.model import load_model

    nan_model = TINY + """
    def broken():
        m = model()
        with torch.no_grad():
            m[1].weight[0, 0] = float("nan")
        return m
    """
    recipe = load_recipe(_recipe(write_recipe, files={"tiny.py": nan_model}), ["model.factory=tiny:broken"])
    with pytest.raises(ConfigError, match=r"model.factory: the weights hold NaN or Inf \(first in '1.weight'\)"):
        load_model(recipe)


def test_nan_in_the_calibration_data_is_named_before_export(write_recipe, tmp_path):
    from pipeline.run import run

    data = TINY + """
    def dirty_calib():
        d = splits()
        x = d["calib"].tensors[0].clone()
        x[3, 0, 0, 0] = float("inf")
        return {**d, "calib": TensorDataset(x, d["calib"].tensors[1])}
    """
    recipe = _recipe(write_recipe, files={"tiny.py": data})
    with pytest.raises(ConfigError, match=r"split 'calib': input 'input' holds NaN or Inf \(first in sample 3\)"):
        run(recipe, ["local"], tmp_path / "out", ["data.factory=tiny:dirty_calib"], stream=io.StringIO())
    assert not list((tmp_path / "out").glob("artifacts/*"))


def test_validate_names_a_parent_output_that_is_nan_instead_of_a_cosine_mismatch(tiny_onnx):
    from targets.artifact import Artifact, sha256_file
    from targets.errors import OutputMismatchError
    from targets.validate import validate

    art = Artifact(path=str(tiny_onnx), backend="onnx", precision="fp32", sha256=sha256_file(tiny_onnx),
                   bytes=tiny_onnx.stat().st_size, files=[str(tiny_onnx)])
    ref = np.full((4, 10), np.nan, np.float32)
    with pytest.raises(OutputMismatchError, match="parent's own output 0 holds NaN or Inf") as info:
        validate(art, {"input": np.zeros((4, 1, 8, 8), np.float32)}, [ref], classification=False)
    assert "cosine" not in str(info.value)


# ------------------------------------------------------------------------------------------------ 9: memory bound
HUGE = TINY + """
    class Huge(torch.utils.data.Dataset):
        def __len__(self):
            return 10 ** 9
        def __getitem__(self, i):
            return torch.zeros(1, 8, 8), 0

    def huge():
        d = splits()
        return {**d, "eval": Huge()}
"""


def test_check_refuses_an_eval_set_larger_than_the_host_bound_naming_eval_samples(write_recipe):
    from pipeline.recipe.check import check

    recipe = _recipe(write_recipe, files={"tiny.py": HUGE})
    start = time.monotonic()
    with pytest.raises(ConfigError, match=r"data.eval_samples: 1,000,000,000 eval items of 264 bytes each") as info:
        check(str(recipe), ["data.factory=tiny:huge", "data.eval_samples=4000000000"])
    assert "at most" in str(info.value) and time.monotonic() - start < 60


def test_eval_arrays_refuses_before_reading_when_over_the_env_limit(write_recipe, monkeypatch):
    from pipeline.recipe.model import eval_arrays, load_data

    recipe = load_recipe(_recipe(write_recipe))
    data = load_data(recipe)
    monkeypatch.setenv("EDGEPIPE_MAX_EVAL_BYTES", "1000")
    with pytest.raises(ConfigError, match=r"data.eval_samples: set data.eval_samples to at most|data.eval_samples:"):
        eval_arrays(recipe, data["eval"])
    monkeypatch.setenv("EDGEPIPE_MAX_EVAL_BYTES", str(1 << 20))
    arrays, _ = eval_arrays(recipe, data["eval"])
    assert arrays["input"].shape == (32, 1, 8, 8)


# ------------------------------------------------------------------------------------------------ 11: hangs
class SilentServer:
    """A real TCP server on loopback that accepts connections and never sends a byte (a hung PostgreSQL)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)

    def close(self) -> None:
        for c in self.conns:
            c.close()
        self.sock.close()


@pytest.fixture
def silent_server():
    pytest.importorskip("pg8000")
    server = SilentServer()
    yield server
    server.close()


def test_a_store_server_that_never_answers_fails_within_the_timeout(silent_server, monkeypatch):
    from pipeline.results.store import open_store

    monkeypatch.setenv("EDGEPIPE_DB_TIMEOUT", "1")
    outcome: list[BaseException | None] = []

    def opening() -> None:
        try:
            open_store(f"postgresql+pg8000://u@127.0.0.1:{silent_server.port}/db").close()
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            outcome.append(exc)

    worker = threading.Thread(target=opening, daemon=True)
    worker.start()
    worker.join(30)
    assert outcome, "open_store still hangs after 30 s on a server that never answers"
    assert isinstance(outcome[0], ConfigError) and "EDGEPIPE_DB_TIMEOUT=1" in str(outcome[0])


def test_run_against_a_store_that_never_answers_is_a_one_line_error(silent_server, write_recipe, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "EDGEPIPE_DB_TIMEOUT": "1",
           "EDGEPIPE_DB": f"postgresql+pg8000://u@127.0.0.1:{silent_server.port}/db"}
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "history"], capture_output=True, text=True,
                          env=env, timeout=60, check=False)
    assert proc.returncode == 2
    _one_line(proc)
    assert "timed out" in proc.stderr


SLEEPY = TINY + """
    import time

    def sleepy():
        time.sleep(3600)
"""


def test_a_factory_that_never_returns_is_reported_then_stopped(write_recipe):
    recipe = _recipe(write_recipe, files={"tiny.py": SLEEPY})
    env = {**os.environ, "PYTHONPATH": str(ROOT), "EDGEPIPE_LOAD_TIMEOUT": "3"}
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "check", str(recipe), "--set",
                           "model.factory=tiny:sleepy"], capture_output=True, text=True, env=env, timeout=120,
                          check=False)
    assert proc.returncode == 2, proc.stderr[-1500:]
    assert "still waiting for model.factory 'tiny:sleepy'" in proc.stderr
    assert "model.factory 'tiny:sleepy' did not return within 3 s" in proc.stderr
    assert "Traceback" not in proc.stderr and time.monotonic() - start < 100


FORKING = TINY + """
    import os

    def forking():
        os.fork()
        return model()
"""


def test_a_factory_that_forks_runs_the_command_once(write_recipe):
    recipe = _recipe(write_recipe, files={"tiny.py": FORKING})
    proc = run_cli("check", str(recipe), "--set", "model.factory=tiny:forking", timeout=120)
    assert proc.returncode == 0, proc.stderr[-1500:]
    assert proc.stdout.count(": ok (recipe") == 1, proc.stdout
    assert "forked, and the child process" in proc.stderr


def test_sigterm_during_a_run_closes_the_store_row_as_interrupted(write_recipe, tmp_path):
    marker = tmp_path / "loading"
    slow = TINY + f"""
    import time
    from pathlib import Path

    def slow():
        Path({str(marker)!r}).write_text("x")
        time.sleep(120)
        return model()
    """
    recipe = _recipe(write_recipe, files={"tiny.py": slow}, name="sigterm")
    db = tmp_path / "s.db"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "EDGEPIPE_DB": str(db)}
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "run", str(recipe), "--device", "local",
                             "--out", str(tmp_path / "out"), "--set", "model.factory=tiny:slow"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 120
        while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert marker.exists(), proc.communicate(timeout=10)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGTERM, err[-1500:]   # ends by the signal, as a launcher expects
    assert "terminated" in err
    assert _statuses(db, "sigterm") == ["interrupted"]


# ------------------------------------------------------------------------------------------------ safe but unclear
@pytest.mark.parametrize("key, value", [("stages.distill.lr", ".inf"), ("gate.max_latency_ms", "1e30"),
                                        ("stages.distill.epochs", "1000000000000"),
                                        ("stages.distill.temperature", "1e30")])
def test_non_finite_or_absurd_recipe_numbers_are_refused_naming_the_key(write_recipe, key, value):
    recipe = _recipe(write_recipe, "stages: {distill: {epochs: 1}}\n")
    with pytest.raises(ConfigError, match=rf"{key.replace('.', r'[.]')}: .*(not a finite number|out of range)"):
        load_recipe(recipe, [f"{key}={value}"])


def test_a_300_character_recipe_name_is_refused_by_the_recipe_check(write_recipe):
    with pytest.raises(ConfigError, match=r"recipe.yaml: name: .*at most 100 characters"):
        load_recipe(_recipe(write_recipe, name="n" * 300))


def test_a_batch_one_program_saved_as_the_readme_says_runs_on_the_whole_eval_set(write_recipe, tmp_path):
    import torch

    from pipeline.recipe.model import load_model, predict

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10)).eval()
    torch.export.save(torch.export.export(net, (torch.randn(1, 1, 8, 8),)), tmp_path / "teacher.pt2")
    path = write_recipe("""
        name: b1
        model: {program: teacher.pt2, input_shape: [1, 1, 8, 8]}
        data: {factory: "tiny:splits"}
        backends: [onnx-fp32]
        gate: {max_accuracy_drop: 100}
    """, {"tiny.py": TINY})
    x = np.random.default_rng(0).standard_normal((300, 1, 8, 8)).astype(np.float32)
    out = predict(load_model(load_recipe(path)), x)[0]
    with torch.no_grad():
        np.testing.assert_allclose(out, net(torch.from_numpy(x)).numpy(), rtol=1e-5, atol=1e-5)
    from pipeline.run import run  # and the whole chain: the eval set in batches, then export and check

    summary = run(path, ["local"], tmp_path / "out", stream=io.StringIO())[0]
    assert summary["status"] == "complete" and summary["artifacts"][0]["valid"] is True


@pytest.mark.parametrize("field, value, expected", [
    ("bytes", 10 ** 30, r"artifacts\[0\]\.bytes: '1000000000000000000000000000000' is not a whole number"),
    ("bytes", "123", r"artifacts\[0\]\.bytes: '123' is not a whole number"),
    ("accuracy", "0.9", r"artifacts\[0\]\.accuracy: '0.9' is not a finite number"),
])
def test_history_add_refuses_values_the_store_cannot_hold_naming_the_field(tmp_path, field, value, expected):
    run_dir = make_run(tmp_path / "run")
    summary = json.loads((run_dir / "summary.json").read_text())
    summary["artifacts"][0][field] = value
    (run_dir / "summary.json").write_text(json.dumps(summary))
    proc = run_cli("history", "--add", str(run_dir), "--db", str(tmp_path / "s.db"))
    assert proc.returncode == 2, proc.stderr[-1500:]
    _one_line(proc)
    import re

    assert re.search(expected, proc.stderr), proc.stderr


def test_a_malformed_stage_cache_entry_is_discarded_with_a_warning_and_recomputed(write_recipe, tmp_path):
    from pipeline.recipe.model import load_data, load_model
    from pipeline.recipe.task import build_context, stage_plan
    from pipeline.stages.chain import run_stages

    recipe = load_recipe(_recipe(write_recipe, "stages: {prune: {ratio: 0.25, finetune_epochs: 0}}\n"))
    model, data = load_model(recipe), load_data(recipe)
    ctx = build_context(recipe, model, data)
    run_dir = tmp_path / "run"
    run_stages(model, data, stage_plan(recipe, ctx, data), run_dir, lambda _m: None)
    entry = next((run_dir / "stages" / "prune").iterdir())
    (entry / "model.pt").write_bytes(b"not a torch file")
    lines: list[str] = []
    result = run_stages(load_model(recipe), data, stage_plan(recipe, ctx, data), run_dir, lines.append)
    assert result.records[-1]["cached"] is False
    assert any("cached entry" in m and "discarded, running the stage again" in m for m in lines), lines


def test_malformed_search_cache_entries_are_discarded_with_a_warning(tmp_path, capsys):
    from pipeline.search.cache import ExportCache, MeasurementCache

    mc = MeasurementCache(tmp_path)
    mc.dir.mkdir(parents=True)
    (mc.dir / "k.json").write_text("[1, 2]")
    assert mc.get("k") is None and not (mc.dir / "k.json").exists()
    ec = ExportCache(tmp_path)
    (ec.dir / "k" / "onnx-fp32").mkdir(parents=True)
    (ec.dir / "k" / "onnx-fp32" / "outcome.json").write_text('{"artifact": {"path": 3}}')
    assert ec.get("k", "onnx-fp32") is None and not (ec.dir / "k" / "onnx-fp32").exists()
    assert capsys.readouterr().err.count("discarded, computing it again") == 2


def test_a_loose_signing_key_warns_and_a_mistyped_env_key_is_an_error(tmp_path, monkeypatch, capsys):
    from pipeline.release.signing import generate_key, sign_manifest

    key = tmp_path / "k.key"
    generate_key(key)
    key.chmod(0o644)
    sign_manifest(b"{}", key)
    assert "chmod 600" in capsys.readouterr().err
    key.chmod(0o600)
    sign_manifest(b"{}", key)
    assert capsys.readouterr().err == ""
    monkeypatch.setenv("EDGEPIPE_SIGNING_KEY", str(tmp_path / "typo.key"))
    with pytest.raises(ConfigError, match="EDGEPIPE_SIGNING_KEY=.*typo.key: no such signing key"):
        sign_manifest(b"{}", None)
    assert not (tmp_path / "typo.key").exists()


def test_a_cache_that_is_a_file_is_a_config_error(monkeypatch):
    from pipeline.search.cache import cache_root

    monkeypatch.setenv("EDGEPIPE_CACHE", "/dev/null")
    with pytest.raises(ConfigError, match="EDGEPIPE_CACHE=/dev/null: /dev/null is not a folder"):
        cache_root()


def test_release_dist_that_is_a_file_is_a_one_line_error(tmp_path):
    run_dir = make_run(tmp_path / "run")
    (tmp_path / "dist").write_text("a file")
    proc = run_cli("release", str(run_dir), "--dist", str(tmp_path / "dist"), "--allow-failed-gate")
    assert proc.returncode == 2, proc.stderr[-1500:]
    _one_line(proc)


def test_a_huge_source_date_epoch_is_a_one_line_error_naming_it(tmp_path, monkeypatch):
    """A value past the year 9999 overflowed datetime deep in the packer (a traceback); now one line, exit 2."""
    run_dir = make_run(tmp_path / "run")
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "99999999999999999999")
    proc = run_cli("release", str(run_dir), "--dist", str(tmp_path / "dist"), "--allow-failed-gate")
    assert proc.returncode == 2, proc.stderr[-800:]
    assert "SOURCE_DATE_EPOCH" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "dist").exists() or not list((tmp_path / "dist").iterdir())
