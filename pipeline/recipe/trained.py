"""Train once per machine: the cached-weights pattern a recipe's teacher factory needs.

A factory such as ``models:trained_teacher`` runs on every ``edgepipe run``; training there each time would cost
minutes. ``trained_once`` trains on first use and saves the weights atomically (a temporary file, then
``os.replace``: an interrupted training or two runs racing never leave a half-written cache behind), and later runs
load them with ``weights_only=True`` (no pickled code from a cache folder anyone could write to).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn


def trained_once(model: nn.Module, path: str | Path, train: Callable[[nn.Module], Any], what: str) -> nn.Module:
    """``model`` in eval mode with the weights cached at ``path``; ``train(model)`` fills them on first use.

    Seed torch before building ``model`` so the same code trains the same weights on every machine."""
    path = Path(path)
    if not path.exists():
        start = time.perf_counter()
        train(model)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.part")
        torch.save(model.state_dict(), tmp)
        os.replace(tmp, path)
        print(f"trained {what} in {time.perf_counter() - start:.1f}s -> {path}", flush=True)
    model.load_state_dict(torch.load(path, weights_only=True))
    return model.eval()
