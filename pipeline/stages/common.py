"""What every stage shares: model inputs and outputs of any shape, accuracy, footprint, the task's loss and one
explicit training loop.

Distill, prune fine-tuning and QAT all train "a student against an optional teacher", so they share ``train`` rather
than each growing its own loop; feature distillation plugs in as an extra loss with its own parameters (adapters).

A model may take several inputs (a tensor, a tuple, or a dict keyed by input name in the data) and return several
outputs (a tensor, a tuple/list, or a dict); ``as_args`` and ``outputs_list`` turn both into one ordered form, so no
stage assumes one image in and one logits tensor out. The loss follows the task (``Objective``): logit KD for
classification, output-matching KD on every output otherwise, or the user's own loss.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, default_collate


# ------------------------------------------------------------------------------------------------ inputs, outputs
def as_args(inputs: Any, names: Sequence[str] | None = None) -> tuple[torch.Tensor, ...]:
    """A data item's (or batch's) inputs as the positional arguments of ``forward``: a tensor, a tuple/list, or a
    dict keyed by input name (ordered by ``names``)."""
    if isinstance(inputs, torch.Tensor):
        return (inputs,)
    if isinstance(inputs, dict):
        keys = list(names) if names else list(inputs)
        return tuple(inputs[k] for k in keys)
    return tuple(inputs)


def outputs_list(out: Any) -> list[torch.Tensor]:
    """Whatever ``forward`` returned, as a list of tensors in order (dict values in insertion order)."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        return [v for v in out.values()]
    if isinstance(out, (tuple, list)):
        flat: list[torch.Tensor] = []
        for o in out:
            flat += outputs_list(o)
        return flat
    raise TypeError(f"the model returned {type(out).__name__}; expected a tensor, a tuple/list or a dict of tensors")


def collate(batch: list[Any]) -> Any:
    """Inputs are stacked; targets are stacked when they can be (labels, vectors), else kept as a list (boxes)."""
    inputs = default_collate([b[0] for b in batch])
    targets = [b[1] for b in batch]
    try:
        stacked: Any = default_collate(targets)
    except (TypeError, RuntimeError):
        stacked = targets
    return (inputs, stacked, *[default_collate([b[i] for b in batch]) for i in range(2, len(batch[0]))])


def example_from(dataset: Any, names: Sequence[str] | None = None) -> tuple[torch.Tensor, ...]:
    """A batch-of-one example taken from the data (token ids stay valid ids, masks stay masks): what the stages
    trace, count and export with -- never random values, which break embeddings and index arithmetic."""
    return tuple(t.unsqueeze(0) if isinstance(t, torch.Tensor) else torch.as_tensor(t).unsqueeze(0)
                 for t in as_args(dataset[0][0], names))


@dataclass
class Objective:
    """The training loss, chosen from the task (no recipe in here: the orchestrator resolves it).

    ``kind``: ``logits`` (Hinton KD on output 0 + cross-entropy on integer labels), ``outputs`` (KD matching every
    output of the teacher, ``output_loss`` mse or cosine, weighted), or ``user``: ``user_loss(student_outputs,
    teacher_outputs_or_None, targets) -> scalar tensor``.
    """

    kind: str = "logits"
    input_names: list[str] | None = None
    output_loss: str = "mse"
    output_weights: list[float] | None = None
    user_loss: Callable[..., torch.Tensor] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def needs_teacher(self) -> bool:
        return self.kind == "outputs"

    def loss(self, student: list[torch.Tensor], teacher: list[torch.Tensor] | None, targets: Any,
             temperature: float, alpha: float) -> torch.Tensor:
        if self.kind == "user":
            assert self.user_loss is not None
            return self.user_loss(student, teacher, targets)
        if self.kind == "logits":
            if teacher is None or alpha <= 0:
                return F.cross_entropy(student[0], targets)
            return kd_loss(student[0], teacher[0], targets, temperature, alpha)
        if teacher is None:
            raise ValueError("output-matching KD needs the teacher's outputs")
        weights = self.output_weights or [1.0] * len(student)
        total = torch.zeros(())
        for w, s, t in zip(weights, student, teacher, strict=True):
            s, t = s.float(), t.float().detach()
            if self.output_loss == "cosine":
                term = 1 - F.cosine_similarity(s.reshape(len(s), -1), t.reshape(len(t), -1), dim=1).mean()
            else:
                term = F.mse_loss(s, t)
            total = total + w * term
        return total


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


@torch.no_grad()
def accuracy(model: nn.Module | Callable[..., Any], dataset: Any, batch_size: int = 256,
             input_names: Sequence[str] | None = None) -> float:
    """Top-1 of the first output on ``dataset`` (items ``(inputs, label)``), as a fraction; eval mode. The one
    top-1 helper: the task metric (``pipeline.metrics``) is what runs report; this is the stages' quick check."""
    if isinstance(model, nn.Module):
        model.eval()
    correct = total = 0
    for x, y in DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate):
        logits = outputs_list(model(*as_args(x, input_names)))[0]
        correct += int((logits.reshape(len(logits), -1).argmax(1) == y).sum())
        total += len(y)
    return correct / max(total, 1)


