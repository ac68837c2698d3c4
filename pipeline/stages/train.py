"""The training engine shared by distill, prune fine-tuning and QAT: device, AMP, data loading, DDP, progress.

The stages say *what* to optimise (a model, a loss, an optional teacher); this module decides *where* and *how fast*:
``train: {device, amp, num_workers, pin_memory, batch_size}`` from the recipe, overridden per stage. Models, teacher,
inputs and losses go to the chosen device for the loop and come back to the CPU afterwards, so caching and export
never see a CUDA tensor and a stage cached on a GPU is reused on a laptop (the device is not part of the cache key;
AMP and the batch size are, because they change the result).

Under ``torchrun`` every rank takes its slice of the same global batch, drawn from the same seeded permutation as a
single process, and DDP averages the gradients: N processes follow one process's trajectory up to floating-point
and per-rank BatchNorm statistics.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from pydantic import Field
from torch import nn

from pipeline.stages import distributed
from pipeline.stages.loading import (
    Indexed,
    as_float,
    batch_len,
    call,
    is_deterministic,
    leaves,
    loader,
    rebuild,
    seed_everything,
    to_device,
)
from targets.schema import StrictModel

LossFn = Callable[[Any, Any, Any], torch.Tensor]        # (outputs, teacher outputs or None, targets) -> scalar
TEACHER_CACHE_BYTES = 2 << 30                            # beyond this, teacher outputs are computed per batch
DEVICE_PATTERN = r"^(auto|cpu|cuda|cuda:\d+)$"


class TrainOverride(StrictModel):
    """A stage's own ``train:`` keys; whatever it leaves out comes from the recipe's ``train:`` section."""

    device: str | None = Field(default=None, pattern=DEVICE_PATTERN)
    amp: Literal["none", "bf16", "fp16"] | None = None
    num_workers: int | None = Field(default=None, ge=0)
    pin_memory: bool | None = None
    batch_size: int | None = Field(default=None, ge=1)
    eval_batch_size: int | None = Field(default=None, ge=1)
    progress: bool | None = None


class TrainConfig(StrictModel):
    """The recipe's ``train:`` section (DESIGN §3), shared by the three stages."""

    device: str = Field(default="auto", pattern=DEVICE_PATTERN)     # auto = CUDA when present, else CPU
    amp: Literal["none", "bf16", "fp16"] = "none"                  # fp16 uses a GradScaler; QAT always trains fp32
    num_workers: int = Field(default=0, ge=0)                      # DataLoader worker processes (2-8 for file data)
    pin_memory: bool | None = None                                 # None = on when training on CUDA
    batch_size: int | None = Field(default=None, ge=1)             # None = each stage's own batch_size
    eval_batch_size: int = Field(default=256, ge=1)
    progress: bool = True                                          # one line per epoch

    def merged(self, override: TrainOverride | None) -> TrainConfig:
        if override is None:
            return self
        return self.model_copy(update={k: v for k, v in override.model_dump().items() if v is not None})


@dataclass(frozen=True)
class TrainSettings:
    """A stage's resolved training settings: what the engine reads."""

    device: torch.device
    amp: str
    num_workers: int
    pin_memory: bool
    batch_size: int
    eval_batch_size: int
    progress: bool

    def cache_fields(self) -> dict[str, Any]:
        """What changes the trained weights; the device and the loader's workers do not (up to float rounding)."""
        return {"amp": self.amp, "batch_size": self.batch_size}


CPU_SETTINGS = TrainSettings(torch.device("cpu"), "none", 0, False, 64, 256, False)


