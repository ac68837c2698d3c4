"""What every stage shares: accuracy, footprint, the distillation loss and one explicit training loop.

Distill, prune fine-tuning and QAT all train "a student against an optional teacher", so they share ``train`` rather
than each growing its own loop; feature distillation plugs in as an extra loss with its own parameters (adapters).
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.stages.train import CPU_SETTINGS, LossFn, TrainSettings, evaluate_top1, fit


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def accuracy(model: nn.Module | Callable[[torch.Tensor], torch.Tensor], dataset: Any, batch_size: int = 256,
             settings: TrainSettings | None = None) -> float:
    """Top-1 on ``dataset`` (items ``(input, label)``), as a fraction, in batches on the settings' device (CPU when
    absent); the model is put in eval mode and left where it was."""
    return evaluate_top1(model, dataset, settings, batch_size=settings.eval_batch_size if settings else batch_size)


def footprint(model: nn.Module, example_inputs: torch.Tensor) -> tuple[int, int]:
    """(params, MACs) as Torch-Pruning counts them, so every stage record is comparable with the baseline."""
    import torch_pruning as tp

    was_training = model.training
    model.eval()
    macs, params = tp.utils.count_ops_and_params(model, example_inputs)
    model.train(was_training)
    return int(params), int(macs)


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
            temperature: float, alpha: float) -> torch.Tensor:
    """Hinton et al.: alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE(labels).

    The T^2 factor keeps the soft term's gradient magnitude independent of the temperature.
    """
    hard = F.cross_entropy(student_logits, labels)
    if alpha <= 0:
        return hard
    t = temperature
    soft = F.kl_div(F.log_softmax(student_logits / t, dim=1), F.log_softmax(teacher_logits / t, dim=1),
                    reduction="batchmean", log_target=True) * (t * t)
    return alpha * soft + (1 - alpha) * hard


def train(model: nn.Module, dataset: Any, *, epochs: int, lr: float, batch_size: int, seed: int,
          teacher: nn.Module | None = None, temperature: float = 4.0, alpha: float = 0.0,
          optimizer: str = "adamw", weight_decay: float = 1e-4,
          extra_loss: Callable[[], torch.Tensor] | None = None,
          extra_params: Iterable[nn.Parameter] = (), train_mode: bool = True,
          settings: TrainSettings | None = None, extra_modules: Iterable[nn.Module] = (),
          loss: LossFn | None = None, name: str = "train", log: Callable[[str], None] | None = None) -> nn.Module:
    """Optimizer + per-step cosine schedule + KD from ``teacher`` when given (alpha > 0), on the engine of train.py.

    ``loss(outputs, teacher_outputs, targets)`` replaces the default (Hinton KD, or cross-entropy without a
    teacher). ``settings`` say where and how (device, AMP, workers; CPU fp32 when absent) and ``batch_size`` wins
    over theirs. The teacher's outputs are computed once when the data is deterministic, else per batch; feature
    distillation (``extra_loss``, which reads what hooks captured during the teacher's forward) always runs the
    teacher per batch. ``train_mode=False`` keeps BatchNorm on its running statistics (QAT fine-tuning).
    """
    kd = teacher is not None and alpha > 0
    if loss is None:
        loss = ((lambda out, t_out, y: kd_loss(out, t_out, y, temperature, alpha)) if kd
                else (lambda out, _t, y: F.cross_entropy(out, y)))
    settings = dataclasses.replace(settings or CPU_SETTINGS, batch_size=batch_size)
    extra = list(extra_params)

    def make_optimizer(params: list[nn.Parameter]) -> torch.optim.Optimizer:
        params = params + [p for p in extra if all(p is not q for q in params)]
        if optimizer == "sgd":
            return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay, nesterov=True)
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)

    return fit(model, dataset, loss, epochs=epochs, make_optimizer=make_optimizer, settings=settings, seed=seed,
               teacher=teacher if kd or extra_loss is not None else None, extra_loss=extra_loss,
               extra_modules=extra_modules, train_mode=train_mode, name=name, log=log)


def final_linear(model: nn.Module) -> list[nn.Module]:
    """The classifier (the last ``nn.Linear`` in registration order): its outputs are the classes, never pruned."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return linears[-1:]
