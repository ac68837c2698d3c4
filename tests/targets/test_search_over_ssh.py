"""`edgepipe search` of the digits demo on a fleet: this host and a board over SSH to a real loopback sshd.

Economical on purpose: fewer training epochs (the gate is relaxed to match), a small space measured exhaustively,
short bench rules; the same search run twice must measure nothing the second time.
"""

from __future__ import annotations

import json
import os
import shutil

import pytest
import yaml

from pipeline.recipe.config import load_recipe
from tests.conftest import ROOT, run_cli

pytestmark = [pytest.mark.scenario, pytest.mark.ssh, pytest.mark.slow, pytest.mark.onnx, pytest.mark.openvino]

SETS = ["stages.distill.epochs=8", "stages.prune.finetune_epochs=2", "stages.quantize.mode=ptq",
        "gate.max_accuracy_drop=2.0",
        "search={space: {prune.ratio: [0.25, 0.5, 0.7], quantize.mode: [none, ptq], "
        "backends: [onnx-fp32, onnx-int8, openvino-fp32, openvino-int8]}, budget: {candidates: 20}, "
        "strategy: exhaustive, confirm_rounds: 3}"]   # every candidate measured: the whole front (halving: unit tests)


@pytest.fixture(scope="module")
def searched(sshd, tmp_path_factory):
    work = tmp_path_factory.mktemp("search")
    # a copy of the demo: the chosen recipes are written next to the recipe, never into the repository
    shutil.copytree(ROOT / "examples" / "digits", work / "digits", ignore=shutil.ignore_patterns(".cache", "__py*"))
    saved = os.environ.get("EDGEPIPE_DIGITS_CACHE")
    os.environ["EDGEPIPE_DIGITS_CACHE"] = str(ROOT / "examples" / "digits" / ".cache")  # train the teacher once
    local = yaml.safe_load((ROOT / "device_profiles" / "local.yaml").read_text())
    local.update(workdir=str(work / "local-work"),
                 bench={"warmup": 10, "min_iterations": 100, "min_seconds": 0.3, "max_seconds": 10})
    (work / "local.yaml").write_text(yaml.safe_dump(local))
    board = sshd.profile("board", work)
    args = ["search", str(work / "digits" / "recipe.yaml"), "--device", str(work / "local.yaml"), "--device",
            str(board), "--cache", str(work / "cache")]
    sets = [a for s in SETS for a in ("--set", s)]
    try:
        first = run_cli(*args, "--out", str(work / "first"), *sets, timeout=1500)
        assert first.returncode == 0, first.stderr[-3000:]
        second = run_cli(*args, "--out", str(work / "second"), *sets, timeout=900)
        assert second.returncode == 0, second.stderr[-3000:]
    finally:
        if saved is None:
            os.environ.pop("EDGEPIPE_DIGITS_CACHE", None)
        else:
            os.environ["EDGEPIPE_DIGITS_CACHE"] = saved
    return work


def _result(work, run: str, device: str) -> dict:
    return json.loads((work / run / device / "search.json").read_text())


@pytest.mark.parametrize("device", ["local", "board"])
def test_search_chooses_a_gate_passing_candidate_faster_than_the_recipe_and_the_original(searched, device):
    r = _result(searched, "first", device)
    assert r["status"] == "complete"
    chosen = next(c for c in r["candidates"] if c["id"] == r["chosen"])
    assert chosen["feasible"] and chosen["valid"] and chosen["drop"] <= 2.0
    assert chosen["latency_ms"]["n"] >= 20
    cmp = r["comparison"]
    med = cmp["median_p90_ms"]
    # interleaved rounds: never slower than the recipe as written (beyond noise), >= 1.5x the original FP32 ONNX
    assert med["chosen"] <= med["recipe_best"] * 1.10, cmp
    assert cmp["speedup_vs_original_fp32"] >= 1.5, cmp
    assert len(r["front"]) >= 4, [(c["label"], c.get("accuracy"), c.get("latency_ms"), c.get("bytes"))
                                  for c in r["candidates"]]
    assert r["counts"]["device_measurements"] <= r["counts"]["exhaustive"] + 1   # + the INT8 guard's sibling
    for c in r["candidates"]:   # every figure carries its statistics and validity
        if c["status"] == "measured":
            assert {"p50", "p90", "p99", "n"} <= set(c["latency_ms"]) and isinstance(c["valid"], bool)
        elif c["status"] == "skipped":
            assert c["reason"]
    # the chosen candidate as a plain recipe the user can run
    path = searched / "digits" / f"recipe.{device}.yaml"
    assert r["chosen_recipe"] == str(path)
    recipe = load_recipe(path)
    assert recipe.backends == [chosen["backend"]] and recipe.search is None
    prune = chosen["stages"]["prune"]
    assert (recipe.stages.prune.ratio if recipe.stages.prune else 0) == (prune["ratio"] if prune else 0)


def test_search_report_shows_both_boards_and_their_fronts(searched):
    html = (searched / "first" / "search.html").read_text()
    assert html.count("data:image/png;base64,") == 2
    assert "local" in html and "board" in html and "Fleet" in html
    assert (searched / "first" / "front-local.png").is_file()


def test_a_second_identical_search_measures_nothing(searched):
    for device in ("local", "board"):
        first, second = _result(searched, "first", device), _result(searched, "second", device)
        assert second["counts"]["measured_now"] == 0 and second["counts"]["comparison_measured_now"] == 0
        assert second["counts"]["from_cache"] == first["counts"]["device_measurements"]
        assert [c["id"] for c in second["candidates"]] == [c["id"] for c in first["candidates"]]
        assert second["chosen"] == first["chosen"]
        assert all(c["status"] != "measured" for c in second["candidates"])
