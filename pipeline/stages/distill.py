"""Knowledge distillation: a student learns from the teacher's softened logits (and optionally its features).

The student is a factory from the recipe, or, without one, the teacher itself pruned to ``width`` (a slimmer copy
that keeps the teacher's best channels) and then recovered by distillation. Feature distillation matches named
intermediate outputs through a learned 1x1-conv / linear adapter when the widths differ.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from pipeline.stages.train import TrainOverride, TrainSettings
from targets.schema import StrictModel


class FeaturePair(StrictModel):
    student: str = Field(min_length=1)          # module name in the student, e.g. features.2
    teacher: str = Field(min_length=1)          # module name in the teacher
    weight: float = Field(default=1.0, gt=0)


class DistillConfig(StrictModel):
    student: str | None = Field(default=None, pattern=r"^[\w.]+:[\w.]+$")  # "module:callable"; None = pruned teacher
    width: float = Field(default=0.5, gt=0, le=1)                          # used only without `student`
    epochs: int = Field(default=8, ge=0)
    temperature: float = Field(default=4.0, gt=0)
    alpha: float = Field(default=0.7, ge=0, le=1)                          # weight of the soft (teacher) loss
    lr: float = Field(default=3e-3, gt=0)
    batch_size: int = Field(default=64, ge=1)
    optimizer: str = Field(default="adamw", pattern=r"^(adamw|sgd)$")
    weight_decay: float = Field(default=1e-4, ge=0)
    warmup: float = Field(default=0.0, ge=0, lt=1)                         # fraction of steps: linear LR ramp
    grad_clip: float | None = Field(default=None, gt=0)                    # max global gradient norm
    seed: int = 0
    features: list[FeaturePair] = Field(default_factory=list)
    train: TrainOverride | None = None                                     # this stage's device/amp/... overrides
    allow_gate_miss: bool = False    # go on (loud warning) when this stage's metric falls past the gate


class _Capture:
    """Forward hooks that keep the last output of a named module (for feature distillation)."""

    def __init__(self, model: nn.Module, names: list[str], role: str) -> None:
        modules = dict(model.named_modules())
        missing = [n for n in names if n not in modules]
        if missing:
            from targets.errors import ConfigError

            raise ConfigError(f"stages.distill.features: the {role} has no module named {missing}",
                              hint=f"use names from {role}.named_modules(), e.g. {list(modules)[1:5]}")
        self.out: dict[str, torch.Tensor] = {}
        self.handles = [modules[n].register_forward_hook(self._hook(n)) for n in names]

    def _hook(self, name: str) -> Callable[..., None]:
        def hook(_m: nn.Module, _i: Any, out: torch.Tensor) -> None:
            self.out[name] = out
        return hook

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def _adapter(s: torch.Tensor, t: torch.Tensor) -> nn.Module:
    if s.dim() == 4:
        return nn.Conv2d(s.shape[1], t.shape[1], 1, bias=False) if s.shape[1] != t.shape[1] else nn.Identity()
    return nn.Linear(s.shape[-1], t.shape[-1], bias=False) if s.shape[-1] != t.shape[-1] else nn.Identity()


def _match(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    if s.dim() == 4 and s.shape[-2:] != t.shape[-2:]:
        return F.adaptive_avg_pool2d(s, t.shape[-2:])
    return s


def make_student(teacher: nn.Module, example_inputs: torch.Tensor | tuple[torch.Tensor, ...], cfg: DistillConfig,
                 factory: Callable[[], nn.Module] | None) -> nn.Module:
    """The student architecture: the recipe's factory, or a copy of the teacher pruned to ``cfg.width``."""
    import copy

    from pipeline.stages.prune import structured_prune

    if factory is not None:
        return factory()
    return structured_prune(copy.deepcopy(teacher), example_inputs, ratio=1 - cfg.width, importance="l2",
                            round_to=None if cfg.width == 1 else 4)


def distill(teacher: nn.Module, student: nn.Module, data: dict[str, Any], cfg: DistillConfig,
            example_inputs: torch.Tensor | tuple[torch.Tensor, ...], settings: TrainSettings | None = None,
            log: Callable[[str], None] | None = None, objective: Any = None) -> nn.Module:
    """Train ``student`` in place with the task's distillation loss (logit KD for classification, output matching
    on every output otherwise, or the user's loss) plus optional feature distillation from the frozen ``teacher``."""
    from pipeline.stages.common import train

    example = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    teacher.eval()
    frozen = [p for p in teacher.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    pairs = cfg.features
    s_cap = _Capture(student, [p.student for p in pairs], "student") if pairs else None
    t_cap = _Capture(teacher, [p.teacher for p in pairs], "teacher") if pairs else None
    adapters = nn.ModuleList()
    try:
        if pairs:
            assert s_cap is not None and t_cap is not None
            with torch.no_grad():
                student.eval()
                student(*example)
                teacher(*example)
            for p in pairs:
                adapters.append(_adapter(s_cap.out[p.student], t_cap.out[p.teacher]))

        def feature_loss() -> torch.Tensor:
            assert s_cap is not None and t_cap is not None
            total = torch.zeros((), device=s_cap.out[pairs[0].student].device)
            for p, adapter in zip(pairs, adapters, strict=True):
                s, t = s_cap.out[p.student], t_cap.out[p.teacher].detach()
                total = total + p.weight * F.mse_loss(_match(adapter(s), t), t)
            return total

        train(student, data["train"], epochs=cfg.epochs, lr=cfg.lr, batch_size=cfg.batch_size, seed=cfg.seed,
              teacher=teacher, temperature=cfg.temperature, alpha=cfg.alpha, optimizer=cfg.optimizer,
              weight_decay=cfg.weight_decay, extra_loss=feature_loss if pairs else None,
              extra_modules=[adapters], settings=settings, name="distill", log=log, objective=objective,
              warmup=cfg.warmup, grad_clip=cfg.grad_clip)
    finally:
        for cap in (s_cap, t_cap):
            if cap is not None:
                cap.close()
        for p in frozen:
            p.requires_grad_(True)
    return student.eval()
