from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import stage_models
import torch

from pipeline.config import Recipe
from pipeline.stages.common import train

HERE = Path(__file__).parent


@pytest.fixture(scope="session")
def digits() -> dict[str, Any]:
    return stage_models.data()


@pytest.fixture(scope="session")
def _trained_teacher(digits: dict[str, Any]) -> torch.nn.Module:
    return train(stage_models.teacher(), digits["train"], epochs=8, lr=5e-3, batch_size=32, seed=0)


@pytest.fixture
def teacher(_trained_teacher: torch.nn.Module) -> torch.nn.Module:
    return copy.deepcopy(_trained_teacher).eval()


@pytest.fixture
def example() -> torch.Tensor:
    return torch.randn(1, 1, stage_models.SIZE, stage_models.SIZE, generator=torch.Generator().manual_seed(0))


def make_recipe(stages: dict[str, Any]) -> Recipe:
    shape = [1, 1, stage_models.SIZE, stage_models.SIZE]
    recipe = Recipe.model_validate({"name": "tiny", "model": {"factory": "stage_models:teacher", "input_shape": shape},
                                    "data": {"factory": "stage_models:data"}, "stages": stages})
    recipe._path = HERE / "recipe.yaml"
    return recipe
