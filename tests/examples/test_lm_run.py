"""examples/lm end to end through the real CLI on `local`, shortened with `--scale`, on the float and INT8 backends of
ONNX Runtime and OpenVINO (`--set backends=...`): every artifact is scored by perplexity with the next-token
agreement diagnostic beside it, the gate reads the recipe's relative limit, and the summary keeps schema 1's fields
(the non-classification golden: perplexity sits in ``metric`` like any metric).

A scenario (minutes: the teacher trains on first use, ~2.5 min on one core, then distill, prune and four exports)."""

from __future__ import annotations

import json

import pytest

from tests.conftest import assert_gate_verdict_only, run_cli
from tests.examples.conftest import EXAMPLES
from tests.golden import assert_summary_fields

pytestmark = [pytest.mark.scenario, pytest.mark.slow, pytest.mark.onnx, pytest.mark.openvino]

BACKENDS = ["onnx-fp32", "onnx-int8", "openvino-fp32", "openvino-int8"]


def test_lm_recipe_runs_distill_prune_quantize_and_scores_every_artifact_by_perplexity(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    out = tmp_path / "run"
    proc = run_cli("run", str(EXAMPLES / "lm" / "recipe.yaml"), "--device", "local", "--out", str(out),
                   "--scale", "0.2", "--set", f"backends=[{','.join(BACKENDS)}]", timeout=1800)
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert_gate_verdict_only(proc, [summary])
    assert_summary_fields(summary, "multihead")
    base = summary["baseline"]["metric"]
    assert base["name"] == "perplexity" and base["unit"] == "ratio" and base["higher_is_better"] is False
    assert 1.0 < base["value"] < 1024 / 4                      # a trained model, far below a uniform guess
    assert base["values"]["next_token_agreement"] == 1.0      # the original agrees with itself
    assert [s["name"] for s in summary["stages"]] == ["distill", "prune", "quantize"]
    arts = {a["name"]: a for a in summary["artifacts"]}
    assert list(arts) == BACKENDS
    fp32 = arts["onnx-fp32"]["metric"]["value"]
    for name, art in arts.items():
        assert not art.get("error"), (name, art.get("error"))
        m = art["metric"]
        assert m["name"] == "perplexity" and 1.0 < m["value"] < 2 * base["value"], name
        assert 0.3 < m["values"]["next_token_agreement"] < 1.0, name
        assert abs(m["value"] - fp32) / fp32 < 0.05, name      # every backend's INT8/FP32 within 5 % of ORT FP32
    assert summary["gate"]["max_metric_drop"] == "5%" and summary["gate"]["max_accuracy_drop"] is None
    assert summary["headline"]["metric_unit"] == "percent"
