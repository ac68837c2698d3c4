"""Greedy generation on the runner: TTFT, decode tokens/s and peak memory of a decoder's cache graph, ONNX and
OpenVINO fp32, with the token-for-token check against PyTorch.

The decoder is the tests' tiny one (tests/targets/_decoder.py: 2 layers, width 32, trained seconds on the digits
labels); the rules are the local profile's unless given. Prints the figures with the CPU and the load average.

    PYTHONPATH=$PWD python benchmarks/generation.py [--prompt-len 16] [--new-tokens 32] [--seconds 1]
"""

from __future__ import annotations

import argparse
import importlib
import os
import tempfile
from pathlib import Path

import torch

from benchmarks.host import cpu_model
from targets.device import benchmark
from targets.export_config import ExportConfig
from targets.generate import generation_entry, greedy_torch
from targets.profiles import load_profile
from tests.targets._decoder import prompts, tiny_decoder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompt-len", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=None, help="bench.min_seconds (default: the local profile's)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(1)
    model = tiny_decoder()
    ids = prompts(args.prompts, args.prompt_len)
    ref = greedy_torch(model, ids, args.new_tokens)
    profile = load_profile("local")
    profile.runtime.threads = args.threads
    if args.seconds is not None:
        profile.bench.min_seconds = args.seconds
    print(f"CPU {cpu_model()}, load {os.getloadavg()[0]:.2f}, threads {args.threads}, rules "
          f"{profile.bench.model_dump(include={'warmup', 'min_iterations', 'min_seconds', 'max_seconds'})}")
    print(f"prompt_len {args.prompt_len}, new_tokens {args.new_tokens}, {args.prompts} prompts")
    with tempfile.TemporaryDirectory(prefix="generation-bench-") as tmp:
        profile.workdir = str(Path(tmp) / "work")
        for family in ("onnx", "openvino"):
            export = importlib.import_module(f"targets.export_{family}").export
            cfg = ExportConfig(name="lm", task="lm", input_names=["input_ids"], output_names=["logits"])
            art = export(model, (torch.zeros(1, 16, dtype=torch.long),), None, cfg, Path(tmp) / family)
            rec = benchmark(profile, art, generate=(args.prompt_len, args.new_tokens), prompts=ids)
            entry, problems = generation_entry(rec["generation"], ref, "fp32")
            t, r = entry["ttft_ms"], entry["decode_tokens_per_s"]
            print(f"{family}-fp32: TTFT p50 {t['p50']:.3f} ms p90 {t['p90']:.3f} (n {t['n']}), decode "
                  f"{r['p50']:.0f} tokens/s p90 {r['p90']:.0f}, peak RSS {entry['peak_rss_mb']:.0f} MiB, valid "
                  f"{entry['valid']} {entry['why']}, greedy matches PyTorch {entry['greedy_matches_torch']}"
                  + (f" ({'; '.join(problems)})" if problems else ""))
    print(f"load after {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
