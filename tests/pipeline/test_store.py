from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import select

from pipeline.results import store as store_mod
from pipeline.results.history import format_history, history
from pipeline.results.store import open_store, record_summary, store_url
from pipeline.results.store_schema import MIGRATIONS
from targets.errors import ConfigError
from tests.conftest import run_cli
from tests.pipeline.runfolder import make_run


def test_store_round_trip_keeps_stages_artifacts_and_benchmarks(tmp_path: Path, run_dir: Path) -> None:
    st = open_store(tmp_path / "db" / "results.db")
    run_id = record_summary(run_dir=run_dir, store=st)
    row = st.get_run(run_id)
    assert row["status"] == "complete" and row["recipe"] == "digits" and row["device"] == "local"
    assert row["baseline_accuracy"] == pytest.approx(0.983)
    assert [s["name"] for s in row["stages"]] == ["distill", "prune", "quantize"]
    arts = {a["name"]: a for a in row["artifacts"]}
    assert set(arts) == {"onnx-fp32", "onnx-int8", "openvino-int8", "tflite-int8"}
    assert arts["onnx-int8"]["benchmark"]["p50"] == pytest.approx(0.061)
    assert arts["onnx-int8"]["benchmark"]["runtime"] == "onnxruntime 1.32.0"
    assert arts["tflite-int8"]["benchmark"] is None and "aten::_fake_op" in arts["tflite-int8"]["error"]
    assert row["gate_passed"] is False
    summary = json.loads((run_dir / "summary.json").read_text())
    assert json.loads(row["summary_json"]) == summary
    # importing the same run again replaces its rows instead of duplicating them
    record_summary(run_dir=run_dir, store=st)
    assert len(st.get_run(run_id)["artifacts"]) == 4


def test_finish_run_rolls_back_and_leaves_run_incomplete_when_write_fails(tmp_path: Path, run_dir: Path) -> None:
    st = open_store(tmp_path / "results.db")
    summary = json.loads((run_dir / "summary.json").read_text())
    st.begin_run(summary["run_id"], {"name": "digits"}, "local", run_dir, summary["started"])
    broken = json.loads(json.dumps(summary))
    broken["artifacts"][2]["bench"]["unserialisable"] = object()  # fails half-way, after stages and 2 artifacts
    with pytest.raises(TypeError):
        st.finish_run(broken)
    row = st.get_run(summary["run_id"])
    assert row["status"] == "incomplete"
    assert row["stages"] == [] and row["artifacts"] == []
    st.finish_run(summary)
    assert st.get_run(summary["run_id"])["status"] == "complete"


