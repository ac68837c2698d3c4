"""What every stage shares: accuracy, footprint, the distillation loss and one explicit training loop.

Distill, prune fine-tuning and QAT all train "a student against an optional teacher", so they share ``train`` rather
than each growing its own loop; feature distillation plugs in as an extra loss with its own parameters (adapters).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


@torch.no_grad()
def accuracy(model: nn.Module | Callable[[torch.Tensor], torch.Tensor], dataset: Any, batch_size: int = 256) -> float:
    """Top-1 on ``dataset`` (items ``(input, label)``), as a fraction; the model is put in eval mode."""
    if isinstance(model, nn.Module):
        model.eval()
    correct = total = 0
    for x, y in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        correct += int((model(x).argmax(1) == y).sum())
        total += len(y)
    return correct / max(total, 1)


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


class _Indexed(Dataset):
    """Items ``(x, y, i)``: the index finds the sample's precomputed teacher logits."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[Any, Any, int]:
        x, y = self.dataset[i][0], self.dataset[i][1]
        return x, y, i


@torch.no_grad()
def teacher_logits(teacher: nn.Module, dataset: Any, batch_size: int = 256) -> torch.Tensor:
    teacher.eval()
    return torch.cat([teacher(x) for x, *_ in DataLoader(dataset, batch_size=batch_size, shuffle=False)])


def train(model: nn.Module, dataset: Any, *, epochs: int, lr: float, batch_size: int, seed: int,
          teacher: nn.Module | None = None, temperature: float = 4.0, alpha: float = 0.0,
          optimizer: str = "adamw", weight_decay: float = 1e-4,
          extra_loss: Callable[[], torch.Tensor] | None = None,
          extra_params: Iterable[nn.Parameter] = (), train_mode: bool = True) -> nn.Module:
    """The explicit loop: optimizer + per-step cosine schedule; KD from ``teacher`` when given (alpha > 0).

    The data has no augmentation, so the teacher's logits are computed once, not every epoch (the teacher forward
    is the largest cost of distillation); feature distillation (``extra_loss``, which reads what hooks captured
    during the teacher's forward) still runs the teacher per batch. ``train_mode=False`` keeps BatchNorm on its
    running statistics (QAT fine-tuning of a converged model).
    """
    if epochs <= 0:
        return model
    kd = teacher is not None and alpha > 0
    cached = teacher_logits(teacher, dataset) if kd and extra_loss is None and teacher is not None else None
    gen = seed_everything(seed)
    loader = DataLoader(_Indexed(dataset), batch_size=batch_size, shuffle=True, generator=gen,
                        drop_last=len(dataset) > batch_size)
    params = [p for p in model.parameters() if p.requires_grad] + list(extra_params)
    if optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay,
                                                     nesterov=True)
    else:
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs * len(loader)))
    if teacher is not None:
        teacher.eval()
    for _ in range(epochs):
        model.train(train_mode)
        for x, y, idx in loader:
            opt.zero_grad(set_to_none=True)
            logits = model(x)
            if kd:
                if cached is not None:
                    t_logits = cached[idx]
                else:
                    with torch.no_grad():
                        t_logits = teacher(x)
                loss = kd_loss(logits, t_logits, y, temperature, alpha)
            else:
                loss = F.cross_entropy(logits, y)
            if extra_loss is not None:
                loss = loss + extra_loss()
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()


def final_linear(model: nn.Module) -> list[nn.Module]:
    """The classifier (the last ``nn.Linear`` in registration order): its outputs are the classes, never pruned."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return linears[-1:]
