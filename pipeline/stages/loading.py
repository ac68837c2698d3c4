"""Batches for the training engine: lazy reads (one per item per epoch), seeded global batches sliced per rank, and
tensors inside tuples/dicts (a model's many named inputs) moved to the device.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, default_collate

from pipeline.stages import distributed

if TYPE_CHECKING:
    from collections.abc import Callable

    from pipeline.stages.train import TrainSettings


# ------------------------------------------------------------------------------------------------ tensors
def to_device(obj: Any, device: torch.device, non_blocking: bool = False) -> Any:
    """Tensors inside tuples, lists and dicts (a model's many named inputs) moved to ``device``."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=non_blocking)
    if isinstance(obj, Mapping):
        return {k: to_device(v, device, non_blocking) for k, v in obj.items()}
    if isinstance(obj, (tuple, list)):
        return type(obj)(to_device(v, device, non_blocking) for v in obj)
    return obj


def call(model: nn.Module | Callable[..., Any], inputs: Any, names: Sequence[str] | None = None) -> Any:
    """Feed one input, a tuple of positional inputs, or a dict of named inputs (in ``names`` order, forward()'s
    order, when given; as keyword arguments otherwise)."""
    if isinstance(inputs, Mapping):
        if names:
            return model(*(inputs[k] for k in names))
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)


def leaves(obj: Any) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, Mapping):
        return [t for v in obj.values() for t in leaves(v)]
    if isinstance(obj, (tuple, list)):
        return [t for v in obj for t in leaves(v)]
    return []


def rebuild(template: Any, tensors: Iterator[torch.Tensor]) -> Any:
    if isinstance(template, torch.Tensor):
        return next(tensors)
    if isinstance(template, Mapping):
        return {k: rebuild(v, tensors) for k, v in template.items()}
    if isinstance(template, (tuple, list)):
        return type(template)(rebuild(v, tensors) for v in template)
    return template


def as_float(obj: Any) -> Any:
    """Outputs of an autocast forward back in float32 before the loss (softmax/KL in bf16 loses the soft targets)."""
    return rebuild(obj, iter([t.float() if t.is_floating_point() else t for t in leaves(obj)]))


def batch_len(obj: Any) -> int:
    found = leaves(obj)
    return int(found[0].shape[0]) if found else 0


def collate(batch: list[Any]) -> Any:
    """Inputs are stacked; targets are stacked when they can be (labels, vectors), else kept as a list (boxes)."""
    if not all(isinstance(b, (tuple, list)) and len(b) >= 2 for b in batch):
        return default_collate(batch)   # not (inputs, target) items: plain stacking
    inputs = default_collate([b[0] for b in batch])
    targets = [b[1] for b in batch]
    try:
        stacked: Any = default_collate(targets)
    except (TypeError, RuntimeError):
        stacked = targets
    return (inputs, stacked, *[default_collate([b[i] for b in batch]) for i in range(2, len(batch[0]))])


# ------------------------------------------------------------------------------------------------ data
def is_deterministic(dataset: Any) -> bool:
    """Whether ``dataset[i]`` is the same every time, so a teacher's outputs can be computed once and reused.

    A dataset says so with a ``deterministic`` attribute; without one, tensors in memory (TensorDataset) are, a
    Subset/ConcatDataset is when all its parts are, and anything else (a ``transform``, random crops, file readers we
    cannot see into) is treated as augmented: the teacher then runs on every batch, which is always correct.
    """
    flag = getattr(dataset, "deterministic", None)
    if isinstance(flag, bool):
        return flag
    if isinstance(dataset, torch.utils.data.TensorDataset):
        return True
    if isinstance(dataset, torch.utils.data.Subset):
        return is_deterministic(dataset.dataset)
    if isinstance(dataset, torch.utils.data.ConcatDataset):
        return all(is_deterministic(d) for d in dataset.datasets)
    return False


class Indexed(Dataset):
    """Items ``(x, y, i)``: the index finds the sample's cached teacher outputs. Each item is read once."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[Any, Any, int]:
        item = self.dataset[i]
        return item[0], item[1], i


class GlobalBatches:
    """Batches of indices drawn exactly as ``DataLoader(shuffle=True, generator=g)`` draws them; under DDP each rank
    gets its contiguous slice of every global batch, so N processes see the same batches as one."""

    def __init__(self, n: int, batch_size: int, drop_last: bool, generator: torch.Generator,
                 rank: int = 0, world: int = 1) -> None:
        self.n, self.batch_size, self.drop_last, self.generator = n, batch_size, drop_last, generator
        self.rank, self.world = rank, world

    def __len__(self) -> int:
        return self.n // self.batch_size if self.drop_last else -(-self.n // self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        perm = torch.randperm(self.n, generator=self.generator).tolist()
        for b in range(len(self)):
            batch = perm[b * self.batch_size:(b + 1) * self.batch_size]
            lo, hi = self.rank * len(batch) // self.world, (self.rank + 1) * len(batch) // self.world
            yield batch[lo:hi]
        # RandomSampler draws a second (empty) permutation when exhausted; so do we, to keep the seeded sequence
        torch.randperm(self.n, generator=self.generator)


def loader(dataset: Any, settings: TrainSettings, *, shuffle: bool, generator: torch.Generator | None = None,
           batch_size: int | None = None, drop_last: bool = False, distributed_slices: bool = False) -> DataLoader:
    """A DataLoader with the settings' workers and pinning; shuffled batches follow ``GlobalBatches``."""
    bs = batch_size or settings.batch_size
    common: dict[str, Any] = {"num_workers": settings.num_workers, "pin_memory": settings.pin_memory,
                              "collate_fn": collate}
    if not shuffle:
        return DataLoader(dataset, batch_size=bs, shuffle=False, **common)
    gen = generator or torch.Generator().manual_seed(0)
    world = distributed.world_size() if distributed_slices else 1
    rank = distributed.rank() if distributed_slices else 0
    sampler = GlobalBatches(len(dataset), bs, drop_last, gen, rank, world)
    # generator=gen: the loader draws its worker base seed from it before the permutation, as DataLoader always did
    return DataLoader(dataset, batch_sampler=sampler, generator=gen, **common)


def seed_everything(seed: int) -> torch.Generator:
    """Seed every generator a stage draws from, and return the one its loaders shuffle with."""
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)
