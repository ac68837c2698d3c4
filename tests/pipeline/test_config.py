from __future__ import annotations

import pytest

from pipeline.recipe.config import load_recipe
from targets.errors import ConfigError
from tests.conftest import TINY_MODELS, run_cli

GOOD = """
    name: tiny
    model: {factory: "models:tiny", input_shape: [1, 1, 8, 8]}
    data: {factory: "models:tiny"}
    backends: [onnx-fp32]
"""


def test_load_recipe_accepts_the_demo_recipe(digits_recipe):
    recipe = load_recipe(digits_recipe)
    assert recipe.name == "digits"
    assert recipe.model.input_shape == [1, 1, 32, 32]
    assert recipe.stages.distill is not None and recipe.stages.quantize is not None


def test_load_recipe_resolves_paths_relative_to_the_recipe(write_recipe):
    path = write_recipe(GOOD, {"models.py": TINY_MODELS})
    recipe = load_recipe(path)
    assert recipe.base_dir == path.parent.resolve()
    assert recipe.resolve("w.pt") == path.parent.resolve() / "w.pt"


def test_load_recipe_reports_every_problem_at_once(write_recipe):
    path = write_recipe("""
        name: tiny
        modle_typo: 1
        model: {factory: "nosuchmodule:net", weights: missing.pt, input_shape: [1, 1, 8, 8]}
        data: {factory: "models:tiny"}
    """, {"models.py": TINY_MODELS})
    with pytest.raises(ConfigError) as info:
        load_recipe(path)
    text = str(info.value)
    assert len(info.value.problems) == 3, info.value.problems
    assert "modle_typo: unknown key" in text
    assert "model.weights: file 'missing.pt' not found" in text
    assert "model.factory: cannot import module 'nosuchmodule'" in text
    assert str(path) in text


def test_load_recipe_rejects_bad_types_and_unknown_backends(write_recipe):
    path = write_recipe("""
        name: tiny
        model: {factory: "models:tiny", input_shape: [1, 0, 8]}
        data: {factory: "models:tiny"}
        backends: [onnx-int3]
        gate: {max_accuracy_drop: -1}
    """, {"models.py": TINY_MODELS})
    with pytest.raises(ConfigError) as info:
        load_recipe(path)
    joined = "\n".join(info.value.problems)
    assert "model.input_shape" in joined
    assert "backends" in joined and "onnx-int3" in joined
    assert "gate.max_accuracy_drop" in joined


def test_load_recipe_reports_missing_attribute_and_requires_one_model_source(write_recipe):
    path = write_recipe("""
        name: tiny
        model: {input_shape: [1, 1, 8, 8]}
        data: {factory: "models:nope"}
    """, {"models.py": TINY_MODELS})
    with pytest.raises(ConfigError) as info:
        load_recipe(path)
    joined = "\n".join(info.value.problems)
    assert "exactly one of model.factory" in joined
    assert "data.factory: module has no attribute 'nope'" in joined


def test_load_recipe_applies_overrides(write_recipe):
    path = write_recipe(GOOD, {"models.py": TINY_MODELS})
    recipe = load_recipe(path, ["backends=[onnx-fp32, onnx-int8]", "gate.max_accuracy_drop=2.5"])
    assert recipe.backends == ["onnx-fp32", "onnx-int8"]
    assert recipe.gate.max_accuracy_drop == 2.5


def test_load_recipe_names_the_line_of_a_yaml_syntax_error(write_recipe):
    path = write_recipe("name: [unclosed\n")
    with pytest.raises(ConfigError, match=r"recipe.yaml:\d+:\d+: not valid YAML"):
        load_recipe(path)


def test_check_cli_exits_2_with_all_problems_and_no_traceback(write_recipe):
    path = write_recipe("""
        name: tiny
        modle: {}
        model: {factory: "nosuchmodule:net", weights: missing.pt, input_shape: [1, 1, 8, 8]}
        data: {factory: "models:tiny"}
    """, {"models.py": TINY_MODELS})
    proc = run_cli("check", str(path))
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    for needle in ("modle: unknown key", "model.weights", "nosuchmodule"):
        assert needle in proc.stderr


def test_check_cli_exits_0_on_the_demo_recipe(digits_recipe):
    proc = run_cli("check", str(digits_recipe))
    assert proc.returncode == 0, proc.stderr
    assert "ok" in proc.stdout


def test_quantize_int8_scheme_reaches_every_int8_exporter_and_a_bad_value_names_the_key(write_recipe):
    path = write_recipe(GOOD + "    stages: {quantize: {int8_scheme: static}}\n", {"models.py": TINY_MODELS})
    assert load_recipe(path).stages.quantize.export_overrides()["int8_scheme"] == "static"
    default = write_recipe(GOOD + "    stages: {quantize: {mode: ptq}}\n", {"models.py": TINY_MODELS})
    assert load_recipe(default).stages.quantize.export_overrides()["int8_scheme"] == "auto"
    bad = write_recipe(GOOD + "    stages: {quantize: {int8_scheme: fastest}}\n", {"models.py": TINY_MODELS})
    with pytest.raises(ConfigError) as info:
        load_recipe(bad)
    assert len(info.value.problems) == 1
    problem = info.value.problems[0]
    assert "stages.quantize.int8_scheme" in problem and "\n" not in problem
    assert "dynamic" in problem and "smoothquant" in problem   # names what is allowed


def test_qat_keeps_its_learned_static_scales_under_auto():
    from pipeline.stages.quantize import QuantConfig

    assert QuantConfig(mode="qat").export_overrides()["int8_scheme"] == "static"
    assert QuantConfig(mode="ptq").export_overrides()["int8_scheme"] == "auto"
    assert QuantConfig(mode="qat", int8_scheme="dynamic").export_overrides()["int8_scheme"] == "dynamic"
