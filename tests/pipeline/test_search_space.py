"""The search space: folding equivalent points, validating the `search:` section, the recipe's own point."""

from __future__ import annotations

import json

import pytest

from pipeline.recipe.config import load_recipe
from pipeline.recipe.search_config import SearchConfig
from pipeline.search.space import expand, recipe_candidates
from targets.errors import ConfigError


def _grid(digits_recipe, space: str, backends=("onnx-fp32", "onnx-int8")):
    recipe = load_recipe(digits_recipe, [f"search={{space: {space}}}"])
    return recipe, expand(recipe.search, recipe.stages, list(backends))


def _ids(grid) -> set[str]:
    return {c.id for cells in grid["cells"].values() for c in cells.values()}


def test_expand_folds_points_that_give_the_same_artifact(digits_recipe):
    _, grid = _grid(digits_recipe, "{prune.ratio: [0, 0.5], quantize.mode: [none, ptq, qat]}")
    # 2 ratios x 3 modes x 2 backends = 12 cells, but: none+int8 is no combination, ptq+fp32 == none+fp32
    assert len(grid["points"]) == 6
    assert len(_ids(grid)) == 2 * (2 + 2)   # per ratio: fp32 (none), fp32 (qat), int8 (ptq), int8 (qat)
    for point, cells in grid["cells"].items():
        if '"none"' in point:
            assert "onnx-int8" not in cells
    none_fp32 = grid["cells"]['{"prune.ratio": 0.5, "quantize.mode": "none"}']["onnx-fp32"]
    ptq_fp32 = grid["cells"]['{"prune.ratio": 0.5, "quantize.mode": "ptq"}']["onnx-fp32"]
    assert none_fp32 is ptq_fp32 and none_fp32.stages["quantize"] is None
    zero = grid["cells"]['{"prune.ratio": 0, "quantize.mode": "ptq"}']["onnx-int8"]
    assert zero.stages["prune"] is None   # ratio 0 removes the stage


def test_expand_orders_points_most_compressed_first(digits_recipe):
    _, grid = _grid(digits_recipe, "{prune.ratio: [0.25, 0.7, 0.5]}")
    assert [p for p in grid["points"]] == ['{"prune.ratio": 0.7}', '{"prune.ratio": 0.5}', '{"prune.ratio": 0.25}']


def test_same_graph_key_ignores_calibration_but_not_architecture(digits_recipe):
    _, grid = _grid(digits_recipe, "{prune.ratio: [0.25, 0.5], quantize.calibration: [minmax, entropy]}",
                    backends=("onnx-int8",))
    cands = [grid["cells"][p]["onnx-int8"] for p in grid["points"]]
    keys = {(c.stages["prune"]["ratio"], c.stages["quantize"]["calibration"]): c.graph_key for c in cands}
    assert keys[(0.5, "minmax")] == keys[(0.5, "entropy")]
    assert keys[(0.5, "minmax")] != keys[(0.25, "minmax")]
    assert len({c.id for c in cands}) == 4


def test_recipe_candidates_are_points_of_the_space_when_the_space_holds_them(digits_recipe):
    recipe, grid = _grid(digits_recipe, "{prune.ratio: [0.25, 0.5], quantize.mode: [ptq, qat]}")
    refs = recipe_candidates(recipe.stages, grid["backends"])   # the demo recipe: prune 0.25, qat
    assert [c.backend for c in refs] == ["onnx-fp32", "onnx-int8"]
    assert {c.id for c in refs} <= _ids(grid)


def test_load_recipe_reports_every_bad_search_key_and_value(write_recipe):
    path = write_recipe("""
        name: tiny
        model: {factory: "models:tiny", input_shape: [1, 1, 8, 8]}
        data: {factory: "models:tiny"}
        search:
          space: {prune.ratoi: [0.5], quantize.mode: [ptq, int4], backends: [onnx-int3], resize.x: [1]}
          budget: {candidates: 0}
    """, {"models.py": "def tiny():\n    pass\n"})
    with pytest.raises(ConfigError) as info:
        load_recipe(path)
    text = "\n".join(info.value.problems)
    assert "prune has no field 'ratoi'" in text
    assert "backends: unknown ['onnx-int3']" in text
    assert "'resize.x': expected 'backends' or 'STAGE.FIELD'" in text
    assert "search.budget.candidates" in text


def test_load_recipe_rejects_a_value_the_stage_config_refuses(write_recipe):
    path = write_recipe("""
        name: tiny
        model: {factory: "models:tiny", input_shape: [1, 1, 8, 8]}
        data: {factory: "models:tiny"}
        search: {space: {prune.ratio: [0.5, 1.5], quantize.mode: [none, int4]}}
    """, {"models.py": "def tiny():\n    pass\n"})
    with pytest.raises(ConfigError) as info:
        load_recipe(path)
    text = "\n".join(info.value.problems)
    assert "search.space.prune.ratio: value 1.5" in text
    assert "search.space.quantize.mode: value 'int4'" in text
    assert "value 'none'" not in text


def test_search_config_defaults_are_a_bounded_budget():
    cfg = SearchConfig()
    assert cfg.budget.candidates == 24 and cfg.budget.minutes == 60 and cfg.strategy == "halving"


def test_search_cli_rejects_a_bad_space_in_one_line_with_exit_2(write_recipe):
    from tests.conftest import run_cli

    path = write_recipe("""
        name: tiny
        model: {factory: "models:tiny", input_shape: [1, 1, 8, 8]}
        data: {factory: "models:tiny"}
        search: {space: {prune.ratoi: [0.5]}}
    """, {"models.py": "def tiny():\n    pass\n"})
    proc = run_cli("search", str(path), "--device", "local")
    assert proc.returncode == 2, proc.stderr
    assert "search.space: 'prune.ratoi': prune has no field 'ratoi'; did you mean 'prune.ratio'?" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_calibration_reaches_every_int8_backend_it_applies_to_and_folds_elsewhere(digits_recipe):
    backends = ("onnx-fp32", "onnx-int8", "openvino-int8", "tflite-int8")
    _, grid = _grid(digits_recipe, "{prune.ratio: [0.25, 0.5], quantize.calibration: [minmax, entropy, percentile]}",
                    backends)
    def variants(backend: str) -> set[str]:
        return {c.stages["quantize"]["calibration"] for cells in grid["cells"].values() for c in cells.values()
                if c.backend == backend and c.stages.get("quantize")}
    assert variants("onnx-int8") == variants("openvino-int8") == {"minmax", "entropy", "percentile"}
    assert variants("tflite-int8") == {"minmax"}      # PT2E observers read no calibration: one candidate per ratio
    # the first rung covers every value of every key, so halving measures each on every backend before a drop
    first = [json.loads(p) for p in grid["first"]]
    assert {p["quantize.calibration"] for p in first} == {"minmax", "entropy", "percentile"}
    assert {p["prune.ratio"] for p in first} == {0.25, 0.5} and len(first) == 3
