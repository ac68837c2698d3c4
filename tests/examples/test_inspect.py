"""examples/inspect: the ShuffleNet unit's shapes and shuffle, and the teacher/student size gap."""

from __future__ import annotations

import torch

from tests.examples.conftest import example_module

im = example_module("inspect", "inspect_models")


def test_channel_shuffle_interleaves_the_two_halves():
    x = torch.arange(6.0).reshape(1, 6, 1, 1)
    assert im.channel_shuffle(x, 2).flatten().tolist() == [0, 3, 1, 4, 2, 5]


def test_shuffle_units_keep_or_halve_the_grid_and_set_the_width():
    x = torch.randn(2, 24, 16, 16)
    down = im.ShuffleUnit(24, 48, 2).eval()
    assert down(x).shape == (2, 48, 8, 8)
    basic = im.ShuffleUnit(48, 48, 1).eval()
    y = torch.randn(2, 48, 8, 8)
    assert basic(y).shape == (2, 48, 8, 8)
    # the split: the first half passes untouched, so it reappears (shuffled to the even channels)
    assert torch.equal(basic(y)[:, 0::2], y[:, :24])


def test_student_is_a_shufflenet_with_depthwise_convs_and_4x_fewer_params_than_the_resnet_teacher():
    t, s = im.teacher().eval(), im.student().eval()
    x = torch.randn(2, 1, 32, 32)
    assert t(x).shape == s(x).shape == (2, 10)
    assert any(isinstance(m, torch.nn.Conv2d) and m.groups == m.in_channels > 1 for m in s.modules())
    assert 4 * sum(p.numel() for p in s.parameters()) <= sum(p.numel() for p in t.parameters())


def test_pruning_the_shufflenet_student_is_refused_with_a_clear_error():
    """Torch-Pruning 1.6.1 cannot map the split after a channel-shuffle reshape; the stage says so in one line
    (the inspect recipe leaves pruning out for that reason)."""
    import pytest

    from pipeline.stages.prune import structured_prune
    from targets.errors import ConfigError

    with pytest.raises(ConfigError, match="channel shuffle"):
        structured_prune(im.student().eval(), torch.zeros(1, 1, 32, 32), ratio=0.3)