def footprint(model: nn.Module, example_inputs: torch.Tensor | tuple[torch.Tensor, ...]) -> tuple[int, int]:
    """(params, MACs) as Torch-Pruning counts them, so every stage record is comparable with the baseline. The one
    MACs/params helper: always (params, MACs); params are counted directly when the model cannot be traced."""
    import torch_pruning as tp

    params = sum(p.numel() for p in model.parameters())
    was_training = model.training
    model.eval()
    try:
        macs, _ = tp.utils.count_ops_and_params(model, example_inputs)
    except Exception:  # noqa: BLE001 - exported programs and exotic modules may not be countable
        macs = 0
    finally:
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
    """Items ``(x, y, i)``: the index finds the sample's precomputed teacher outputs."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[Any, Any, int]:
        x, y = self.dataset[i][0], self.dataset[i][1]
        return x, y, i


@torch.no_grad()
def teacher_logits(teacher: nn.Module, dataset: Any, batch_size: int = 256,
                   input_names: Sequence[str] | None = None) -> list[torch.Tensor]:
    """Every output of the teacher on the whole dataset (one tensor per output, samples first)."""
    teacher.eval()
    outs = [outputs_list(teacher(*as_args(x, input_names)))
            for x, *_ in DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate)]
    return [torch.cat([o[i] for o in outs]) for i in range(len(outs[0]))]


def train(model: nn.Module, dataset: Any, *, epochs: int, lr: float, batch_size: int, seed: int,
          teacher: nn.Module | None = None, temperature: float = 4.0, alpha: float = 0.0,
          optimizer: str = "adamw", weight_decay: float = 1e-4,
          extra_loss: Callable[[], torch.Tensor] | None = None,
          extra_params: Iterable[nn.Parameter] = (), train_mode: bool = True,
          objective: Objective | None = None) -> nn.Module:
    """The explicit loop: optimizer + per-step cosine schedule; KD from ``teacher`` when given (alpha > 0).

    The data has no augmentation, so the teacher's logits are computed once, not every epoch (the teacher forward
    is the largest cost of distillation); feature distillation (``extra_loss``, which reads what hooks captured
    during the teacher's forward) still runs the teacher per batch. ``train_mode=False`` keeps BatchNorm on its
    running statistics (QAT fine-tuning of a converged model).
    """
    if epochs <= 0:
        return model
    obj = objective or Objective()
    names = obj.input_names
    if obj.needs_teacher and teacher is None:
        import copy

        teacher = copy.deepcopy(model).eval()   # output matching without a teacher: keep what the model computes
        for p in teacher.parameters():
            p.requires_grad_(False)
    kd = teacher is not None and (alpha > 0 or obj.kind != "logits")
    cached = teacher_logits(teacher, dataset, input_names=names) \
        if kd and extra_loss is None and teacher is not None else None
    gen = seed_everything(seed)
    loader = DataLoader(_Indexed(dataset), batch_size=batch_size, shuffle=True, generator=gen,
                        drop_last=len(dataset) > batch_size, collate_fn=collate)
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
            args = as_args(x, names)
            outs = outputs_list(model(*args))
            t_outs = None
            if kd:
                if cached is not None:
                    t_outs = [c[idx] for c in cached]
                else:
                    with torch.no_grad():
                        t_outs = outputs_list(teacher(*args))
            loss = obj.loss(outs, t_outs, y, temperature, alpha)
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


def output_layers(model: nn.Module, example_inputs: tuple[torch.Tensor, ...]) -> list[nn.Module]:
    """Every layer whose output channels *are* a model output (each head of a multi-output model), found by walking
    back from each output through Torch-Pruning's dependency graph; the last Linear when the graph cannot be built.
    Pruning one of these would change what the model returns, so none of them is ever pruned."""
    import torch_pruning as tp

    prunable = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.Embedding)
    try:
        dg = tp.DependencyGraph().build_dependency(model, example_inputs=example_inputs,
                                                   output_transform=lambda out: sum(o.float().sum()
                                                                                    for o in outputs_list(out)))
    except Exception:  # noqa: BLE001 - an untraceable model: protect the classifier at least
        return final_linear(model)
    found: list[nn.Module] = []
    outputs = [n for n in dg.module2node.values() if not n.outputs]
    for node in outputs:
        stack, seen = [node], set()
        while stack:
            cur = stack.pop()
            if id(cur) in seen:
                continue
            seen.add(id(cur))
            if isinstance(cur.module, prunable):
                if cur.module not in found:
                    found.append(cur.module)
                continue   # a layer with weights decides the channel count: stop here
            stack += list(cur.inputs)
    return found or final_linear(model)