def resolve_device(spec: str) -> torch.device:
    """``auto`` -> this process's GPU when CUDA is present, else the CPU; an absent GPU is a config error."""
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            from targets.errors import ConfigError

            raise ConfigError(f"train.device: {spec!r} but this machine has no CUDA GPU (torch {torch.__version__})",
                              hint="use train.device: auto (or cpu), or install a CUDA build of torch")
        index = int(spec.split(":")[1]) if ":" in spec else (distributed.local_rank() % torch.cuda.device_count())
        if index >= torch.cuda.device_count():
            from targets.errors import ConfigError

            raise ConfigError(f"train.device: {spec!r} but only {torch.cuda.device_count()} CUDA device(s) exist",
                              hint="use cuda (this process's GPU) or a lower index")
        return torch.device("cuda", index)
    return torch.device("cpu")


def settings_for(train: TrainConfig | None, stage_cfg: Any) -> TrainSettings:
    """The recipe's ``train:`` <- the stage's ``train:`` <- the stage's own ``batch_size`` when the user set it."""
    base = (train or TrainConfig()).merged(getattr(stage_cfg, "train", None))
    stage_bs = getattr(stage_cfg, "batch_size", 64)
    explicit = "batch_size" in getattr(stage_cfg, "model_fields_set", set())
    batch = stage_bs if explicit or base.batch_size is None else base.batch_size
    device = resolve_device(base.device)
    pin = base.pin_memory if base.pin_memory is not None else device.type == "cuda"
    return TrainSettings(device, base.amp, base.num_workers, pin, batch, base.eval_batch_size, base.progress)


# ------------------------------------------------------------------------------------------------ teacher outputs
class TeacherOutputs:
    """The teacher's outputs per sample index, filled on first sight, when the data is deterministic; else None."""

    def __init__(self, teacher: nn.Module, dataset: Any, settings: TrainSettings,
                 names: Sequence[str] | None = None) -> None:
        self.teacher, self.settings, self.names = teacher, settings, names
        self.store: list[torch.Tensor] | None = None
        self.template: Any = None
        self.have: torch.Tensor | None = None
        self.n = len(dataset)

    @torch.no_grad()
    def precompute(self, dataset: Any) -> None:
        """All samples up front, in order, in eval batches (what the single-process loop has always done)."""
        self.teacher.eval()
        chunks = []
        for x, *_ in loader(dataset, self.settings, shuffle=False, batch_size=self.settings.eval_batch_size):
            with _autocast(self.settings):
                out = as_float(call(self.teacher, to_device(x, self.settings.device, self.settings.pin_memory),
                                  self.names))
            chunks.append(out)
            if sum(t.numel() * t.element_size() for c in chunks for t in leaves(c)) > TEACHER_CACHE_BYTES:
                return  # too big to keep: the loop computes them per batch instead
        self.template = chunks[0]
        self.store = [torch.cat(parts) for parts in zip(*(leaves(c) for c in chunks), strict=True)]

    def get(self, idx: torch.Tensor) -> Any:
        assert self.store is not None
        idx = idx.to(self.store[0].device)
        return rebuild(self.template, iter([t[idx] for t in self.store]))


@torch.no_grad()
def teacher_forward(teacher: nn.Module, x: Any, settings: TrainSettings, names: Sequence[str] | None = None) -> Any:
    with _autocast(settings):
        return as_float(call(teacher, x, names))


def _autocast(settings: TrainSettings) -> Any:
    if settings.amp == "none":
        return torch.autocast(settings.device.type, enabled=False)
    dtype = torch.bfloat16 if settings.amp == "bf16" else torch.float16
    return torch.autocast(settings.device.type, dtype=dtype)


