"""Train once per machine: the cached-weights pattern a recipe's teacher factory needs.

A factory such as ``models:trained_teacher`` runs on every ``edgepipe run``; training there each time would cost
minutes. ``trained_once`` trains on first use and saves the weights atomically (a temporary file, then
``os.replace``: an interrupted training never leaves a half-written cache behind), and later runs load them with
``weights_only=True`` (no pickled code from a cache folder anyone could write to). Two processes that need the same
missing cache at once (two runs, two parallel test workers) train it once: the second waits on a lock on the cache
folder and loads what the first saved.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn


def trained_once(model: nn.Module, path: str | Path, train: Callable[[nn.Module], Any], what: str) -> nn.Module:
    """``model`` in eval mode with the weights cached at ``path``; ``train(model)`` fills them on first use.

    Seed torch before building ``model`` so the same code trains the same weights on every machine."""
    path = Path(path)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        with folder_lock(path.parent):
            if not path.exists():   # else another process trained it while this one waited
                start = time.perf_counter()
                train(model)
                tmp = path.with_name(f"{path.name}.{os.getpid()}.part")
                torch.save(model.state_dict(), tmp)
                os.replace(tmp, path)
                print(f"trained {what} in {time.perf_counter() - start:.1f}s -> {path}", flush=True)
    model.load_state_dict(torch.load(path, weights_only=True))
    return model.eval()


@contextlib.contextmanager
def folder_lock(folder: Path) -> Iterator[None]:
    """An exclusive flock on the folder itself: no lock file to leave behind, released when the process dies."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
