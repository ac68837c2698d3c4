"""A language model's generation figures (issue 24) reach the report, its tokens/s plot and the model card, with an
invalid generation shown as invalid and never drawn as a figure."""

from __future__ import annotations

import json
import re
from pathlib import Path

from pipeline.release.modelcard import model_card
from pipeline.results.generation import describe, tokens_per_s
from pipeline.results.report import write_report
from tests.pipeline.runfolder import make_run


def _gen(tps: float, valid: bool = True, why: str = "", **extra: object) -> dict:
    return {"prompt_len": 16, "new_tokens": 32, "valid": valid, "why": why, "peak_rss_mb": 84.5,
            "ttft_ms": {"n": 40, "p50": 3.25, "p90": 3.5, "p99": 4.0, "mean": 3.3, "std": 0.1},
            "decode_tokens_per_s": {"n": 40, "p50": tps, "p90": tps * 0.9, "p99": tps * 0.8, "mean": tps, "std": 1.0},
            **extra}


def _lm_run(root: Path) -> Path:
    run = make_run(root, recipe="lm")
    path = run / "summary.json"
    summary = json.loads(path.read_text())
    for a in summary["artifacts"]:
        name = f"{a['backend']}-{a['precision']}"
        if name == "onnx-fp32":
            a["generation"] = _gen(410.0, greedy_matches_torch=True)
        elif name == "onnx-int8":
            a["generation"] = _gen(950.0, greedy_matches_torch=False, greedy_agreement=0.94)
        elif name == "openvino-int8":
            a["generation"] = _gen(120.0, valid=False, why="only 3 of 20 generations within max_seconds=1")
    path.write_text(json.dumps(summary))
    return run


def test_report_shows_generation_table_and_tokens_per_second_plot(tmp_path: Path) -> None:
    out = write_report([_lm_run(tmp_path / "run")], tmp_path / "report.html")
    text = out.read_text()
    assert "<h4>Generation (greedy, batch 1, KV cache)</h4>" in text
    assert "16 + 32 tokens" in text and "410.0 / 369.0" in text and "3.25 / 3.50" in text
    assert "matches PyTorch" in text and "94% of tokens as PyTorch" in text
    assert "invalid: only 3 of 20 generations within max_seconds=1" in text
    assert len(re.findall(r'<img src="data:image/png;base64,', text)) == 4   # + tokens/s vs metric
    assert 'alt="top-1 versus decode tokens per second"' in text


def test_report_of_a_model_that_does_not_generate_has_no_generation_parts(tmp_path: Path) -> None:
    text = write_report([make_run(tmp_path / "run")], tmp_path / "report.html").read_text()
    assert "Generation (greedy" not in text and "decode tokens per second" not in text


def test_invalid_generation_has_no_tokens_per_second_figure() -> None:
    assert tokens_per_s({"generation": _gen(300.0)}) == 300.0
    assert tokens_per_s({"generation": _gen(300.0, valid=False, why="throttled")}) is None
    assert tokens_per_s({}) is None
    assert describe({"valid": False})["valid"] == "invalid: no reason given"


def test_model_card_lists_generation_of_the_shipped_artifacts(tmp_path: Path) -> None:
    summary = json.loads((_lm_run(tmp_path / "run") / "summary.json").read_text())
    chosen = [a for a in summary["artifacts"] if a.get("generation")]
    names = [f"{a['backend']}-{a['precision']}" for a in chosen]
    for a, n in zip(chosen, names, strict=True):
        a["name"] = n
    manifest = {"name": "lm", "device": "local", "version": "1", "pick": {"overall": names[0]},
                "artifacts": [{"name": n, "path": f"artifacts/{n}", "gate": {"passed": True}} for n in names],
                "gate": {"passed": True, "max_metric_drop": "5%"}}
    card = model_card(summary, manifest, chosen)
    assert "### Generation (greedy, batch 1, KV cache; measured on the device by the runner)" in card
    assert "| onnx-fp32 | 16 + 32 tokens | 3.25 / 3.50 | 410.0 / 369.0 | 40 / 40 | 84.5 | valid | matches PyTorch |" \
        in card


def test_store_keeps_generation_figures_in_their_own_table(tmp_path: Path) -> None:
    from pipeline.results.store import open_store, record_summary

    st = open_store(tmp_path / "db" / "results.db")
    run_id = record_summary(run_dir=_lm_run(tmp_path / "run"), store=st)
    arts = {a["name"]: a for a in st.get_run(run_id)["artifacts"]}
    fp32, bad = arts["onnx-fp32"]["generation"], arts["openvino-int8"]["generation"]
    assert fp32["decode_tokens_per_s_p50"] == 410.0 and fp32["ttft_p90_ms"] == 3.5 and fp32["n"] == 40
    assert fp32["greedy_matches_torch"] is True and fp32["valid"] is True and fp32["peak_rss_mb"] == 84.5
    assert arts["onnx-int8"]["generation"]["greedy_agreement"] == 0.94
    assert bad["valid"] is False and "max_seconds=1" in bad["why"]
    assert arts["onnx-fp32"]["benchmark"] is not None and "generation" not in (arts.get("tflite-int8") or {}) or \
        arts["tflite-int8"]["generation"] is None


def _art(name: str, p90: float, ppl: float, tps: float | None, slower_than: str | None = None) -> dict:
    backend, precision = name.split("-")
    art = {"name": name, "backend": backend, "precision": precision, "valid": True, "bytes": 1000,
           "metric": {"name": "perplexity", "value": ppl, "higher_is_better": False},
           "latency_ms": {"p50": p90 * 0.8, "p90": p90, "n": 200}, "gate": {"passed": True}}
    if tps is not None:
        art["generation"] = _gen(tps)
    if slower_than:
        art["int8_guard"] = {"slower": True, "parent": slower_than}
    return art


def test_a_language_model_ships_its_fastest_decoder_not_its_fastest_forward() -> None:
    """int4 decodes 2x faster while its 64-token forward is slower (MatMulNBits on a prefill-sized call): the pick
    is int4, the guard's "slower" on the forward does not outrank it, and a static-graph TFLite artifact with the
    fastest forward but no generation comes after every artifact that generates."""
    from pipeline.results.rundir import pick_best

    arts = [_art("onnx-fp32", 1.0, 58.77, 1250.0), _art("onnx-int4", 1.4, 59.77, 2676.0, slower_than="onnx-fp32"),
            _art("tflite-fp32", 0.7, 58.77, None)]
    assert pick_best(arts)["name"] == "onnx-int4"
    arts[1]["generation"]["decode_tokens_per_s"]["p50"] = 900.0      # decodes slower too: the guard outranks it
    assert pick_best(arts)["name"] == "onnx-fp32"
    plain = [_art("onnx-fp32", 1.0, 58.77, None), _art("tflite-fp32", 0.7, 58.77, None)]
    assert pick_best(plain)["name"] == "tflite-fp32"                # no generation anywhere: the p90 rule as before
