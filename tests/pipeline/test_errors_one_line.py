"""One-line errors instead of tracebacks, and no verdict lost or left `incomplete` (issue 15, items 15 and 16)."""

from __future__ import annotations

import json
import sqlite3

import pytest

from pipeline.run import run
from pipeline.store import open_store
from targets.errors import ConfigError
from tests.conftest import run_cli
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
