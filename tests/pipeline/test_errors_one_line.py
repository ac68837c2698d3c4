"""One-line errors instead of tracebacks, and no verdict lost or left `incomplete` (issue 15, items 15 and 16)."""

from __future__ import annotations

import json
import sqlite3

import pytest

from pipeline.results.store import open_store
from pipeline.run import run
from targets.errors import ConfigError, EdgeError
from tests.conftest import TINY, run_cli
from tests.pipeline.runfolder import make_run


def _one_line(proc) -> None:
    assert "Traceback" not in proc.stderr and proc.stderr.startswith("edgepipe: error: "), proc.stderr[-1500:]


def test_history_on_a_store_with_broken_tables_is_a_one_line_error(tmp_path):
    db = tmp_path / "bad.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE schema_version (version INTEGER, description TEXT, applied TEXT)")
        conn.execute("INSERT INTO schema_version VALUES (2, 'x', 'y')")
        conn.execute("CREATE TABLE runs (id INTEGER PRIMARY KEY)")
    proc = run_cli("history", "--db", str(db))
    assert proc.returncode == 2
    _one_line(proc)


def test_history_add_with_odd_values_is_a_one_line_error(tmp_path):
    run_dir = make_run(tmp_path / "run")
    summary = json.loads((run_dir / "summary.json").read_text())
    summary["baseline"]["accuracy"] = {"not": "a number"}
    summary["artifacts"][0]["bytes"] = "lots"
    (run_dir / "summary.json").write_text(json.dumps(summary))
    proc = run_cli("history", "--add", str(run_dir), "--db", str(tmp_path / "s.db"))
    assert proc.returncode == 2
    _one_line(proc)


