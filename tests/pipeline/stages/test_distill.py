from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pipeline.recipe.config import load_recipe
from pipeline.stages.common import accuracy, kd_loss
from pipeline.stages.distill import DistillConfig, distill, make_student
from targets.errors import ConfigError

from . import stage_models
from .stage_models import DIGITS_RECIPE, make_recipe


def _kl_to_teacher(student: torch.nn.Module, teacher: torch.nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        return float(F.kl_div(F.log_softmax(student.eval()(x), 1), F.log_softmax(teacher.eval()(x), 1),
                              reduction="batchmean", log_target=True))


def test_kd_loss_scales_soft_term_by_temperature_squared() -> None:
    torch.manual_seed(0)
    s, t, y = torch.randn(8, 10), torch.randn(8, 10), torch.randint(0, 10, (8,))
    soft = F.kl_div(F.log_softmax(s / 4, 1), F.softmax(t / 4, 1), reduction="batchmean") * 16
    assert kd_loss(s, t, y, temperature=4.0, alpha=1.0) == pytest.approx(float(soft), rel=1e-5)
    mixed = 0.7 * soft + 0.3 * F.cross_entropy(s, y)
    assert kd_loss(s, t, y, temperature=4.0, alpha=0.7) == pytest.approx(float(mixed), rel=1e-5)


def test_distill_moves_student_towards_teacher(digits, teacher, example) -> None:
    torch.manual_seed(0)
    student = stage_models.student()
    x = torch.stack([digits["eval"][i][0] for i in range(len(digits["eval"]))])
    before = _kl_to_teacher(student, teacher, x)
    cfg = DistillConfig(epochs=6, lr=1e-2, batch_size=32)
    out = distill(teacher, student, digits, cfg, example)
    after = _kl_to_teacher(out, teacher, x)
    assert after < before / 2, (before, after)
    assert accuracy(out, digits["eval"]) > 0.4        # chance is 0.1
    assert all(p.requires_grad for p in teacher.parameters())  # the teacher is left as it was given


def test_distill_trains_feature_adapter_when_widths_differ(digits, teacher, example) -> None:
    student = stage_models.student()          # features.1 has 16 channels, the teacher's has 32
    cfg = DistillConfig(epochs=1, batch_size=32, features=[{"student": "features.1", "teacher": "features.1"}])
    out = distill(teacher, student, digits, cfg, example)
    assert out(example).shape == (1, 10)
    assert not out.features[1]._forward_hooks  # capture hooks are removed afterwards


def test_distill_rejects_unknown_feature_layer_naming_it(digits, teacher, example) -> None:
    cfg = DistillConfig(epochs=1, features=[{"student": "features.9", "teacher": "features.1"}])
    with pytest.raises(ConfigError, match="features.9"):
        distill(teacher, stage_models.student(), digits, cfg, example)


def test_make_student_is_teacher_pruned_to_width_when_no_factory(teacher, example) -> None:
    student = make_student(teacher, example, DistillConfig(width=0.5), factory=None)
    assert [m.out_channels for m in student.modules() if isinstance(m, torch.nn.Conv2d)] == [8, 16]
    assert student(example).shape == (1, 10)
    assert [m.out_channels for m in teacher.modules() if isinstance(m, torch.nn.Conv2d)] == [16, 32]


def test_run_stages_records_distill_accuracy_params_macs_seconds(digits, teacher, tmp_path) -> None:
    from pipeline.stages.chain import run_stages

    recipe = make_recipe({"distill": {"student": "stage_models:student", "epochs": 1, "batch_size": 32}})
    result = run_stages(teacher, digits, recipe, tmp_path, lambda _m: None)
    (rec,) = result.records
    assert rec["name"] == "distill" and 0 <= rec["accuracy"] <= 1 and rec["seconds"] > 0
    assert rec["params"] < sum(p.numel() for p in teacher.parameters()) and rec["macs"] > 0
    assert type(result.model).__name__ == "TinyCNN" and result.model.classifier.in_features == 16


@pytest.mark.parametrize("override,path", [("stages.distill.temperature=0", "stages.distill.temperature"),
                                           ("stages.distill.alpha=1.5", "stages.distill.alpha"),
                                           ("stages.distill.student=models:nope", "stages.distill.student"),
                                           ("stages.distill.tempreature=2", "stages.distill.tempreature")])
def test_recipe_rejects_bad_distill_config_naming_key_path(override: str, path: str) -> None:
    with pytest.raises(ConfigError, match=path.replace(".", r"\.")):
        load_recipe(DIGITS_RECIPE, [override])
