"""The prune stage's latency guard: FP32 ONNX Runtime latency of a pruned model against its parent.

It lives outside ``pipeline/stages`` on purpose: the stages take a timing function and never import the runner; the
orchestrator hands this one in.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch
from torch import nn


def interleaved_onnx_latency(models: dict[str, nn.Module], example_inputs: torch.Tensor | tuple[torch.Tensor, ...],
                             iterations: int = 300,
                             threads: int = 2, rounds: int = 20, warmup: int = 10,
                             min_seconds: float = 0.0) -> dict[str, dict[str, float]]:
    """FP32 ONNX Runtime latency (batch 1) of each model, measured in interleaved rounds so drift hits all alike.

    Each model gets at least ``iterations`` timed runs and at least ``min_seconds`` of timing: tiny models run in
    tens of microseconds, where a few hundred samples are at the mercy of the scheduler.
    """
    import logging

    from targets.runner.bench import latency_stats, load

    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    example = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    example = tuple(t[:1] for t in example)
    with tempfile.TemporaryDirectory(prefix="edgepipe-latency-") as tmp:
        sessions = {}
        for i, (name, m) in enumerate(models.items()):
            path = Path(tmp) / f"m{i}.onnx"
            names = [f"input{i}" for i in range(len(example))]
            program = torch.onnx.export(m.eval(), example, dynamo=True, opset_version=18, verbose=False,
                                        input_names=names)
            program.save(str(path))
            sessions[name] = load(str(path), "onnx", threads=threads)
        x = {f"input{i}": t.numpy() for i, t in enumerate(example)}
        for s in sessions.values():
            for _ in range(warmup):
                s.run(x)
        samples: dict[str, list[float]] = {name: [] for name in sessions}
        per_round = max(1, -(-iterations // rounds))   # at least `iterations` in all
        for _ in range(rounds):
            for name, s in sessions.items():
                done, start = 0, time.perf_counter()
                while done < per_round or time.perf_counter() - start < min_seconds / rounds:
                    t0 = time.perf_counter_ns()
                    s.run(x)
                    samples[name].append((time.perf_counter_ns() - t0) / 1e6)
                    done += 1
    return {name: latency_stats(v) for name, v in samples.items()}


def onnx_latency_ratio(pruned: nn.Module, parent: nn.Module, example_inputs: torch.Tensor | tuple[torch.Tensor, ...],
                       iterations: int = 300,
                       threads: int = 2, min_seconds: float = 2.0) -> dict[str, float]:
    """The prune guard's figures: both p50s, their ratio, and whether the pruned model is slower beyond the measured
    spread (``slower``: the p50 95% intervals do not overlap, targets/noise.py) or merely no faster (``no_faster``)."""
    from targets.noise import clearly_faster, clearly_slower, p50_interval

    stats = interleaved_onnx_latency({"pruned": pruned, "parent": parent}, example_inputs, iterations, threads,
                                     min_seconds=min_seconds)
    mine, theirs = p50_interval(stats["pruned"]), p50_interval(stats["parent"])
    slower = clearly_slower(mine, theirs)
    return {"pruned_p50_ms": stats["pruned"]["p50"], "parent_p50_ms": stats["parent"]["p50"],
            "latency_ratio": round(stats["pruned"]["p50"] / stats["parent"]["p50"], 3), "n": stats["pruned"]["n"],
            "pruned_p50_interval_ms": list(mine or ()), "parent_p50_interval_ms": list(theirs or ()),
            "slower": slower, "no_faster": not slower and not clearly_faster(mine, theirs),
            "runtime": "onnxruntime FP32", "threads": threads}