def test_a_run_that_fails_at_load_time_is_failed_not_incomplete(write_recipe, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEPIPE_DB", str(tmp_path / "s.db"))
    recipe = write_recipe("""
        name: boom
        model: {factory: "models:boom", input_shape: [1, 1, 8, 8]}
        data: {factory: "models:boom"}
        backends: [onnx-fp32]
    """, {"models.py": "def boom():\n    raise RuntimeError('no weights here')\n"})
    with pytest.raises(ConfigError, match="no weights here"):
        run(recipe, ["local"], tmp_path / "out")
    st = open_store()
    try:
        with st.engine.connect() as conn:
            statuses = [r[0] for r in conn.exec_driver_sql("SELECT status FROM runs WHERE recipe = 'boom'")]
    finally:
        st.close()
    assert statuses == ["failed"]


@pytest.mark.parametrize("content, expected", [
    (b"", "the file is empty"),
    (b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 12\n", "Git LFS pointer"),
])
def test_weights_that_are_empty_or_an_lfs_pointer_say_so(tmp_path, content, expected):
    from pipeline.recipe.model import load_state_dict

    (tmp_path / "w.pt").write_bytes(content)
    with pytest.raises(ConfigError, match=expected) as info:
        load_state_dict(str(tmp_path / "w.pt"), "model.weights")
    assert "pickled" not in str(info.value)


def test_doctor_trust_without_a_terminal_is_a_one_line_error(monkeypatch):
    import io

    from targets.doctor import _ask

    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    with pytest.raises(ConfigError, match="needs a terminal"):
        _ask("fingerprint SHA256:x")


def test_command_timeout_inf_is_refused_by_the_profile(tmp_path):
    from targets.profiles import load_profile

    prof = tmp_path / "p.yaml"
    prof.write_text("name: p\nconnection: {transport: local, command_timeout: .inf}\nbackends: [onnx-fp32]\n")
    with pytest.raises(ConfigError, match="command_timeout"):
        load_profile(str(prof))


def test_a_read_only_out_is_a_one_line_error_and_leaves_no_eval_npz(tmp_path, digits_run_recipe):
    import os

    if os.geteuid() == 0:  # root writes anywhere: make the folder a file's child instead
        (tmp_path / "file").write_text("x")
        out = tmp_path / "file" / "r"
    else:
        (tmp_path / "ro").mkdir(mode=0o500)
        out = tmp_path / "ro" / "r"
    proc = run_cli("run", str(digits_run_recipe), "--device", "local", "--out", str(out))
    assert proc.returncode == 2, proc.stderr[-1500:]
    _one_line(proc)


def test_verify_reports_odd_manifests_without_a_traceback(tmp_path):
    import io
    import tarfile

    from pipeline.release.verify import verify_bundle

    bundle = tmp_path / "odd.tar.gz"
    for manifest in (b"[1, 2]", b'{"files": [{"path": "a", "sha256": "x", "bytes": 1}], "pick": [1]}',
                     b'{"files": "nope"}'):
        with tarfile.open(bundle, "w:gz") as tar:
            info = tarfile.TarInfo("top/manifest.json")
            info.size = len(manifest)
            tar.addfile(info, io.BytesIO(manifest))
        problems = verify_bundle(bundle)
        assert problems and "manifest.json" in problems[0]




@pytest.mark.onnx
def test_a_config_error_on_one_device_keeps_the_other_devices_summary_and_rows(write_recipe, tmp_path, monkeypatch):
    import pipeline.phases.measure as run_mod

    monkeypatch.setenv("EDGEPIPE_DB", str(tmp_path / "s.db"))
    recipe = write_recipe("""
        name: fleet
        model: {factory: "tiny:model", input_shape: [1, 1, 8, 8]}
        data: {factory: "tiny:splits"}
        backends: [onnx-fp32]
        gate: {max_accuracy_drop: 100}
    """, {"tiny.py": TINY})
    profiles = []
    for name in ("good", "bad"):
        prof = tmp_path / f"{name}.yaml"
        prof.write_text(f"name: {name}\nconnection: {{transport: local}}\npython: current\nworkdir: {tmp_path / name}\n"
                        "backends: [onnx-fp32]\nbench: {warmup: 1, min_iterations: 20, min_seconds: 0.05, "
                        "max_seconds: 5}\n")
        profiles.append(str(prof))
    real = run_mod.benchmark

    def flaky(profile, art, inputs=None, transport=None, outputs=None):
        if profile.name == "bad":
            raise ConfigError("bad: connection.key: /nope does not exist")
        return real(profile, art, inputs, transport=transport, outputs=outputs)

    monkeypatch.setattr(run_mod, "benchmark", flaky)
    with pytest.raises(EdgeError, match="connection.key") as info:
        run(recipe, profiles, tmp_path / "out", stream=__import__("io").StringIO())
    assert info.value.exit_code == 2
    good = json.loads((tmp_path / "out" / "good" / "summary.json").read_text())
    bad = json.loads((tmp_path / "out" / "bad" / "summary.json").read_text())
    assert good["status"] == "complete" and bad["status"] == "failed"
    st = open_store()
    try:
        with st.engine.connect() as conn:
            rows = sorted(conn.exec_driver_sql("SELECT device, status FROM runs WHERE recipe = 'fleet'"))
    finally:
        st.close()
    assert rows == [("bad", "failed"), ("good", "complete")]


def test_terminal_escape_codes_from_a_profile_or_a_board_are_shown_not_sent_to_the_terminal(tmp_path):
    """A profile (or a board's stderr) can hold ESC sequences that retitle, clear or hide the user's terminal."""
    prof = tmp_path / "p.yaml"
    prof.write_text('name: p\npython: "/nonexistent/py\\e]0;pwned\\a"\nworkdir: /tmp/edgepipe-esc-test\n'
                    'backends: [onnx-fp32]\ndescription: "lab board\\e[2J\\e[8m"\n')
    model = tmp_path / "m.onnx"
    model.write_bytes(b"x")
    for args in (("bench", str(model), "--device", str(prof)), ("doctor", str(prof))):
        proc = run_cli(*args)
        assert "\x1b" not in proc.stdout + proc.stderr and "\x07" not in proc.stdout + proc.stderr, args
        assert "\\x1b" in proc.stdout + proc.stderr, (args, proc.stdout, proc.stderr)