# ------------------------------------------------------------------------------------------------ progress
class EpochMeter:
    """Loss, running top-1 (when outputs are class scores), samples/s and time left, one line per epoch."""

    def __init__(self, name: str, epochs: int, log: Callable[[str], None] | None,
                 device: torch.device = torch.device("cpu")) -> None:
        self.name, self.epochs, self.log, self.device = name, epochs, log, device   # device: NCCL reduces there
        self.start = time.perf_counter()
        self.reset()

    def reset(self) -> None:
        self.t0, self.samples, self.counted = time.perf_counter(), 0, 0
        self.loss: torch.Tensor | float = 0.0        # summed on the device: no host sync per step
        self.correct: torch.Tensor | int = 0

    def update(self, loss: torch.Tensor, outputs: Any, targets: Any, n: int) -> None:
        self.loss = self.loss + loss.detach().float() * n
        self.samples += n
        out = outputs[0] if isinstance(outputs, (tuple, list)) else outputs
        if isinstance(out, torch.Tensor) and isinstance(targets, torch.Tensor) and out.dim() == 2 \
                and targets.dim() == 1 and not targets.is_floating_point() and len(targets) == len(out):
            self.correct = self.correct + (out.detach().argmax(1) == targets).sum()
            self.counted += len(targets)

    def end_epoch(self, epoch: int) -> None:
        totals = torch.tensor([float(self.loss), float(self.samples), float(self.correct), float(self.counted)],
                              device=self.device)
        if distributed.world_size() > 1:   # the line speaks for all ranks
            torch.distributed.all_reduce(totals)
        loss, samples, correct, counted = totals.tolist()
        now = time.perf_counter()
        seconds = now - self.t0
        left = (now - self.start) / epoch * (self.epochs - epoch)
        if self.log is not None and distributed.is_main():
            metric = f", train top-1 {correct / counted * 100:.2f}%" if counted else ""
            self.log(f"{self.name} epoch {epoch}/{self.epochs}: loss {loss / max(samples, 1):.4f}{metric}, "
                     f"{samples / max(seconds, 1e-9):,.0f} samples/s, {seconds:.1f}s, {_eta(left)} left")
        self.reset()


def _eta(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f}s"
    return f"{seconds // 60:.0f}m{seconds % 60:02.0f}s" if seconds < 3600 else f"{seconds / 3600:.1f}h"


