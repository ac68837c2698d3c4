"""Dependency-aware structured (channel) pruning with Torch-Pruning, then fine-tuning (with KD when a teacher exists).

Torch-Pruning traces the model into a dependency graph, so channels coupled by residual adds, concatenations and
depthwise groups are removed together and the result is a physically smaller ``nn.Module`` (not a mask). Channel
counts are rounded to ``round_to`` because odd widths can make a pruned model *slower* on real kernels; the latency
guard measures exactly that with ONNX Runtime and warns loudly when it happens.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import torch
from pydantic import Field
from torch import nn

from pipeline.stages.train import TrainOverride, TrainSettings
from targets.schema import StrictModel


class PruneConfig(StrictModel):
    ratio: float = Field(default=0.5, ge=0, lt=1)                  # fraction of channels removed
    importance: Literal["l1", "l2", "taylor"] = "l2"
    global_pruning: bool = False                                   # rank channels across layers, not per layer
    iterative_steps: int = Field(default=1, ge=1, le=100)
    ignore: list[str] = Field(default_factory=list)                # module paths left intact (+ every output layer)
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
    train: TrainOverride | None = None                             # this stage's device/amp/... overrides
    allow_gate_miss: bool = False    # go on (loud warning) when this stage's metric falls past the gate
    # attention: fraction of whole heads removed in every module exposing ``num_heads`` (pipeline/stages/heads.py)
    head_pruning_ratio: float = Field(default=0.0, ge=0, lt=1)


def _importance(name: str) -> Any:
    import torch_pruning as tp

    if name == "taylor":
        return tp.importance.GroupTaylorImportance()
    return tp.importance.GroupMagnitudeImportance(p=1 if name == "l1" else 2)


class _Where:
    """Which module is running (forward pre/post hooks), so a failure names the layer instead of a shape error."""

    def __init__(self, model: nn.Module) -> None:
        self.stack: list[str] = []
        names = {m: n for n, m in model.named_modules()}
        self.handles = []
        def enter(name: str) -> Callable[..., None]:
            def hook(_m: nn.Module, _i: Any) -> None:
                self.stack.append(name)
            return hook

        def leave(_m: nn.Module, _i: Any, _o: Any) -> None:   # a hook must return None (else it replaces outputs)
            if self.stack:
                self.stack.pop()

        for m, n in names.items():
            self.handles.append(m.register_forward_pre_hook(enter(n)))
            self.handles.append(m.register_forward_hook(leave))

    def failing(self) -> str:
        return (self.stack[-1] or "<root>") if self.stack else "<root>"

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def _fail(model: nn.Module, where: str, what: str, exc: BaseException) -> Exception:
    from targets.errors import ConfigError

    kind = type(dict(model.named_modules()).get(where, model)).__name__ if where != "<root>" else type(model).__name__
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
    return ConfigError(f"stages.prune: {what} in module {where!r} ({kind}): {text}",
                       hint=f"add {where!r} to stages.prune.ignore (or make its forward read sizes from its layers "
                            "instead of hard-coded widths)")


def auto_ignored(model: nn.Module, example: tuple[torch.Tensor, ...]) -> list[nn.Module]:
    """Layers Torch-Pruning must not shrink, found without the user naming them:

    * layers whose weights are all frozen (``requires_grad=False``): fixed arithmetic such as YOLOv8's DFL
      integral (its input channels are the 16 distance bins);
    * the layer producing a tensor that is ``split``/``chunk``-ed when two or more of the pieces meet again in one
      concat (YOLOv8's C2f): Torch-Pruning 1.6 mis-indexes such groups (IndexError), which is why its own YOLOv8
      example rewrites C2f as ``C2f_v2``. Only that layer keeps its width; the bottlenecks and the block's output
      conv around it are pruned as usual.
    """
    import torch_pruning as tp

    from pipeline.stages.common import outputs_list

    prunable = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d)
    found = [m for m in model.modules() if isinstance(m, prunable)
             and list(m.parameters()) and not any(p.requires_grad for p in m.parameters())]
    try:
        dg = tp.DependencyGraph().build_dependency(model, example_inputs=example,
                                                   output_transform=lambda out: sum(o.float().sum()
                                                                                    for o in outputs_list(out)))
    except Exception:  # noqa: BLE001 - untraceable: structured_prune reports it with the failing layer
        return found
    for node in dg.module2node.values():
        if node.type != tp.ops.OPTYPE.SPLIT:
            continue
        concats = [o for o in node.outputs if o.type == tp.ops.OPTYPE.CONCAT]
        if len(concats) == len({id(c) for c in concats}):   # no concat takes two pieces of this split
            continue
        stack, seen = list(node.inputs), set()
        while stack:                                         # back through BN / activations to the layer
            cur = stack.pop()
            if id(cur) in seen:
                continue
            seen.add(id(cur))
            if isinstance(cur.module, prunable):
                if cur.module not in found:
                    found.append(cur.module)
                continue
            if cur.type in (tp.ops.OPTYPE.BN, tp.ops.OPTYPE.ELEMENTWISE):
                stack += list(cur.inputs)
    return found


def structured_prune(model: nn.Module, example_inputs: torch.Tensor | tuple[torch.Tensor, ...], *, ratio: float,
                     importance: str = "l2", global_pruning: bool = False, iterative_steps: int = 1,
                     ignore: list[str] | None = None, round_to: int | None = 8,
                     grad_batches: Callable[[], list[tuple[Any, Any]]] | None = None, head_ratio: float = 0.0,
                     grad_loss: Callable[[Any, Any], torch.Tensor] | None = None) -> nn.Module:
    """Prune ``model`` in place (its modules shrink) and return it. Every output layer is protected, attention
    bookkeeping follows the pruned width, and a forward check afterwards names any module that no longer fits.
    ``taylor`` needs ``grad_batches`` (inputs, targets) pairs and ``grad_loss`` (model outputs, targets) -> loss.

    Attention modules (anything exposing ``num_heads`` with q/k/v or qkv projections) lose whole heads at
    ``head_ratio`` and keep their head size; without head pruning they keep their head count and Torch-Pruning
    narrows every head alike, so the width always divides by the head count."""
    import torch_pruning as tp

    from pipeline.stages.common import as_args, output_layers, outputs_list
    from pipeline.stages.heads import num_heads_map, sync_heads

    if ratio <= 0 and head_ratio <= 0:
        return model
    example = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    modules = dict(model.named_modules())
    missing = [n for n in ignore or [] if n not in modules]
    if missing:
        from targets.errors import ConfigError

        raise ConfigError(f"stages.prune.ignore: no module named {missing} in the model",
                          hint=f"use names from model.named_modules(), e.g. {list(modules)[1:4]}")
    model.eval()
    with torch.no_grad():
        before = [tuple(o.shape) for o in outputs_list(model(*example))]
    auto = auto_ignored(model, example)
    ignored = output_layers(model, example) + [modules[n] for n in ignore or []] + auto
    heads = num_heads_map(model)
    attention = {"num_heads": heads, "prune_num_heads": head_ratio > 0, "prune_head_dims": head_ratio <= 0,
                 "head_pruning_ratio": head_ratio} if heads else {}
    if ratio <= 0:
        # heads only: Torch-Pruning skips every scope when the channel ratio is 0, so give it the head ratio and
        # leave every layer but the q/k/v projections out (their groups can only lose whole heads)
        ignored += [m for m in model.modules() if m not in heads and not list(m.children())
                    and any(True for _ in m.parameters(recurse=False))]
        ratio = head_ratio
    where = _Where(model)
    try:
        pruner = tp.pruner.BasePruner(model, example, importance=_importance(importance),
                                      global_pruning=global_pruning, pruning_ratio=ratio,
                                      iterative_steps=iterative_steps, ignored_layers=ignored, round_to=round_to,
                                      output_transform=lambda out: sum(o.float().sum() for o in outputs_list(out)),
                                      **attention)
    except (ZeroDivisionError, IndexError) as exc:   # Torch-Pruning's tracer on a graph it cannot map
        from targets.errors import ConfigError

        raise ConfigError(f"stages.prune: Torch-Pruning could not map this model's channel dependencies "
                          f"({type(exc).__name__}: {exc}); known cause: a split/chunk right after a reshape, as in a "
                          f"ShuffleNet channel shuffle",
                          hint="rewrite the shuffle + split as strided slices x[:, 0::2], x[:, 1::2] "
                               "(examples/inspect), or leave the prune stage out") from None
    except Exception as exc:  # noqa: BLE001 - tracing runs the model: name the layer that broke
        raise _fail(model, where.failing(), "cannot trace the model for pruning", exc) from None
    finally:
        where.close()
    for _ in range(iterative_steps):
        if importance == "taylor":
            if grad_batches is None:
                raise ValueError("taylor importance needs training batches for gradients")
            model.zero_grad()
            for x, y in grad_batches():
                outs = outputs_list(model(*as_args(x)))
                loss = grad_loss(outs, y) if grad_loss else nn.functional.cross_entropy(outs[0], y)
                loss.backward()
        try:
            pruner.step()
        except IndexError as exc:   # Torch-Pruning mis-indexed a channel group it traced (slices across a concat)
            from targets.errors import ConfigError

            raise ConfigError(f"stages.prune: Torch-Pruning mis-indexed a coupled channel group while pruning "
                              f"({exc}); known cause: channels that cross a concat into a strided slice or chunk",
                              hint="add the convs whose outputs feed that concat to stages.prune.ignore "
                                   "(examples/inspect/recipe.yaml)") from None
        if heads:
            sync_heads(model, pruner.num_heads)   # the forward between steps reads the new head counts
    model.zero_grad(set_to_none=True)
    model.eval()
    where = _Where(model)
    try:
        with torch.no_grad():
            after = [tuple(o.shape) for o in outputs_list(model(*example))]
    except Exception as exc:  # noqa: BLE001 - a module the pruner could not follow (hard-coded widths)
        raise _fail(model, where.failing(), "the pruned model no longer runs", exc) from None
    finally:
        where.close()
    if after != before:
        from targets.errors import ConfigError

        raise ConfigError(f"stages.prune: pruning changed the model's output shapes from {before} to {after}",
                          hint="name the layer that produces the changed output in stages.prune.ignore")
    return model


Timing = Callable[..., dict[str, Any]]   # (pruned, parent, example_inputs, iterations=, min_seconds=) -> ratio


def prune(model: nn.Module, example_inputs: torch.Tensor | tuple[torch.Tensor, ...], data: dict[str, Any],
          cfg: PruneConfig, teacher: nn.Module | None = None, log: Callable[[str], None] = print,
          objective: Any = None, timing: Timing | None = None,
          settings: TrainSettings | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Prune a copy of ``model``, fine-tune it with the task's loss, check its latency against the parent with the
    given ``timing`` function (the orchestrator hands one in; none means no guard); returns (model, extra record)."""
    import copy

    from pipeline.stages.common import Objective, collate, task_cross_entropy, train
    from pipeline.stages.distributed import is_main

    obj = objective or Objective()
    parent = copy.deepcopy(model).eval()
    pruned = copy.deepcopy(model)

    def grad_batches() -> list[tuple[Any, Any]]:
        loader = torch.utils.data.DataLoader(data["train"], batch_size=cfg.batch_size, shuffle=True,
                                             generator=torch.Generator().manual_seed(cfg.seed), collate_fn=collate)
        return [b for _, b in zip(range(4), loader, strict=False)]

    def grad_loss(outs: list[torch.Tensor], y: Any) -> torch.Tensor:
        """Taylor importance needs a loss: the task's own where it has labels, else the outputs' energy."""
        if obj.kind == "logits":
            return task_cross_entropy(outs[0], y)
        if obj.kind == "user" and obj.user_loss is not None:
            return obj.user_loss(outs, None, y)
        return sum(o.float().pow(2).mean() for o in outs)

    structured_prune(pruned, example_inputs, ratio=cfg.ratio, importance=cfg.importance,
                     global_pruning=cfg.global_pruning, iterative_steps=cfg.iterative_steps, ignore=cfg.ignore,
                     round_to=cfg.round_to, grad_batches=grad_batches, head_ratio=cfg.head_pruning_ratio,
                     grad_loss=grad_loss)
    train(pruned, data["train"], epochs=cfg.finetune_epochs, lr=cfg.lr, batch_size=cfg.batch_size, seed=cfg.seed,
          teacher=teacher, temperature=cfg.temperature, alpha=cfg.alpha if teacher is not None else 0.0,
          objective=obj, settings=settings, name="prune fine-tune", log=log)
    extra: dict[str, Any] = {"warnings": []}
    if cfg.latency_guard and (cfg.ratio > 0 or cfg.head_pruning_ratio > 0) and timing is not None and is_main():
        guard = timing(pruned, parent, example_inputs, iterations=cfg.guard_iterations,
                       min_seconds=cfg.guard_seconds)
        extra["latency_guard"] = guard
        if _slower(guard, cfg.guard_tolerance):
            msg = (f"pruned model is SLOWER than its parent on ONNX Runtime FP32: {guard['pruned_p50_ms']:.4f} ms vs "
                   f"{guard['parent_p50_ms']:.4f} ms p50 ({guard['latency_ratio']:.2f}x, n={guard['n']}, beyond the "
                   f"measured spread); try stages.prune.round_to: 8 (or 16) or a different ratio")
            log(f"WARNING: prune: {msg}")
            extra["warnings"].append(msg)
        elif guard.get("no_faster", guard["latency_ratio"] >= 1.0):
            log(f"prune: the pruned model is no faster than its parent on ONNX Runtime FP32 "
                f"({guard['pruned_p50_ms']:.4f} vs {guard['parent_p50_ms']:.4f} ms p50, inside the measured spread)")
    return pruned.eval(), extra


def _slower(guard: dict[str, Any], tolerance: float) -> bool:
    """SLOWER needs both: beyond ``guard_tolerance`` and beyond the measured spread (the timing's ``slower``: the
    p50 intervals do not overlap). A timing function that reports no spread is judged by the tolerance alone."""
    return guard["latency_ratio"] > 1.0 + tolerance and bool(guard.get("slower", True))