def test_begin_run_leaves_run_incomplete_when_process_crashes(tmp_path: Path) -> None:
    db = tmp_path / "results.db"
    code = ("import os, sys\nfrom pipeline.results.store import open_store\n"
            f"s = open_store({str(db)!r})\n"
            "s.begin_run('crashed-1', 'digits', 'rpi5', '/tmp/x', '2026-11-23T10:00:00')\n"
            "os._exit(9)\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parents[2], timeout=60)
    assert proc.returncode == 9
    rows = history(open_store(db))
    assert [(r["run_id"], r["status"]) for r in rows] == [("crashed-1", "incomplete")]


def test_history_filters_by_device_and_recipe_newest_first(tmp_path: Path) -> None:
    st = open_store(f"sqlite:///{tmp_path / 'h.db'}")
    for i, (recipe, device) in enumerate([("digits", "local"), ("digits", "rpi5"), ("other", "local"),
                                          ("digits", "local")]):
        run = make_run(tmp_path / f"r{i}", run_id=f"run-{i}", recipe=recipe, device=device,
                       started=f"2026-11-2{i}T10:00:00+00:00")
        record_summary(run_dir=run, store=st)
    rows = history(st, device="local", recipe="digits")
    assert [r["run_id"] for r in rows] == ["run-3", "run-0"]
    # the pick: the fastest artifact meeting the gate (openvino-int8, p50 0.052 ms), not the most accurate one
    assert rows[0]["best"] == "openvino-int8" and rows[0]["best_accuracy"] == pytest.approx(0.975)
    assert rows[0]["valid"] == 3 and rows[0]["artifacts"] == 4
    assert [r["run_id"] for r in history(st, limit=2)] == ["run-3", "run-2"]
    text = format_history(rows)
    lines = text.splitlines()
    assert lines[0].split()[:4] == ["started", "recipe", "device", "status"]
    assert "openvino-int8" in lines[2] and "FAIL" in lines[2] and "3/4" in lines[2]
    assert len({len(line) for line in lines[:2]}) == 1  # header and rule are aligned
    assert "no runs recorded" in format_history([])


def test_open_store_migrates_to_latest_version_once(tmp_path: Path) -> None:
    db = tmp_path / "m.db"
    st = open_store(db)
    assert st.version() == MIGRATIONS[-1][0]
    with st.engine.connect() as conn:
        versions = [r[0] for r in conn.execute(select(store_mod.schema_version.c.version))]
    assert versions == [m[0] for m in MIGRATIONS]
    assert open_store(db).version() == MIGRATIONS[-1][0]  # re-opening applies nothing twice


def test_open_store_refuses_newer_schema(tmp_path: Path) -> None:
    st = open_store(tmp_path / "n.db")
    with st.engine.begin() as conn:
        conn.execute(store_mod.schema_version.insert().values(version=999, description="future", applied="x"))
    with pytest.raises(ConfigError, match="newer than this edgepipe knows"):
        open_store(tmp_path / "n.db")


def test_store_url_reads_env_and_accepts_paths_or_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEPIPE_DB", str(tmp_path / "env" / "x.db"))
    assert store_url() == f"sqlite:///{tmp_path / 'env' / 'x.db'}"
    assert (tmp_path / "env").is_dir()
    assert store_url("postgresql://u@db/edgepipe") == "postgresql://u@db/edgepipe"
    with pytest.raises(ConfigError, match="EDGEPIPE_DB"):
        open_store("nosuchdialect://x/y")


def test_cli_history_imports_run_folder_and_lists_it(tmp_path: Path, run_dir: Path) -> None:
    db = tmp_path / "cli.db"
    proc = run_cli("history", "--db", str(db), "--add", str(run_dir), "--device", "local")
    assert proc.returncode == 0, proc.stderr
    assert "digits-local-20261123T160000Z" in proc.stdout and "openvino-int8" in proc.stdout
    empty = run_cli("history", "--db", str(db), "--device", "rpi5")
    assert empty.returncode == 0 and "no runs recorded" in empty.stdout


def test_store_keeps_each_device_of_a_fleet_run(tmp_path: Path) -> None:
    st = open_store(tmp_path / "fleet.db")
    for device in ("local", "rpi5"):
        record_summary(run_dir=make_run(tmp_path / device, run_id="fleet-1", device=device), store=st)
    assert sorted(r["device"] for r in history(st)) == ["local", "rpi5"]
    assert st.get_run("fleet-1", "rpi5")["device"] == "rpi5"


def test_finish_run_from_concurrent_threads_records_every_device(tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    st = open_store(tmp_path / "threads.db")
    summaries = [json.loads((make_run(tmp_path / f"d{i}", run_id="fleet-2", device=f"dev{i}") / "summary.json")
                            .read_text()) for i in range(4)]
    for s in summaries:
        st.begin_run(s["run_id"], "digits", s["device"])
    with ThreadPoolExecutor(4) as pool:  # the orchestrator measures a fleet's devices concurrently
        list(pool.map(st.finish_run, summaries))
    assert sorted((r["device"], r["status"]) for r in history(st)) == [(f"dev{i}", "complete") for i in range(4)]


@pytest.fixture(scope="module")
def postgres_url(tmp_path_factory: pytest.TempPathFactory):
    """EDGEPIPE_TEST_POSTGRES when set, else a throw-away server started from Debian's postgresql (CI installs it)."""
    if os.environ.get("EDGEPIPE_TEST_POSTGRES"):
        yield os.environ["EDGEPIPE_TEST_POSTGRES"]
        return
    from tests import pgserver

    reason = pgserver.missing_reason()
    if reason:
        (pytest.fail if os.environ.get("EDGEPIPE_REQUIRE_SYSTEM_TESTS") else pytest.skip)(reason)
    server = pgserver.Server()
    try:
        yield server.url
    finally:
        server.stop()


def test_store_round_trip_and_rollback_on_postgresql(tmp_path: Path, postgres_url: str) -> None:
    import uuid

    st = open_store(postgres_url)
    run_id = f"pg-{uuid.uuid4().hex[:8]}"
    summary = json.loads((make_run(tmp_path / "run", run_id=run_id) / "summary.json").read_text())
    st.begin_run(run_id, {"name": "digits"}, "local", None, summary["started"])
    broken = json.loads(json.dumps(summary))
    broken["artifacts"][2]["bench"]["unserialisable"] = object()
    with pytest.raises(TypeError):
        st.finish_run(broken)
    assert st.get_run(run_id)["status"] == "incomplete" and st.get_run(run_id)["artifacts"] == []
    st.finish_run(summary)
    row = st.get_run(run_id)
    assert row["status"] == "complete" and len(row["artifacts"]) == 4 and row["gate_passed"] is False
    assert run_id in [r["run_id"] for r in history(st, recipe="digits", limit=100)]


def test_open_store_from_concurrent_processes_migrates_a_new_store_once(tmp_path: Path) -> None:
    db = tmp_path / "race.db"
    code = (f"from pipeline.results.store import open_store\ns = open_store({str(db)!r})\n"
            "import sys\ns.begin_run('r' + sys.argv[1], 'digits', 'local')\n")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(i)], cwd=Path(__file__).parents[2],
                              stderr=subprocess.PIPE, text=True) for i in range(4)]
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0], errors
    st = open_store(db)
    with st.engine.connect() as conn:
        assert [r[0] for r in conn.execute(select(store_mod.schema_version.c.version))] == \
            [m[0] for m in store_mod.MIGRATIONS]
    assert len(history(st)) == 4
