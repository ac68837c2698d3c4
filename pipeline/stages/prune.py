"""Dependency-aware structured (channel) pruning with Torch-Pruning, then fine-tuning (with KD when a teacher exists).

Torch-Pruning traces the model into a dependency graph, so channels coupled by residual adds, concatenations and
depthwise groups are removed together and the result is a physically smaller ``nn.Module`` (not a mask). Channel
counts are rounded to ``round_to`` because odd widths can make a pruned model *slower* on real kernels; the latency
guard measures exactly that with ONNX Runtime and warns loudly when it happens.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field
from torch import nn

from targets.schema import StrictModel


class PruneConfig(StrictModel):
    ratio: float = Field(default=0.5, ge=0, lt=1)                  # fraction of channels removed
    importance: Literal["l1", "l2", "taylor"] = "l2"
    global_pruning: bool = False                                   # rank channels across layers, not per layer
    iterative_steps: int = Field(default=1, ge=1, le=100)
    ignore: list[str] = Field(default_factory=list)                # module names left intact (+ the final Linear)
    round_to: int | None = Field(default=8, ge=1)                  # channel counts rounded to a multiple of this
    finetune_epochs: int = Field(default=3, ge=0)
    lr: float = Field(default=2e-3, gt=0)
    batch_size: int = Field(default=64, ge=1)
    seed: int = 0
    temperature: float = Field(default=4.0, gt=0)                  # KD from the teacher during fine-tuning
    alpha: float = Field(default=0.7, ge=0, le=1)
    latency_guard: bool = True                                     # warn when the pruned model is slower (ORT FP32)
    guard_iterations: int = Field(default=300, ge=10)
    guard_seconds: float = Field(default=2.0, ge=0)                # and at least this long per model
    guard_tolerance: float = Field(default=0.05, ge=0, le=1)       # slower by more than this fraction -> WARNING
    # attention: fraction of whole heads removed in every module exposing ``num_heads`` (pipeline/stages/heads.py)
    head_pruning_ratio: float = Field(default=0.0, ge=0, lt=1)


def _importance(name: str) -> Any:
    import torch_pruning as tp

    if name == "taylor":
        return tp.importance.GroupTaylorImportance()
    return tp.importance.GroupMagnitudeImportance(p=1 if name == "l1" else 2)


def structured_prune(model: nn.Module, example_inputs: torch.Tensor, *, ratio: float, importance: str = "l2",
                     global_pruning: bool = False, iterative_steps: int = 1, ignore: list[str] | None = None,
                     round_to: int | None = 8, grad_batches: Callable[[], list[tuple[torch.Tensor, torch.Tensor]]]
                     | None = None, head_ratio: float = 0.0) -> nn.Module:
    """Prune ``model`` in place (its modules shrink) and return it. ``taylor`` needs ``grad_batches`` (x, y) pairs.

    Attention modules (anything exposing ``num_heads`` with qkv projections) lose whole heads at ``head_ratio`` and
    keep their head size; without head pruning their heads keep their count and only the other channels shrink."""
    import torch_pruning as tp

    from pipeline.stages.common import final_linear
    from pipeline.stages.heads import num_heads_map, sync_heads

    if ratio <= 0 and head_ratio <= 0:
        return model
    modules = dict(model.named_modules())
    missing = [n for n in ignore or [] if n not in modules]
    if missing:
        from targets.errors import ConfigError

        raise ConfigError(f"stages.prune.ignore: no module named {missing} in the model",
                          hint=f"use names from model.named_modules(), e.g. {list(modules)[1:4]}")
    ignored = final_linear(model) + [modules[n] for n in ignore or []]
    model.eval()
    heads = num_heads_map(model)
    attention = {"num_heads": heads, "prune_num_heads": head_ratio > 0, "prune_head_dims": False,
                 "head_pruning_ratio": head_ratio} if heads else {}
    if ratio <= 0:
        # heads only: Torch-Pruning skips every scope when the channel ratio is 0, so give it the head ratio and
        # leave every layer but the q/k/v projections out (their groups can only lose whole heads)
        ignored += [m for m in model.modules() if m not in heads and not list(m.children())
                    and any(True for _ in m.parameters(recurse=False))]
        ratio = head_ratio
    try:
        pruner = tp.pruner.BasePruner(model, example_inputs, importance=_importance(importance),
                                      global_pruning=global_pruning, pruning_ratio=ratio,
                                      iterative_steps=iterative_steps, ignored_layers=ignored, round_to=round_to,
                                      **attention)
    except (ZeroDivisionError, IndexError) as exc:   # Torch-Pruning's tracer on a graph it cannot map
        from targets.errors import ConfigError

        raise ConfigError(f"stages.prune: Torch-Pruning could not map this model's channel dependencies "
                          f"({type(exc).__name__}: {exc}); known cause: a split/chunk right after a reshape, as in a "
                          f"ShuffleNet channel shuffle",
                          hint="leave the prune stage out for this model, or rewrite the split") from None
    for _ in range(iterative_steps):
        if importance == "taylor":
            if grad_batches is None:
                raise ValueError("taylor importance needs training batches for gradients")
            model.zero_grad()
            for x, y in grad_batches():
                nn.functional.cross_entropy(model(x), y).backward()
        pruner.step()
    if heads:
        sync_heads(model, pruner.num_heads)
    model.zero_grad(set_to_none=True)
    return model.eval()


# ------------------------------------------------------------------------------------------------ latency guard
def interleaved_onnx_latency(models: dict[str, nn.Module], example_inputs: torch.Tensor, iterations: int = 300,
                             threads: int = 2, rounds: int = 20, warmup: int = 10,
                             min_seconds: float = 0.0) -> dict[str, dict[str, float]]:
    """FP32 ONNX Runtime latency (batch 1) of each model, measured in interleaved rounds so drift hits all alike.

    Each model gets at least ``iterations`` timed runs and at least ``min_seconds`` of timing: tiny models run in
    tens of microseconds, where a few hundred samples are at the mercy of the scheduler.
    """
    import logging

    from targets.runner.bench import latency_stats, load

    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    x = example_inputs[:1].numpy().astype(np.float32)
    with tempfile.TemporaryDirectory(prefix="edgepipe-latency-") as tmp:
        sessions = {}
        for i, (name, m) in enumerate(models.items()):
            path = Path(tmp) / f"m{i}.onnx"
            program = torch.onnx.export(m.eval(), (example_inputs[:1],), dynamo=True, opset_version=18, verbose=False)
            program.save(str(path))
            sessions[name] = load(str(path), "onnx", threads=threads)
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


def onnx_latency_ratio(pruned: nn.Module, parent: nn.Module, example_inputs: torch.Tensor, iterations: int = 300,
                       threads: int = 2, min_seconds: float = 2.0) -> dict[str, float]:
    stats = interleaved_onnx_latency({"pruned": pruned, "parent": parent}, example_inputs, iterations, threads,
                                     min_seconds=min_seconds)
    return {"pruned_p50_ms": stats["pruned"]["p50"], "parent_p50_ms": stats["parent"]["p50"],
            "latency_ratio": round(stats["pruned"]["p50"] / stats["parent"]["p50"], 3), "n": stats["pruned"]["n"],
            "runtime": "onnxruntime FP32", "threads": threads}


def prune(model: nn.Module, example_inputs: torch.Tensor, data: dict[str, Any], cfg: PruneConfig,
          teacher: nn.Module | None = None, log: Callable[[str], None] = print) -> tuple[nn.Module, dict[str, Any]]:
    """Prune a copy of ``model``, fine-tune it, check its latency against the parent; returns (model, extra record)."""
    import copy

    from pipeline.stages.common import train

    parent = copy.deepcopy(model).eval()
    pruned = copy.deepcopy(model)

    def grad_batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
        loader = torch.utils.data.DataLoader(data["train"], batch_size=cfg.batch_size, shuffle=True,
                                             generator=torch.Generator().manual_seed(cfg.seed))
        return [b for _, b in zip(range(4), loader, strict=False)]

    structured_prune(pruned, example_inputs, ratio=cfg.ratio, importance=cfg.importance,
                     global_pruning=cfg.global_pruning, iterative_steps=cfg.iterative_steps, ignore=cfg.ignore,
                     round_to=cfg.round_to, grad_batches=grad_batches, head_ratio=cfg.head_pruning_ratio)
    train(pruned, data["train"], epochs=cfg.finetune_epochs, lr=cfg.lr, batch_size=cfg.batch_size, seed=cfg.seed,
          teacher=teacher, temperature=cfg.temperature, alpha=cfg.alpha if teacher is not None else 0.0)
    extra: dict[str, Any] = {"warnings": []}
    if cfg.latency_guard and (cfg.ratio > 0 or cfg.head_pruning_ratio > 0):
        guard = onnx_latency_ratio(pruned, parent, example_inputs, iterations=cfg.guard_iterations,
                                   min_seconds=cfg.guard_seconds)
        extra["latency_guard"] = guard
        if guard["latency_ratio"] > 1.0 + cfg.guard_tolerance:
            msg = (f"pruned model is SLOWER than its parent on ONNX Runtime FP32: {guard['pruned_p50_ms']:.4f} ms vs "
                   f"{guard['parent_p50_ms']:.4f} ms p50 ({guard['latency_ratio']:.2f}x, n={guard['n']}); "
                   f"try stages.prune.round_to: 8 (or 16) or a different ratio")
            log(f"WARNING: prune: {msg}")
            extra["warnings"].append(msg)
    return pruned.eval(), extra
