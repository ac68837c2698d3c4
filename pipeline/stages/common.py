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

import dataclasses
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from pipeline.stages.loading import collate
from pipeline.stages.train import CPU_SETTINGS, TrainSettings, fit


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
                return task_cross_entropy(student[0], targets)
            return kd_loss(student[0], teacher[0], targets, temperature, alpha)
        if teacher is None:
            raise ValueError("output-matching KD needs the teacher's outputs")
        if self.output_weights is not None and len(self.output_weights) != len(student):
            from targets.errors import ConfigError

            raise ConfigError(f"task.output_weights: {len(self.output_weights)} weight(s) for a model with "
                              f"{len(student)} output(s)", hint=f"give one weight per output ({len(student)})")
        balanced = self.output_weights is None
        weights = self.output_weights or [1.0] * len(student)
        total = torch.zeros(())
        for w, s, t in zip(weights, student, teacher, strict=True):
            s, t = s.float(), t.float().detach()
            if self.output_loss == "cosine":
                term = 1 - F.cosine_similarity(s.reshape(len(s), -1), t.reshape(len(t), -1), dim=1).mean()
            else:
                term = F.mse_loss(s, t)
                if balanced:   # each output by its own spread: pixel boxes must not drown 0..1 scores (issue 21)
                    term = term / spread(t)
            total = total + w * term
        return total


def spread(t: torch.Tensor) -> torch.Tensor:
    """The scale an output's squared error is divided by in the balanced default: its variance over the batch, with
    a floor (a thousandth of its mean square) so a nearly constant output does not blow its term up."""
    return torch.maximum(t.var(unbiased=False), 1e-3 * t.pow(2).mean()).clamp_min(1e-12)


@torch.no_grad()
def accuracy(model: nn.Module | Callable[..., Any], dataset: Any, batch_size: int = 256,
             input_names: Sequence[str] | None = None) -> float:
    """Top-1 of the first output on ``dataset`` (items ``(inputs, label)``), as a fraction; eval mode. The one
    top-1 helper: the task metric (``pipeline.recipe.metrics``) is what runs report; this is the stages' quick check."""
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

    The T^2 factor keeps the soft term's gradient magnitude independent of the temperature. Sequence logits
    ``(B, T, V)`` with labels ``(B, T)`` (a language model's next tokens) count every position as one sample: the KL
    over V per position, averaged over all B * T positions.
    """
    student_logits, teacher_logits, labels = per_position(student_logits, teacher_logits, labels)
    hard = F.cross_entropy(student_logits, labels)
    if alpha <= 0:
        return hard
    t = temperature
    soft = F.kl_div(F.log_softmax(student_logits / t, dim=1), F.log_softmax(teacher_logits / t, dim=1),
                    reduction="batchmean", log_target=True) * (t * t)
    return alpha * soft + (1 - alpha) * hard


def per_position(logits: torch.Tensor, *others: torch.Tensor | None) -> tuple[Any, ...]:
    """``(B, T, V)`` logits (and teacher logits ``(B, T, V)`` / labels ``(B, T)``) flattened to one row per position,
    so cross-entropy and KL read the class axis last; 2-D logits come back as they are."""
    if logits.dim() <= 2:
        return (logits, *others)
    v = logits.shape[-1]
    out: list[Any] = [logits.reshape(-1, v)]
    for t in others:
        out.append(None if t is None else t.reshape(-1, v) if t.dim() == logits.dim() else t.reshape(-1))
    return tuple(out)


def task_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of class logits against integer labels, per position for sequence logits."""
    flat, flat_labels = per_position(logits, labels)
    return F.cross_entropy(flat, flat_labels)


def train(model: nn.Module, dataset: Any, *, epochs: int, lr: float, batch_size: int, seed: int,
          teacher: nn.Module | None = None, temperature: float = 4.0, alpha: float = 0.0,
          optimizer: str = "adamw", weight_decay: float = 1e-4,
          extra_loss: Callable[[], torch.Tensor] | None = None,
          extra_params: Iterable[nn.Parameter] = (), train_mode: bool = True,
          objective: Objective | None = None, settings: TrainSettings | None = None,
          extra_modules: Iterable[nn.Module] = (), name: str = "train",
          log: Callable[[str], None] | None = None, warmup: float = 0.0,
          grad_clip: float | None = None) -> nn.Module:
    """Optimizer + per-step cosine schedule (after a linear ``warmup``, a fraction of the steps; ``grad_clip`` caps
    the gradient norm) + the task's loss (``objective``: Hinton KD from ``teacher`` when alpha > 0 for
    classification, output matching on every output, or the user's loss), on the engine of train.py.

    ``loss(outputs, teacher_outputs, targets)`` replaces the default (Hinton KD, or cross-entropy without a
    teacher). ``settings`` say where and how (device, AMP, workers; CPU fp32 when absent) and ``batch_size`` wins
    over theirs. The teacher's outputs are computed once when the data is deterministic, else per batch; feature
    distillation (``extra_loss``, which reads what hooks captured during the teacher's forward) always runs the
    teacher per batch. ``train_mode=False`` keeps BatchNorm on its running statistics (QAT fine-tuning).
    """
    if epochs <= 0:
        return model
    obj = objective or Objective()
    if obj.needs_teacher and teacher is None:
        import copy

        teacher = copy.deepcopy(model).eval()   # output matching without a teacher: keep what the model computes
        for p in teacher.parameters():
            p.requires_grad_(False)
    kd = teacher is not None and (alpha > 0 or obj.kind != "logits")

    def loss(outputs: Any, t_outputs: Any, targets: Any) -> torch.Tensor:
        return obj.loss(outputs_list(outputs), outputs_list(t_outputs) if kd and t_outputs is not None else None,
                        targets, temperature, alpha)

    settings = dataclasses.replace(settings or CPU_SETTINGS, batch_size=batch_size)
    extra = list(extra_params)

    def make_optimizer(params: list[nn.Parameter]) -> torch.optim.Optimizer:
        params = params + [p for p in extra if all(p is not q for q in params)]
        if optimizer == "sgd":
            return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay, nesterov=True)
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)

    return fit(model, dataset, loss, epochs=epochs, make_optimizer=make_optimizer, settings=settings, seed=seed,
               teacher=teacher if kd or extra_loss is not None else None, extra_loss=extra_loss,
               extra_modules=extra_modules, train_mode=train_mode, name=name, log=log, input_names=obj.input_names,
               warmup=warmup, grad_clip=grad_clip)


def final_linear(model: nn.Module) -> list[nn.Module]:
    """The classifier (the last ``nn.Linear`` in registration order): its outputs are the classes, never pruned."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return linears[-1:]


def output_layers(model: nn.Module, example_inputs: tuple[torch.Tensor, ...]) -> list[nn.Module]:
    """Every layer whose output channels *are* a model output (each head of a multi-output model), found by walking
    back from each output through Torch-Pruning's dependency graph; the last Linear when the graph cannot be built.
    Pruning one of these would change what the model returns, so none of them is ever pruned. Layers with frozen
    weights only are looked through: the learned layer before them decides the channels."""
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
            # a frozen layer (no trainable weight, e.g. YOLOv8's DFL) is fixed arithmetic: look through it
            if isinstance(cur.module, prunable) and any(q.requires_grad for q in cur.module.parameters()):
                if cur.module not in found:
                    found.append(cur.module)
                continue   # a layer with weights decides the channel count: stop here
            stack += list(cur.inputs)
    return found or final_linear(model)