# ------------------------------------------------------------------------------------------------ the loop
def fit(model: nn.Module, dataset: Any, loss_fn: LossFn, *, epochs: int, make_optimizer: Callable[
        [list[nn.Parameter]], torch.optim.Optimizer], settings: TrainSettings = CPU_SETTINGS, seed: int = 0,
        teacher: nn.Module | None = None, cache_teacher: bool = True, extra_loss: Callable[[], torch.Tensor]
        | None = None, extra_modules: Iterable[nn.Module] = (), train_mode: bool = True, name: str = "train",
        log: Callable[[str], None] | None = None, input_names: Sequence[str] | None = None,
        warmup: float = 0.0, grad_clip: float | None = None) -> nn.Module:
    """Train ``model`` in place: per-step cosine schedule, ``loss_fn(outputs, teacher_outputs, targets)``; a dict
    of inputs is fed in ``input_names`` order (forward()'s).

    ``warmup`` (a fraction of all steps) ramps the learning rate up linearly before the cosine decay, and
    ``grad_clip`` caps the global gradient norm: the YOLO-style detector's student needed both to reach its teacher
    (mAP@0.5:0.95 0.760 with neither, 0.771 with 15 % warmup and norm 10, same 40 epochs), since its GIoU loss
    spikes while boxes are still random.

    ``teacher`` runs once over the data (when ``cache_teacher`` and the data is deterministic) or on every batch.
    ``extra_loss`` reads what hooks captured in the forward passes (feature distillation); ``extra_modules`` (its
    adapters) train alongside. Everything is back on the CPU, in eval mode, when this returns.
    """
    if epochs <= 0:
        return model

    device, world = settings.device, distributed.world_size()
    extras = [m for m in extra_modules]
    teacher_device = _device_of(teacher) if teacher is not None else None
    bars = contextlib.ExitStack()
    try:
        model.to(device)
        for m in extras:
            m.to(device)
        if teacher is not None:
            teacher.to(device).eval()
        cache = None
        if teacher is not None and cache_teacher and extra_loss is None and is_deterministic(dataset):
            cache = TeacherOutputs(teacher, dataset, settings, input_names)
            cache.precompute(dataset)
            if cache.store is None:
                cache = None
        gen = seed_everything(seed)
        batches = loader(Indexed(dataset), settings, shuffle=True, generator=gen,
                         drop_last=len(dataset) > settings.batch_size, distributed_slices=True)
        params = [p for p in model.parameters() if p.requires_grad]
        extra_params = [p for m in extras for p in m.parameters() if p.requires_grad]
        opt = make_optimizer(params + extra_params)
        sched = _schedule(opt, epochs * len(batches), warmup)
        scaler = torch.amp.GradScaler(device.type, enabled=settings.amp == "fp16")
        net: nn.Module = model
        if world > 1:
            net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                                      else None)
        meter = EpochMeter(name, epochs, log if settings.progress else None, device)
        # a live bar over every batch when the log is edgepipe's console on a terminal (pipeline/ui/progress.py)
        bar_of = getattr(log, "bar", None) if settings.progress and distributed.is_main() else None
        ticker = bars.enter_context(bar_of(name, epochs * len(batches))) if callable(bar_of) else None
        global_batch = settings.batch_size
        for epoch in range(1, epochs + 1):
            net.train(train_mode)
            for x, y, idx in batches:
                x, y = to_device(x, device, settings.pin_memory), to_device(y, device, settings.pin_memory)
                n = batch_len(x)
                opt.zero_grad(set_to_none=True)
                t_out = None
                if teacher is not None:
                    t_out = cache.get(idx) if cache is not None else teacher_forward(teacher, x, settings, input_names)
                with _autocast(settings):
                    outputs = call(net, x, input_names)
                    loss = loss_fn(as_float(outputs), t_out, y)
                    if extra_loss is not None:
                        loss = loss + extra_loss()
                if world > 1:   # DDP averages over ranks: weight each rank by its share of the global batch
                    loss_step = loss * (n * world / min(global_batch, len(dataset)))
                else:
                    loss_step = loss
                scaler.scale(loss_step).backward()
                if world > 1 and extra_params:   # adapters live outside the DDP module: average by hand
                    _all_reduce_grads(extra_params, world)
                if grad_clip is not None:
                    scaler.unscale_(opt)
                    nn.utils.clip_grad_norm_(params + extra_params, grad_clip)
                scaler.step(opt)
                scaler.update()
                sched.step()
                meter.update(loss, outputs, y, n)
                if ticker is not None:
                    ticker.advance()
            meter.end_epoch(epoch)
        if world > 1:   # BatchNorm statistics differ per rank; rank 0's are the model's
            for t in model.state_dict().values():
                torch.distributed.broadcast(t, 0)
    finally:
        bars.close()
        model.to("cpu")
        for m in extras:
            m.to("cpu")
        if teacher is not None and teacher_device is not None:
            teacher.to(teacher_device)
    return model.eval()


def _schedule(opt: torch.optim.Optimizer, steps: int, warmup: float) -> torch.optim.lr_scheduler.LRScheduler:
    """Cosine decay over every step, after a linear ramp over the first ``warmup`` fraction of them (none at 0)."""
    ramp = int(round(warmup * steps))
    if ramp <= 0:
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, steps))
    up = torch.optim.lr_scheduler.LinearLR(opt, start_factor=1.0 / (ramp + 1), total_iters=ramp)
    down = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, steps - ramp))
    return torch.optim.lr_scheduler.SequentialLR(opt, [up, down], milestones=[ramp])


def _device_of(module: nn.Module) -> torch.device:
    for t in module.parameters():
        return t.device
    for t in module.buffers():
        return t.device
    return torch.device("cpu")


def _all_reduce_grads(params: list[nn.Parameter], world: int) -> None:
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        torch.distributed.all_reduce(p.grad)
        p.grad /= world

