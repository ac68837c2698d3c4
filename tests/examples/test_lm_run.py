"""examples/lm end to end through the real CLI on `local`, as shipped but for `--scale`, on its eight backends (fp32,
weight-only int8 and int4 on ONNX Runtime and OpenVINO, fp32 and dynamic-range int8 on TFLite): every artifact is
scored by perplexity with the next-token agreement diagnostic beside it, every key/value-cache artifact generates on
the device (time to first token, decode tokens/s, peak memory, each with n and validity) and the float ones decode
exactly PyTorch's greedy tokens; the gate reads the recipe's relative limit, and the summary keeps schema 1's fields
(the non-classification golden: perplexity sits in ``metric`` like any metric).

A scenario (minutes: the teacher trains on first use, ~2.5 min on one core, then distill, prune and eight exports)."""

from __future__ import annotations

import json

import pytest

from tests.conftest import assert_artifacts_honest, assert_gate_verdict_only, run_cli
from tests.examples.conftest import EXAMPLES
from tests.golden import assert_summary_fields

pytestmark = [pytest.mark.scenario, pytest.mark.slow, pytest.mark.onnx, pytest.mark.openvino]

BACKENDS = ["onnx-fp32", "onnx-int8", "onnx-int4", "openvino-fp32", "openvino-int8", "openvino-int4", "tflite-fp32",
            "tflite-int8"]


def test_lm_recipe_runs_distill_prune_quantize_and_scores_every_artifact_by_perplexity(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    out = tmp_path / "run"
    proc = run_cli("run", str(EXAMPLES / "lm" / "recipe.yaml"), "--device", "local", "--out", str(out),
                   "--scale", "0.1", timeout=1800)
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert_gate_verdict_only(proc, [summary])
    assert_summary_fields(summary, "lm")
    base = summary["baseline"]["metric"]
    assert base["name"] == "perplexity" and base["unit"] == "ratio" and base["higher_is_better"] is False
    assert 1.0 < base["value"] < 1024 / 4                      # a trained model, far below a uniform guess
    assert base["values"]["next_token_agreement"] == 1.0      # the original agrees with itself
    assert [s["name"] for s in summary["stages"]] == ["distill", "prune", "quantize"]
    arts = {a["name"]: a for a in summary["artifacts"]}
    assert list(arts) == BACKENDS
    assert_artifacts_honest(summary, out, BACKENDS)
    fp32 = arts["onnx-fp32"]["metric"]["value"]
    for name, art in arts.items():
        assert not art.get("error"), (name, art.get("error"))
        m = art["metric"]
        assert m["name"] == "perplexity" and 1.0 < m["value"] < 2 * base["value"], name
        assert 0.3 < m["values"]["next_token_agreement"] < 1.0, name
        assert abs(m["value"] - fp32) / fp32 < 0.05, name      # every backend's INT8/FP32 within 5 % of ORT FP32
        if name.startswith("tflite"):                          # static shapes: no cache graph, said so
            assert "no key/value-cache graph" in art["generation_skipped"] and "generation" not in art, name
            continue
        gen = art["generation"]
        assert gen["prompt_len"] == 16 and gen["new_tokens"] == 32, name
        for key in ("ttft_ms", "decode_tokens_per_s"):
            stats = gen[key]
            assert stats["n"] >= 20 and stats["p50"] > 0, name
        assert gen["ttft_ms"]["p50"] <= gen["ttft_ms"]["p90"], name
        assert gen["valid"] is True or gen["why"], name
        assert 10 < gen["peak_rss_mb"] < 4096, name
        if name.endswith("fp32"):
            assert gen["greedy_matches_torch"] is True and gen["greedy_agreement"] == 1.0, name
        else:
            assert 0.0 <= gen["greedy_agreement"] <= 1.0, name
            assert art["metadata"]["weight_only"]["bits"] == int(name[-1]), name
    assert arts["onnx-int4"]["bytes"] <= 0.35 * arts["onnx-fp32"]["bytes"]
    assert arts["openvino-int4"]["bytes"] <= 0.35 * arts["openvino-fp32"]["bytes"]
    assert summary["gate"]["max_metric_drop"] == "5%" and summary["gate"]["max_accuracy_drop"] is None
    assert summary["headline"]["metric_unit"] == "percent"
