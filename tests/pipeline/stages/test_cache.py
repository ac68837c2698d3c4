from __future__ import annotations

import copy

import pytest
import torch

from pipeline.stages.cache import load_model, model_hash, save_model, stage_key
from pipeline.stages.chain import run_stages
from pipeline.stages.prune import structured_prune

from . import stage_models
from .stage_models import make_recipe

STAGES = {"distill": {"student": "stage_models:student", "epochs": 1, "batch_size": 32},
          "prune": {"ratio": 0.5, "round_to": None, "finetune_epochs": 1, "batch_size": 32, "latency_guard": False},
          "quantize": {"mode": "ptq", "calib_samples": 32}}


def test_saved_pruned_model_loads_with_weights_only_into_fresh_architecture(example, tmp_path) -> None:
    pruned = structured_prune(stage_models.TinyMobileNet(16).eval(), example, ratio=0.5, round_to=None)
    save_model(pruned, tmp_path / "m.pt")
    torch.load(tmp_path / "m.pt", weights_only=True)            # plain tensors and primitives only
    loaded = load_model(stage_models.TinyMobileNet(16), tmp_path / "m.pt")
    assert torch.equal(loaded(example), pruned(example))
    assert model_hash(loaded) == model_hash(pruned)


def test_stage_key_changes_with_parent_config_and_data() -> None:
    base = stage_key("prune", "p", {"ratio": 0.5}, "d")
    assert base == stage_key("prune", "p", {"ratio": 0.5}, "d")
    assert len({base, stage_key("prune", "q", {"ratio": 0.5}, "d"), stage_key("prune", "p", {"ratio": 0.3}, "d"),
                stage_key("prune", "p", {"ratio": 0.5}, "e")}) == 4


def test_run_stages_reuses_distill_and_prune_when_only_quantize_changes(digits, teacher, tmp_path) -> None:
    lines: list[str] = []
    first = run_stages(teacher, digits, make_recipe(STAGES), tmp_path, lines.append)
    assert [r["cached"] for r in first.records] == [False, False, False]
    changed = copy.deepcopy(STAGES)
    changed["quantize"] = {"mode": "ptq", "calib_samples": 32, "calibration": "percentile"}
    lines.clear()
    second = run_stages(copy.deepcopy(teacher), digits, make_recipe(changed), tmp_path, lines.append)
    assert [r["cached"] for r in second.records] == [True, True, False]
    assert any(line.startswith("stage distill: cached") for line in lines)
    assert any(line.startswith("stage quantize: ran") for line in lines)
    assert model_hash(second.model) == model_hash(first.model)       # the cached prune output is the same model
    assert second.export_overrides["calibration"] == "percentile"
    assert second.calib["input"].shape == (32, 1, 16, 16) and second.calib["input"].dtype == "float32"


def test_run_stages_resumes_after_interrupt_from_last_finished_stage(digits, teacher, tmp_path, monkeypatch) -> None:
    def interrupted(*_a, **_k):
        raise KeyboardInterrupt

    monkeypatch.setattr("pipeline.stages.prune.prune", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_stages(teacher, digits, make_recipe(STAGES), tmp_path, lambda _m: None)
    assert not (tmp_path / "stages" / "prune").exists() or not any((tmp_path / "stages" / "prune").iterdir())
    monkeypatch.undo()
    lines: list[str] = []
    result = run_stages(teacher, digits, make_recipe(STAGES), tmp_path, lines.append)
    assert [(r["name"], r["cached"]) for r in result.records] == [("distill", True), ("prune", False),
                                                                 ("quantize", False)]
    assert result.model.classifier.in_features == 8


def test_run_stages_passes_model_through_when_no_stage(digits, teacher, tmp_path) -> None:
    result = run_stages(teacher, digits, make_recipe({}), tmp_path, lambda _m: None)
    assert result.model is teacher and result.records == [] and result.export_overrides == {}
    assert not (tmp_path / "stages").exists()
