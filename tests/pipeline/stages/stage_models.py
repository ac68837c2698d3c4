"""Tiny models and a small slice of the real digits data for the stage tests (seconds, not minutes, on 2 cores)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from benchmarks.zoo import BasicBlock, InvertedResidual
from pipeline.recipe.config import Recipe
from pipeline.stages.chain import StagePlan

SIZE = 16
HERE = Path(__file__).resolve().parent
DIGITS = Path(__file__).resolve().parents[3] / "examples" / "digits"
DIGITS_RECIPE = str(DIGITS / "recipe.yaml")


class TinyCNN(nn.Module):
    def __init__(self, widths: tuple[int, ...] = (16, 32)) -> None:
        super().__init__()
        layers, cin = [], 1
        for w in widths:
            layers += [nn.Sequential(nn.Conv2d(cin, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(),
                                     nn.MaxPool2d(2))]
            cin = w
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(cin, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


class TinyResNet(nn.Module):
    """Two residual blocks: the identity add couples the stem's and both blocks' output channels."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.blocks = nn.Sequential(BasicBlock(width, width, 1), BasicBlock(width, 2 * width, 2))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * width, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.blocks(self.stem(x))), 1))


class TinyMobileNet(nn.Module):
    """Inverted residuals: depthwise convs (groups == channels) and a residual add."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, width, 3, 2, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU6())
        self.blocks = nn.Sequential(InvertedResidual(width, width, 1, 4), InvertedResidual(width, 2 * width, 2, 4))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(0.1), nn.Linear(2 * width, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.blocks(self.stem(x))), 1))


def teacher() -> nn.Module:
    return TinyCNN((16, 32))


def student() -> nn.Module:
    return TinyCNN((8, 16))


def data() -> dict[str, TensorDataset]:
    """600 train / 64 calib / 240 eval images of the real sklearn digits, at 16x16."""
    spec = importlib.util.spec_from_file_location("edgepipe_digits_data", DIGITS / "data.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)          # the demo's loader: sklearn's bundled digits, no network
    x, y = module.tensors()
    x = F.interpolate(x, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    tr, ev = perm[:600], perm[600:840]
    train = TensorDataset(x[tr], y[tr])
    return {"train": train, "calib": TensorDataset(x[tr[:64]], y[tr[:64]]), "eval": TensorDataset(x[ev], y[ev])}


def make_recipe(stages: dict) -> StagePlan:
    """The stage plan of a recipe in this folder, so ``stage_models:student`` resolves like a user's
    ``models:student`` (the stages take resolved factories, never the recipe)."""
    from pipeline.recipe.usercode import import_factory

    shape = [1, 1, SIZE, SIZE]
    recipe = Recipe.model_validate({"name": "tiny", "model": {"factory": "stage_models:teacher", "input_shape": shape},
                                    "data": {"factory": "stage_models:data"}, "stages": stages})
    recipe._path = HERE / "recipe.yaml"
    st = recipe.stages
    student = st.distill.student if st.distill else None
    return StagePlan(distill=st.distill, prune=st.prune, quantize=st.quantize,
                     student_factory=import_factory(student, HERE) if student else None)
