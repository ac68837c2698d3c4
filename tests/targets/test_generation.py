"""Issue 24 items 5-6: a decoder exported as its key/value-cache graph (ONNX, OpenVINO), greedy generation on the
runner (TTFT, decode tokens/s, peak memory, tokens) and the host's token-for-token check against PyTorch.

The model is tests/targets/_decoder.py: a tiny protocol-following decoder trained for seconds on sklearn's digits
labels, so greedy decoding continues prompts with real margins."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from targets.artifact import Artifact
from targets.device import benchmark, generation_problems, record_problems
from targets.errors import ConfigError
from targets.export_config import ExportConfig
from targets.generate import compare_greedy, empty_cache, generation_entry, greedy_numpy, greedy_torch, write_prompts
from targets.profiles import load_profile
from targets.runner import RUNNER_PATH, bench
from targets.validate import validate
from tests.targets._decoder import HEADS, MAX_POS, VOCAB, WIDTH, prompts, tiny_decoder

PROMPT_LEN, NEW = 8, 12
RULES = {"warmup": 2, "min_iterations": 20, "min_seconds": 0.05, "max_seconds": 20}


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    """The trained decoder, its prompts, PyTorch's greedy tokens and (lazily) its fp32 cache-graph artifacts."""
    class LM:
        pass

    t = LM()
    t.model = tiny_decoder()
    t.prompts = prompts(3, PROMPT_LEN)
    t.ref = greedy_torch(t.model, t.prompts, NEW)
    out = tmp_path_factory.mktemp("lm-artifacts")
    cache: dict[str, Artifact] = {}

    def artifact(family: str) -> Artifact:
        if family not in cache:
            import importlib

            export = importlib.import_module(f"targets.export_{family}").export
            cfg = ExportConfig(name="lm", precision="fp32", task="lm", input_names=["input_ids"],
                               output_names=["logits"])
            cache[family] = export(t.model, (torch.zeros(1, 16, dtype=torch.long),), None, cfg, out / family)
        return cache[family]

    t.artifact = artifact
    return t


def _profile(tmp_path):
    profile = load_profile("local")
    profile.workdir = str(tmp_path / "work")
    profile.runtime.threads = 1
    for k, v in RULES.items():
        setattr(profile.bench, k, v)
    return profile


def test_greedy_torch_continues_the_digit_cycle_and_its_cache_equals_the_plain_forward(lm):
    # the reference is meaningful: the model learned the sequence (continuations are mostly "next digit")
    seq = np.concatenate([lm.prompts, lm.ref], axis=1)
    steps = (seq[:, 1:] - seq[:, :-1]) % 10
    assert (steps[:, PROMPT_LEN - 1:] == 1).mean() >= 0.5
    # and greedy through the cache is greedy through the plain forward, re-run on the whole text each step
    with torch.no_grad():
        ids = torch.from_numpy(lm.prompts[:1].copy())
        for _ in range(NEW):
            ids = torch.cat([ids, lm.model(ids)[:, -1:].argmax(-1)], dim=1)
    assert ids[0, PROMPT_LEN:].tolist() == lm.ref[0].tolist()


