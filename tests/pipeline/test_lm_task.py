"""Task lm on the host: the perplexity metric (and its next-token agreement diagnostic), logit KD at every position,
the relative ("N%") gate limit in targets/units.py's one rule, and the recipe's task.generate key."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from pipeline.recipe.config import Gate, Recipe, Task
from pipeline.recipe.metrics import MetricError, resolve_metric
from pipeline.results.gate import check_artifact, limits_of
from pipeline.stages.common import Objective, kd_loss
from targets import units

V, N, T = 50, 6, 8


def _ids(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, V, size=(N, T)).astype(np.int64)


def _score(logits: np.ndarray, ids: np.ndarray, reference: np.ndarray | None = None) -> dict:
    spec = resolve_metric("perplexity", Path("."))
    return spec.score([logits], ids, None if reference is None else [reference], batch=4)   # 2 batches


def test_a_model_sure_of_every_right_next_token_scores_perplexity_one():
    ids = _ids()
    logits = np.full((N, T, V), -30.0, dtype=np.float32)
    np.put_along_axis(logits, ids[..., None], 30.0, axis=2)
    scored = _score(logits, ids)
    assert scored["name"] == "perplexity" and scored["unit"] == "ratio" and scored["higher_is_better"] is False
    assert scored["value"] == pytest.approx(1.0, abs=1e-6)


def test_a_uniform_model_scores_the_vocabulary_size_and_a_wrong_sure_one_far_more():
    ids = _ids()
    assert _score(np.zeros((N, T, V), np.float32), ids)["value"] == pytest.approx(V, rel=1e-9)
    wrong = np.zeros((N, T, V), np.float32)
    np.put_along_axis(wrong, ((ids + 1) % V)[..., None], 10.0, axis=2)
    assert _score(wrong, ids)["value"] > 100 * V


def test_perplexity_equals_torch_cross_entropy_over_every_position():
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(N, T, V)).astype(np.float32) * 3
    ids = _ids(1)
    ce = F.cross_entropy(torch.from_numpy(logits).reshape(-1, V), torch.from_numpy(ids).reshape(-1))
    scored = _score(logits, ids)
    assert scored["value"] == pytest.approx(math.exp(float(ce)), rel=1e-5)
    assert scored["values"]["cross_entropy"] == pytest.approx(float(ce), rel=1e-5)


def test_next_token_agreement_is_the_share_of_positions_with_the_original_top1():
    rng = np.random.default_rng(4)
    ref = rng.normal(size=(N, T, V)).astype(np.float32)
    out = ref.copy()
    top = ref.argmax(axis=2)
    flip = np.zeros((N, T), bool)
    flip[:3, :4] = True                                     # 12 of 48 positions get another argmax
    for n, t in zip(*np.nonzero(flip), strict=True):
        out[n, t, (top[n, t] + 1) % V] = ref[n, t].max() + 1
    values = _score(out, _ids(), ref)["values"]
    assert values["next_token_agreement"] == pytest.approx(1 - 12 / 48)
    assert _score(ref, _ids(), ref)["values"]["next_token_agreement"] == 1.0
    assert "next_token_agreement" not in _score(ref, _ids())["values"]     # no original at hand: no diagnostic


def test_perplexity_refuses_outputs_that_are_not_next_token_logits():
    with pytest.raises(MetricError, match="logits .samples, positions, vocabulary"):
        _score(np.zeros((N, V), np.float32), _ids()[:, 0])
    with pytest.raises(MetricError, match="vocabulary has 50"):
        _score(np.zeros((N, T, V), np.float32), _ids() + V)


def test_logit_kd_of_sequence_logits_is_the_kl_over_the_vocabulary_at_every_position():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(3, T, V, generator=g), torch.randn(3, T, V, generator=g)
    y = torch.randint(0, V, (3, T), generator=g)
    temp, alpha = 2.0, 0.6
    soft = sum(F.kl_div(F.log_softmax(s[b, i] / temp, -1), F.log_softmax(t[b, i] / temp, -1), reduction="sum",
                        log_target=True) for b in range(3) for i in range(T)) / (3 * T) * temp ** 2
    hard = F.cross_entropy(s.reshape(-1, V), y.reshape(-1))
    assert float(kd_loss(s, t, y, temp, alpha)) == pytest.approx(float(alpha * soft + (1 - alpha) * hard), rel=1e-5)
    assert float(Objective("logits").loss([s], None, y, temp, alpha)) == pytest.approx(float(hard), rel=1e-6)


# ------------------------------------------------------------------------------------------------ the "%" rule
PPL = {"name": "perplexity", "higher_is_better": False, "unit": "ratio"}


def test_a_percent_limit_is_a_relative_drop_and_plain_numbers_keep_their_units():
    rel = units.parse_limit("5%")
    assert units.is_relative(rel) and float(rel) == 5.0 and f"{rel:g}" == "5%" and units.as_written(rel) == "5%"
    assert units.drop(20.0, 21.0, PPL, rel) == pytest.approx(5.0)            # 1 of 20: 5 %
    assert units.within(units.drop(20.0, 21.0, PPL, rel), rel)
    assert not units.within(units.drop(20.0, 21.2, PPL, rel), rel)
    assert units.drop(20.0, 19.0, PPL, "5%") == pytest.approx(-5.0)          # better: negative
    assert units.drop(20.0, 21.0, PPL) == pytest.approx(1.0)                  # a plain limit: raw units
    top1 = {"name": "top1", "unit": "fraction"}
    assert units.drop(0.90, 0.88, top1) == pytest.approx(2.0)                 # points, as before
    assert units.drop(0.90, 0.88, top1, "5%") == pytest.approx(100 * 0.02 / 0.90)
    assert math.isnan(units.drop(0.0, 1.0, PPL, "5%"))
    assert units.max_metric_drop({"max_metric_drop": "2.5%"}) == pytest.approx(2.5)
    assert units.is_relative(units.max_metric_drop(Gate(max_metric_drop="2.5 %")))
    assert units.max_metric_drop(Gate(max_metric_drop=3)) == 3.0 and not units.is_relative(3.0)


def test_the_gate_config_accepts_percent_strings_and_refuses_other_strings():
    assert Gate(max_metric_drop=" 5 %").max_metric_drop == "5%"
    assert Gate(max_metric_drop="5%").max_accuracy_drop is None          # no accuracy-points alias
    assert Gate(max_metric_drop=2).max_accuracy_drop == 2
    for bad in ("5", "five%", "-5%", "5%%"):
        with pytest.raises(ValidationError, match="neither a number nor a percentage"):
            Gate(max_metric_drop=bad)
    with pytest.raises(ValidationError):
        Gate(max_metric_drop=-1)


def test_the_gate_judges_perplexity_by_its_relative_increase_and_stores_the_limit_as_written():
    limits = limits_of(Gate(max_metric_drop="5%"))
    assert limits["max_metric_drop"] == "5%" and limits["max_accuracy_drop"] is None
    baseline = {"metric": {**PPL, "value": 40.0}}
    ok = {"backend": "onnx", "precision": "int8", "metric": {**PPL, "value": 41.9}}
    bad = {"backend": "onnx", "precision": "fp32", "metric": {**PPL, "value": 42.4}}
    assert check_artifact(ok, limits, baseline, "local") == []
    assert check_artifact(bad, limits, baseline, "local") == [
        "onnx-fp32: perplexity 42.400 is 6.0% worse than baseline 40.000 (max 5%)"]
    assert check_artifact(bad, limits_of(Gate(max_metric_drop=3.0)), baseline, "local") == []   # raw: +2.4 <= 3


# ------------------------------------------------------------------------------------------------ task.generate
def _recipe(**task: object) -> dict:
    return {"name": "lm", "model": {"factory": "m:f", "inputs": [{"name": "input_ids", "shape": [1, 64],
                                                                 "dtype": "int64"}]},
            "data": {"factory": "d:f"}, "task": task}


def test_task_generate_is_validated_and_reaches_the_export_plan():
    from pipeline.phases.prepare import ExportPlan

    recipe = Recipe.model_validate(_recipe(metric="perplexity", generate={"prompt_len": 16, "new_tokens": 32}))
    assert ExportPlan.of(recipe).generate == {"prompt_len": 16, "new_tokens": 32}
    assert ExportPlan.of(Recipe.model_validate(_recipe(metric="perplexity"))).generate is None
    with pytest.raises(ValidationError, match="needs metric: perplexity"):
        Task.model_validate({"metric": "top1", "generate": {"prompt_len": 4, "new_tokens": 4}})
    with pytest.raises(ValidationError, match="longer than the model's input"):
        Recipe.model_validate(_recipe(metric="perplexity", generate={"prompt_len": 65, "new_tokens": 4}))
    with pytest.raises(ValidationError):
        Task.model_validate({"metric": "perplexity", "generate": {"prompt_len": 0, "new_tokens": 4}})
    with pytest.raises(ValidationError):
        Task.model_validate({"metric": "perplexity", "generate": {"prompt_len": 4}})


def test_a_release_without_the_recipe_rejudges_with_the_stored_relative_limit(tmp_path):
    """The bundle re-judges the gate from the summary's stored limits when the run folder lost its recipe: a
    relative limit is stored as written ("5%", with no accuracy alias) and must come back as one."""
    from pipeline.release.bundle import _gate_block

    baseline = {"metric": {**PPL, "value": 40.0}}
    art = {"backend": "onnx", "precision": "int8", "metric": {**PPL, "value": 42.4}, "file": "a.onnx"}
    summary = {"baseline": baseline, "artifacts": [art], "gate": limits_of(Gate(max_metric_drop="5%"))}
    block = _gate_block(tmp_path, summary, "local")
    assert block["passed"] is False and block["max_metric_drop"] == "5%"
    assert block["failures"] == ["onnx-int8: perplexity 42.400 is 6.0% worse than baseline 40.000 (max 5%)"]
    summary["gate"] = limits_of(Gate(max_metric_drop="10%"))
    assert _gate_block(tmp_path, summary, "local")["passed"] is True
