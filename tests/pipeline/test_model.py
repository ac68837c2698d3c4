from __future__ import annotations

import pickle

import pytest
import torch

from pipeline.recipe.config import load_recipe
from pipeline.recipe.model import accuracy, load_data, load_model
from targets.errors import ConfigError
from tests.conftest import TINY_MODELS

RECIPE = """
    name: tiny
    model: {{{model}, input_shape: [1, 1, 8, 8]}}
    data: {{factory: "data:splits"}}
"""
DATA = """
    import torch
    from torch.utils.data import TensorDataset

    def splits():
        g = torch.Generator().manual_seed(0)
        x = torch.randn(40, 1, 8, 8, generator=g)
        y = torch.randint(0, 10, (40,), generator=g)
        ds = TensorDataset(x, y)
        return {"train": ds, "calib": ds, "eval": ds}
"""


def _tiny() -> torch.nn.Module:
    torch.manual_seed(1)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                               torch.nn.Flatten(), torch.nn.Linear(4, 10))


def test_load_model_from_factory_and_weights_restores_the_weights(write_recipe, tmp_path):
    ref = _tiny()
    torch.save(ref.state_dict(), tmp_path / "w.pt")
    recipe = load_recipe(write_recipe(RECIPE.format(model='factory: "models:tiny", weights: w.pt'),
                                      {"models.py": TINY_MODELS, "data.py": DATA}))
    model = load_model(recipe)
    x = torch.randn(3, 1, 8, 8)
    assert torch.allclose(model(x), ref.eval()(x))
    data = load_data(recipe)
    assert 0.0 <= accuracy(model, data["eval"]) <= 1.0


def test_load_model_from_export_program_matches_the_source_module(write_recipe, tmp_path):
    ref = _tiny().eval()
    ep = torch.export.export(ref, (torch.randn(1, 1, 8, 8),))
    torch.export.save(ep, tmp_path / "model.pt2")
    recipe = load_recipe(write_recipe(RECIPE.format(model="program: model.pt2"), {"data.py": DATA}))
    model = load_model(recipe)
    x = torch.randn(1, 1, 8, 8)
    assert torch.allclose(model(x), ref(x), atol=1e-6)


class _Exploit:
    def __reduce__(self):
        import os

        return (os.system, ("touch PWNED_BY_PICKLE",))


def test_load_model_refuses_a_pickle_that_carries_code(write_recipe, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with open(tmp_path / "evil.pt", "wb") as fh:
        pickle.dump({"weight": _Exploit()}, fh)
    recipe = load_recipe(write_recipe(RECIPE.format(model='factory: "models:tiny", weights: evil.pt'),
                                      {"models.py": TINY_MODELS, "data.py": DATA}))
    with pytest.raises(ConfigError, match="refused to load"):
        load_model(recipe)
    assert not (tmp_path / "PWNED_BY_PICKLE").exists()


def test_load_model_names_mismatched_weight_keys(write_recipe, tmp_path):
    torch.save({"other.weight": torch.zeros(1)}, tmp_path / "w.pt")
    recipe = load_recipe(write_recipe(RECIPE.format(model='factory: "models:tiny", weights: w.pt'),
                                      {"models.py": TINY_MODELS, "data.py": DATA}))
    with pytest.raises(ConfigError, match=r"do not fit models:tiny: missing .*unexpected other.weight"):
        load_model(recipe)


def test_load_data_rejects_inputs_that_do_not_match_input_shape(write_recipe):
    recipe = load_recipe(write_recipe(RECIPE.format(model='factory: "models:tiny"').replace("[1, 1, 8, 8]",
                                                                                             "[1, 3, 8, 8]"),
                                      {"models.py": TINY_MODELS, "data.py": DATA}))
    with pytest.raises(ConfigError, match=r"\[1, 3, 8, 8\] \(batch first\) in the recipe but data items have \[1, 8, "
                                          r"8\]"):
        load_data(recipe)
