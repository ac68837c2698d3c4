from __future__ import annotations

import copy

import pytest
from torch import nn

from pipeline.config import load_recipe
from pipeline.stages.common import footprint
from pipeline.stages.prune import PruneConfig, prune, structured_prune
from targets.errors import ConfigError

from . import stage_models
from .stage_models import DIGITS_RECIPE


def _params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_prune_residual_model_keeps_add_coupled_channels_equal(example) -> None:
    model = stage_models.TinyResNet(16).eval()
    before = _params(model)
    pruned = structured_prune(copy.deepcopy(model), example, ratio=0.5, round_to=None)
    first, second = pruned.blocks
    # the identity add in block 0 couples stem, conv2 of block 0 and block 1's input
    assert pruned.stem[0].out_channels == first.conv2.out_channels == first.bn2.num_features == 8
    assert second.conv2.out_channels == second.downsample[0].out_channels == pruned.fc.in_features == 16
    assert _params(pruned) < before / 2.5
    assert pruned(example).shape == (1, 10)


def test_prune_depthwise_model_keeps_groups_equal_to_channels(example) -> None:
    model = stage_models.TinyMobileNet(16).eval()
    pruned = structured_prune(copy.deepcopy(model), example, ratio=0.5, round_to=None)
    depthwise = [m for m in pruned.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert len(depthwise) == 2
    for conv in depthwise:
        assert conv.groups == conv.in_channels == conv.out_channels
        assert conv.weight.shape[1] == 1
    assert [c.out_channels for c in depthwise] == [32, 32]     # 64 hidden channels each, halved
    assert pruned(example).shape == (1, 10)
    assert footprint(pruned, example)[1] < footprint(model, example)[1] / 2


def test_prune_rounds_channels_to_multiple_when_round_to_given(example) -> None:
    model = stage_models.TinyCNN((24, 40)).eval()
    pruned = structured_prune(copy.deepcopy(model), example, ratio=0.3, round_to=8)
    assert [m.out_channels % 8 for m in pruned.modules() if isinstance(m, nn.Conv2d)] == [0, 0]
    assert pruned.classifier.out_features == 10       # the classifier is never pruned


def test_prune_taylor_importance_uses_gradients(digits, teacher, example) -> None:
    cfg = PruneConfig(ratio=0.5, importance="taylor", iterative_steps=2, finetune_epochs=0, latency_guard=False)
    pruned, extra = prune(teacher, example, digits, cfg)
    assert pruned.classifier.in_features == 16 and extra["warnings"] == []
    assert teacher.classifier.in_features == 32        # the parent is not modified


def test_prune_ignores_named_layers(teacher, example) -> None:
    pruned = structured_prune(copy.deepcopy(teacher), example, ratio=0.5, ignore=["features.0.0"])
    assert pruned.features[0][0].out_channels == 16 and pruned.features[1][0].out_channels == 16


def test_prune_rejects_unknown_ignored_layer(teacher, example) -> None:
    with pytest.raises(ConfigError, match="features.7"):
        structured_prune(copy.deepcopy(teacher), example, ratio=0.5, ignore=["features.7"])


def test_prune_measures_latency_against_parent(digits, teacher, example) -> None:
    cfg = PruneConfig(ratio=0.5, finetune_epochs=1, guard_iterations=30, guard_seconds=0.2, batch_size=32)
    pruned, extra = prune(teacher, example, digits, cfg, teacher=teacher)
    guard = extra["latency_guard"]
    assert guard["n"] >= 30 and guard["pruned_p50_ms"] > 0 and guard["parent_p50_ms"] > 0
    assert guard["latency_ratio"] == pytest.approx(guard["pruned_p50_ms"] / guard["parent_p50_ms"], rel=0.01)


def test_prune_warns_loudly_when_pruned_model_is_slower(digits, teacher, example, monkeypatch) -> None:
    # a slower pruned model cannot be produced on demand, so the measurement is replaced to exercise the report path
    monkeypatch.setattr("pipeline.stages.prune.onnx_latency_ratio", lambda *a, **k: {
        "pruned_p50_ms": 1.17, "parent_p50_ms": 1.0, "latency_ratio": 1.17, "n": 300})
    lines: list[str] = []
    _, extra = prune(teacher, example, digits, PruneConfig(ratio=0.5, finetune_epochs=0), log=lines.append)
    assert any(line.startswith("WARNING: prune:") and "SLOWER" in line for line in lines)
    assert "1.17x" in extra["warnings"][0]


@pytest.mark.parametrize("override,path", [("stages.prune.ratio=1.5", "stages.prune.ratio"),
                                           ("stages.prune.importance=random", "stages.prune.importance"),
                                           ("stages.prune.round_to=0", "stages.prune.round_to")])
def test_recipe_rejects_bad_prune_config_naming_key_path(override: str, path: str) -> None:
    with pytest.raises(ConfigError, match=path.replace(".", r"\.")):
        load_recipe(DIGITS_RECIPE, [override])