@pytest.mark.onnx
@pytest.mark.parametrize("family", ["onnx", pytest.param("openvino", marks=pytest.mark.openvino)])
def test_cache_graph_has_the_contract_names_dynamic_dims_and_generation_metadata(lm, family):
    art = lm.artifact(family)
    gen = art.metadata["generation"]
    assert gen["layers"] == 2 and gen["heads"] == list(HEADS) and gen["head_dim"] == [WIDTH // h for h in HEADS]
    assert gen["max_positions"] == MAX_POS and gen["cache_inputs"] == ["past_key_0", "past_value_0", "past_key_1",
                                                                       "past_value_1"]
    session = bench.load(art.path, art.backend)
    assert session.input_names == ["input_ids", *gen["cache_inputs"]]
    assert session.outputs == ["logits", "present_key_0", "present_value_0", "present_key_1", "present_value_1"]
    # B, S, P dynamic: a batch of 3 with 5 new tokens on a past of 7
    past = [np.random.default_rng(0).standard_normal((3, h, 7, WIDTH // h)).astype(np.float32)
            for h in HEADS for _ in range(2)]
    ids = lm.prompts[:, :5].repeat(1, axis=0)
    out = session.run({"input_ids": ids, **dict(zip(gen["cache_inputs"], past, strict=True))})
    with torch.no_grad():
        ref = lm.model.forward_with_cache(torch.from_numpy(ids.copy()), *map(torch.from_numpy, past))
    assert [o.shape for o in out] == [tuple(r.shape) for r in ref]
    assert out[1].shape == (3, HEADS[0], 12, WIDTH // HEADS[0])
    for o, r in zip(out, ref, strict=True):
        np.testing.assert_allclose(o, r.numpy(), atol=1e-4)


@pytest.mark.onnx
@pytest.mark.parametrize("family", ["onnx", pytest.param("openvino", marks=pytest.mark.openvino)])
def test_perplexity_forward_with_an_empty_past_equals_the_plain_forward(lm, family):
    """P = 0 works in both runtimes: the eval feeds input_ids alone, the runner adds the empty past and returns the
    logits only -- so the host's validate() checks the cache graph against model(input_ids) unchanged."""
    art = lm.artifact(family)
    windows = prompts(4, 32)
    session = bench.load(art.path, art.backend)
    outs = bench.predict(session, {"input_ids": windows})
    with torch.no_grad():
        ref = lm.model(torch.from_numpy(windows)).numpy()
    assert len(outs) == 1 and outs[0].shape == (4, 32, VOCAB)
    np.testing.assert_allclose(outs[0], ref, atol=1e-4)
    report = validate(art, {"input_ids": windows}, [ref], classification=False)
    assert report["max_abs_error"] < 1e-4


@pytest.mark.onnx
@pytest.mark.parametrize("family", ["onnx", pytest.param("openvino", marks=pytest.mark.openvino)])
def test_runner_loop_host_numpy_loop_and_pytorch_decode_the_same_tokens(lm, family):
    art = lm.artifact(family)
    session = bench.load(art.path, art.backend)
    names = art.metadata["generation"]["cache_inputs"]

    def step(ids, past):
        out = session.run({"input_ids": ids, **dict(zip(names, past, strict=True))})
        return out[0], out[1:]

    host = greedy_numpy(step, lm.prompts, NEW, empty_cache(art.metadata["generation"]))
    runner = np.array([bench.greedy(session, p, NEW)[0] for p in lm.prompts])
    np.testing.assert_array_equal(host, lm.ref)
    np.testing.assert_array_equal(runner, lm.ref)


@pytest.mark.onnx
@pytest.mark.parametrize("family", ["onnx", pytest.param("openvino", marks=pytest.mark.openvino)])
def test_generate_on_the_local_device_gives_a_valid_record_whose_tokens_match_pytorch(lm, family, tmp_path):
    art = lm.artifact(family)
    profile = _profile(tmp_path)
    rec = benchmark(profile, art, generate=(PROMPT_LEN, NEW), prompts=lm.prompts)
    gen = rec["generation"]
    assert gen["valid"] is True and gen["why"] == "", gen["why"]
    assert gen["prompt_len"] == PROMPT_LEN and gen["new_tokens"] == NEW and gen["prompts"] == 3
    for key in ("ttft_ms", "decode_tokens_per_s"):
        st = gen[key]
        assert st["n"] >= RULES["min_iterations"] and 0 < st["p50"] <= st["p90"] <= st["p99"]
    assert 10 < gen["peak_rss_mb"] < 4096   # a real figure in MiB (not KiB, not bytes)
    assert record_problems(rec, RULES) == []
    entry, problems = generation_entry(gen, lm.ref, "fp32")
    assert problems == [] and entry["greedy_matches_torch"] is True and entry["greedy_agreement"] == 1.0
    assert "tokens" not in entry and "state" not in entry and entry["ttft_ms"] == gen["ttft_ms"]
    assert rec["valid"] is True and rec["latency_ms"]["n"] >= RULES["min_iterations"]  # the latency bench too


@pytest.mark.onnx
def test_runner_cli_generate_prints_one_json_line_and_refuses_a_plain_graph(lm, tmp_path):
    art = lm.artifact("onnx")
    pfile = write_prompts(tmp_path / "prompts.npz", lm.prompts)
    cmd = [sys.executable, str(RUNNER_PATH), "--artifact", art.path, "--threads", "1", "--warmup", "1",
           "--min-iterations", "20", "--min-seconds", "0.05", "--max-seconds", "20", "--generate", f"{PROMPT_LEN},4",
           "--prompts", str(pfile)]
    rec = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)
    assert rec["generation"]["tokens"] == lm.ref[:, :4].tolist()   # greedy: the first 4 of the 12
    bad = subprocess.run([*cmd[:-4], "--generate", "3,4", "--prompts", str(pfile)], capture_output=True, text=True)
    assert bad.returncode == 2 and "expected integer [n, 3]" in json.loads(bad.stdout)["error"]


def test_runner_generation_refuses_an_artifact_without_cache_inputs():
    plain = bench.Session(lambda feeds: [np.zeros((1, 4, VOCAB), np.float32)],
                          inputs=[{"name": "input_ids", "shape": [1, 4], "dtype": np.dtype(np.int64)}],
                          runtime="fake", version="0")
    import argparse

    with pytest.raises(bench.RunnerError, match="key/value-cache graph"):
        bench.generation(plain, np.zeros((1, 4), np.int64), 4, argparse.Namespace())


@pytest.mark.tflite
def test_tflite_lm_is_the_plain_static_graph_measured_without_generation(lm, tmp_path):
    """TFLite has static shapes: an lm artifact is forward(input_ids [1, T]) -> logits, for perplexity; the host
    asks its runner for no generation and records why."""
    from targets.export_tflite import export

    cfg = ExportConfig(name="lm", task="lm", input_names=["input_ids"], output_names=["logits"])
    art = export(lm.model, (torch.zeros(1, 32, dtype=torch.long),), None, cfg, tmp_path / "tflite")
    assert "generation" not in art.metadata and "perplexity only" in art.metadata["lm"]
    windows = prompts(3, 32)
    outs = bench.predict(bench.load(art.path, "tflite", input_names=["input_ids"]), {"input_ids": windows})
    with torch.no_grad():
        np.testing.assert_allclose(outs[0], lm.model(torch.from_numpy(windows)).numpy(), atol=1e-4)
    rec = benchmark(_profile(tmp_path), art, generate=(4, 4), prompts=np.zeros((1, 4), np.int64))
    assert "generation" not in rec and "no key/value-cache graph" in rec["generation_skipped"]
    assert rec["valid"] and rec["latency_ms"]["n"] >= RULES["min_iterations"]


@pytest.mark.onnx
def test_a_prompt_past_the_position_table_is_a_config_error_before_any_job(lm, tmp_path):
    with pytest.raises(ConfigError, match="positions"):
        benchmark(_profile(tmp_path), lm.artifact("onnx"), generate=(60, 8), prompts=prompts(1, 60))


def _gen_record() -> dict:
    stats = {"p50": 1.0, "p90": 2.0, "p99": 3.0, "mean": 1.5, "std": 0.5, "min": 0.5, "max": 3.0, "n": 25}
    return {"prompt_len": 8, "new_tokens": 3, "prompts": 2, "ttft_ms": dict(stats),
            "decode_tokens_per_s": {**stats, "p50": 900.0, "p90": 950.0, "p99": 990.0}, "peak_rss_mb": 120.5,
            "valid": True, "why": "", "tokens": [[1, 2, 3], [4, 5, 6]]}


def test_generation_problems_catch_a_tampered_or_short_record():
    good = _gen_record()
    assert generation_problems(good, RULES, expect=(8, 3, 2)) == []
    assert generation_problems({**good, "ttft_ms": {**good["ttft_ms"], "p50": 9.0}}) == [
        "ttft_ms percentiles out of order (p50 9.0, p90 2.0, p99 3.0)"]
    assert "tokens are not 2 lists of 3 ids" in generation_problems({**good, "tokens": [[1, 2]]}, expect=(8, 3, 2))
    assert generation_problems({**good, "peak_rss_mb": -1}) == ["peak_rss_mb -1 is not a positive figure"]
    # marked valid with fewer timed generations than the profile's rules ask for: not believed
    few = {**good, "ttft_ms": {**good["ttft_ms"], "n": 5}, "decode_tokens_per_s": {**good["ttft_ms"], "n": 5}}
    assert any("only 5 of 20 iterations" in p for p in generation_problems(few, RULES))
    lat = {"p50": 1.0, "p90": 1.0, "p99": 1.0, "mean": 1.0, "n": 30}
    assert record_problems({"latency_ms": lat, "valid": True, "invalid_reasons": [], "generation": few}, RULES)


def test_compare_greedy_judges_float_artifacts_and_records_agreement_for_quantized_ones():
    ref = np.array([[1, 2, 3, 4], [5, 6, 7, 8]])
    assert compare_greedy(ref.tolist(), ref)["greedy_matches_torch"] is True
    off = [[1, 2, 9, 9], [5, 6, 7, 8]]
    cmp = compare_greedy(off, ref)
    assert cmp == {"greedy_matches_torch": False, "greedy_agreement": 0.75, "greedy_prefix": 0.75}
    rec = {**_gen_record(), "tokens": off}
    _, problems = generation_entry(rec, ref, "fp32")
    assert len(problems) == 1 and "greedy tokens differ" in problems[0]
    entry, problems = generation_entry(rec, ref, "int4")
    assert problems == [] and entry["greedy_agreement"] == 0.75 and entry["greedy_matches_torch"] is False
    assert compare_greedy([[1, 2]], ref)["greedy_mismatch"].startswith("the device returned tokens of shape [1, 2]")


@pytest.mark.ssh
@pytest.mark.onnx
def test_generate_over_ssh_on_a_device_python_without_torch(lm, sshd, tmp_path):
    profile = load_profile(str(sshd.profile("loop", tmp_path)))
    rec = benchmark(profile, lm.artifact("onnx"), generate=(PROMPT_LEN, NEW), prompts=lm.prompts)
    gen = rec["generation"]
    assert gen["valid"], gen["why"]
    assert generation_entry(gen, lm.ref, "fp32")[0]["greedy_matches_torch"] is True
    assert not list((tmp_path / "work").glob("job*"))   # the job folder (prompts included) is gone


@pytest.mark.scenario
@pytest.mark.slow
@pytest.mark.ssh
@pytest.mark.onnx
def test_generate_on_the_emulated_rpi5_matches_pytorch_token_for_token(lm, armboard, tmp_path):
    """The x86 host's cache graph decoded by onnxruntime on aarch64 (qemu) gives PyTorch's tokens."""
    light = {"warmup": 1, "min_iterations": 20, "min_seconds": 0.5, "max_seconds": 60.0}
    profile = load_profile(str(armboard.profile(tmp_path, bench=light, workdir=str(tmp_path / "work"))))
    rec = benchmark(profile, lm.artifact("onnx"), generate=(PROMPT_LEN, NEW), prompts=lm.prompts)
    gen = rec["generation"]
    assert rec["environment"]["machine"] == "aarch64"
    assert gen["valid"], gen["why"]
    assert generation_entry(gen, lm.ref, "fp32")[0]["greedy_matches_torch"] is True


def test_repeat_check_holds_the_time_to_first_token_to_the_same_tolerance():
    from targets.device import repeat_check

    lat = {"p50": 1.0, "p90": 1.0, "p99": 1.0, "mean": 1.0, "n": 30}
    slow = _gen_record()
    slow["ttft_ms"] = {**slow["ttft_ms"], "p50": 1.5, "p90": 2.0}
    runs = [{"latency_ms": lat, "valid": True, "invalid_reasons": [], "generation": g}
            for g in (_gen_record(), slow)]
    merged = repeat_check(runs, tolerance=0.1)
    assert merged["valid"] is True   # the latency medians agree
    gen = merged["generation"]
    assert gen["valid"] is False and gen["repeat"]["spread"] == 0.5 and "TTFT medians 1, 1.5 ms" in gen["why"]
    assert repeat_check(runs, tolerance=0.6)["generation"]["valid"] is True
