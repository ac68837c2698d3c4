"""examples/inspect: the ShuffleNet unit's shapes and shuffle-split, the size gap, and its prunability."""

from __future__ import annotations

import torch

from tests.examples.conftest import EXAMPLES, example_module

im = example_module("inspect", "inspect_models")


def test_basic_unit_passes_the_even_channels_and_feeds_the_odd_ones_to_its_branch():
    """The shuffle + split as strided slices: the untouched half is the even channels, the branch sees the odd."""
    unit = im.ShuffleUnit(8, 8, 1).eval()
    x = torch.randn(1, 8, 4, 4)
    out = unit(x)
    assert torch.equal(out[:, :4], x[:, 0::2])
    assert torch.allclose(out[:, 4:], unit.branch(x[:, 1::2]))


def test_shuffle_units_keep_or_halve_the_grid_and_set_the_width():
    x = torch.randn(2, 24, 16, 16)
    down = im.ShuffleUnit(24, 48, 2).eval()
    assert down(x).shape == (2, 48, 8, 8)
    basic = im.ShuffleUnit(48, 48, 1).eval()
    y = torch.randn(2, 48, 8, 8)
    assert basic(y).shape == (2, 48, 8, 8)
    assert torch.equal(basic(y)[:, :24], y[:, 0::2])      # the untouched half


def test_student_is_a_shufflenet_with_depthwise_convs_and_4x_fewer_params_than_the_resnet_teacher():
    t, s = im.teacher().eval(), im.student().eval()
    x = torch.randn(2, 1, 32, 32)
    assert t(x).shape == s(x).shape == (2, 10)
    assert any(isinstance(m, torch.nn.Conv2d) and m.groups == m.in_channels > 1 for m in s.modules())
    assert 4 * sum(p.numel() for p in s.parameters()) <= sum(p.numel() for p in t.parameters())


def _recipe_ignore() -> list[str]:
    import yaml

    recipe = yaml.safe_load((EXAMPLES / "inspect" / "recipe.yaml").read_text())
    return recipe["stages"]["prune"]["ignore"]


def test_student_prunes_inside_its_branches_with_the_recipe_ignore_list_and_still_runs():
    from pipeline.stages.prune import structured_prune

    torch.manual_seed(0)
    model = im.student().eval()
    before = {n: m.out_channels for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)}
    params = sum(p.numel() for p in model.parameters())
    pruned = structured_prune(model, torch.zeros(1, 1, 32, 32), ratio=0.5, ignore=_recipe_ignore())
    after = {n: m.out_channels for n, m in pruned.named_modules() if isinstance(m, torch.nn.Conv2d)}
    assert pruned(torch.randn(2, 1, 32, 32)).shape == (2, 10)
    assert sum(p.numel() for p in pruned.parameters()) < 0.7 * params
    assert all(after[n] == before[n] for n in _recipe_ignore())               # the concat inputs keep their width
    assert after["units.1.branch.0.0"] < before["units.1.branch.0.0"]         # a branch's inner width shrank
    assert after["units.1.branch.1.0"] == after["units.1.branch.0.0"]         # and its depthwise conv followed


def test_pruning_across_the_strided_split_is_refused_with_a_clear_error():
    """Without the ignore list Torch-Pruning 1.6.1 mis-indexes a channel that crosses concat -> slice; the stage says
    so in one line instead of returning a broken model."""
    import pytest

    from pipeline.stages.prune import structured_prune
    from targets.errors import ConfigError

    with pytest.raises(ConfigError, match="stages.prune.ignore"):
        structured_prune(im.student().eval(), torch.zeros(1, 1, 32, 32), ratio=0.5)
