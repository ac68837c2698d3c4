"""``edgepipe init FACTORY``: a recipe for one's own model, learnt by running it once, that ``check`` accepts."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from pipeline.recipe.check import check
from pipeline.recipe.init import init_recipe
from targets.errors import ConfigError
from tests.conftest import run_cli

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

#: every example's model built untrained (its trained_teacher trains for minutes), with what init needs beyond it
CASES = {
    "digits": ("models:teacher", {}, "top1"),
    "detect": ("detect_models:teacher", {"data": "detect_data:splits", "postprocess": "detect_boxes:postprocess"},
               "map50_95"),
    "inspect": ("inspect_models:teacher", {}, "top1"),
    "multihead": ("models:MultiHead", {}, "cosine"),          # float targets (class, parity, ink): no labels
    "tokens": ("models:TokenEncoder", {}, "top1"),
    "vit": ("vit_models:teacher", {"data": "vit_data:splits"}, "top1"),
}


@pytest.fixture(scope="module")
def examples_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The examples without their caches, so the recipes are written beside the factories but not in the checkout."""
    root = tmp_path_factory.mktemp("examples")
    shutil.copytree(EXAMPLES, root / "examples", ignore=shutil.ignore_patterns(".cache", "__pycache__", "*.yaml"))
    return root / "examples"


@pytest.mark.parametrize("example", list(CASES))
def test_init_writes_a_recipe_that_check_accepts_for_each_examples_factory(examples_copy, example):
    factory, extra, metric = CASES[example]
    out = examples_copy / example / "mine.yaml"
    draft, recipe, facts = init_recipe(factory, out, "local", **extra)
    assert recipe.model.factory == factory and recipe.task.metric == metric
    assert recipe.backends and set(recipe.backends) <= {"onnx-fp32", "onnx-int8", "openvino-fp32", "openvino-int8",
                                                         "tflite-fp32", "tflite-int8"}
    assert len(facts["outputs"]) == len(recipe.model.outputs or [])
    raw = yaml.safe_load(out.read_text())
    assert raw["name"] == "mine" and "# " in out.read_text()   # commented
    check(str(out))   # stands on its own, read back from the file
    if example == "tokens":   # two int64 inputs named by the data's dict keys, in forward() order
        assert [(s.name, s.dtype, s.shape) for s in recipe.model.input_specs] == [
            ("input_ids", "int64", [1, 64]), ("attention_mask", "int64", [1, 64])]
    if example == "multihead":
        assert facts["outputs"] == [[1, 10], [1, 4], [1, 1]]


def test_init_from_an_input_shape_without_data_names_the_placeholder_and_check_reports_it(tmp_path):
    (tmp_path / "net.py").write_text("import torch\n\ndef net():\n    return torch.nn.Sequential(torch.nn.Flatten(), "
                                     "torch.nn.Linear(12, 3))\n")
    with pytest.raises(ConfigError) as exc:
        init_recipe("net:net", tmp_path / "recipe.yaml", input_shapes=["1,3,4"])
    assert "data.factory" in " ".join(exc.value.problems) and (tmp_path / "recipe.yaml").is_file()
    text = (tmp_path / "recipe.yaml").read_text()
    assert "input_shape: [1, 3, 4]" in text and "metric: cosine" in text and "placeholder" in text


def test_init_cli_refuses_to_overwrite_without_force_and_prints_the_next_step(tmp_path):
    shutil.copytree(EXAMPLES / "digits", tmp_path / "d", ignore=shutil.ignore_patterns(".cache", "*.yaml"))
    out = tmp_path / "d" / "recipe.yaml"
    out.write_text("name: mine\n")
    refused = run_cli("init", "models:teacher", "--out", str(out))
    assert refused.returncode == 2 and "already exists" in refused.stderr and "--force" in refused.stderr
    assert out.read_text() == "name: mine\n"
    done = run_cli("init", "models:teacher", "--out", str(out), "--force")
    assert done.returncode == 0, done.stderr
    assert "written and checked" in done.stdout and f"edgepipe run {out} --device local" in done.stdout
    assert run_cli("check", str(out)).returncode == 0
