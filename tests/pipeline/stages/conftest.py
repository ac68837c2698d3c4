from __future__ import annotations

import copy
from typing import Any

import pytest
import torch

from pipeline.stages.common import train

from . import stage_models


@pytest.fixture(scope="session")
def digits() -> dict[str, Any]:
    return stage_models.data()


@pytest.fixture(scope="session")
def _trained_teacher(digits: dict[str, Any]) -> torch.nn.Module:
    torch.manual_seed(0)                     # initial weights independent of which test ran first
    return train(stage_models.teacher(), digits["train"], epochs=8, lr=5e-3, batch_size=32, seed=0)


@pytest.fixture
def teacher(_trained_teacher: torch.nn.Module) -> torch.nn.Module:
    return copy.deepcopy(_trained_teacher).eval()


@pytest.fixture
def example() -> torch.Tensor:
    return torch.randn(1, 1, stage_models.SIZE, stage_models.SIZE, generator=torch.Generator().manual_seed(0))

