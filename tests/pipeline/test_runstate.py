"""Two runs never share an id or a live folder (issue 15, item 13)."""

from __future__ import annotations

import json
import subprocess

import pytest

from pipeline.results.runstate import CLAIM, claim_run_folder, new_run_id
from pipeline.run import run
from targets.errors import ConfigError


def test_run_ids_started_in_the_same_second_differ():
    ids = {new_run_id("digits") for _ in range(50)}
    assert len(ids) == 50 and all(i.startswith("digits-") for i in ids)


def test_run_refuses_a_folder_a_live_run_holds(tmp_path, digits_run_recipe):
    out = tmp_path / "r"
    with claim_run_folder(out, "digits-live"):
        with pytest.raises(ConfigError, match="in use by run digits-live"):
            run(digits_run_recipe, ["local"], out)
    assert not (out / CLAIM).exists()


def test_a_claim_left_by_a_dead_process_is_taken_over(tmp_path):
    proc = subprocess.Popen(["true"])
    proc.wait()
    tmp_path.joinpath(CLAIM).write_text(json.dumps({"host": __import__("socket").gethostname(), "pid": proc.pid,
                                                    "run_id": "old"}))
    with claim_run_folder(tmp_path, "new"):
        assert json.loads(tmp_path.joinpath(CLAIM).read_text())["run_id"] == "new"
