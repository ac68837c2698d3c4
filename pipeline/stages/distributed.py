"""Data-parallel training with ``torch.distributed``: who this process is, and how ``--nproc N`` starts the others.

A run with ``--nproc N`` (or one launched by ``torchrun``) is N copies of the same command. Every copy loads the
recipe, the model and the data and runs the stages together (each trains on its slice of every batch, DDP averages
the gradients); only rank 0 reads and writes the stage cache, exports, benchmarks and writes summary.json. The others
leave after the stages. torchrun sets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR; nothing else is needed.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    return rank() == 0


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def init(device_type: str) -> bool:
    """Join the process group torchrun prepared (NCCL for CUDA, gloo for CPU); False when running alone."""
    if not launched_by_torchrun() or not dist.is_available():
        return False
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local_rank())
        dist.init_process_group(backend=backend)
    return True


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank (a run folder, a cache decision, a cached model's tensors)."""
    if world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src, device=_collective_device())
    return box[0]


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def _collective_device() -> torch.device | None:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None


def strip_nproc(argv: Sequence[str]) -> list[str]:
    """The same command line without ``--nproc N`` / ``--nproc=N`` (what each worker runs)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a == "--nproc":
            skip = True
            continue
        if a.startswith("--nproc="):
            continue
        out.append(a)
    return out


def launch(nproc: int, argv: Sequence[str]) -> int:
    """Run ``edgepipe <argv>`` on ``nproc`` local processes with torchrun's launcher; rank 0's exit code is ours.

    torch.distributed.run would turn every worker failure into exit code 1 and a traceback; the launcher API hands
    back each worker's exit code, so a gate failure (3) or a bad recipe (2) keeps its meaning (DESIGN §5).
    """
    import logging

    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    for name in ("torch.distributed.elastic", "torch.distributed.launcher"):   # rank 0 says what failed, once
        logging.getLogger(name).setLevel(logging.CRITICAL)
    if "OMP_NUM_THREADS" not in os.environ:  # N processes share the cores instead of each taking all of them
        os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // nproc))
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=f"edgepipe-{uuid.uuid4()}",
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0, monitor_interval=0.2)
    try:
        elastic_launch(config, sys.executable)("-m", "pipeline.cli", *argv)
    except ChildFailedError as exc:
        return exit_code({r: f.exitcode for r, f in exc.failures.items()})
    return 0


def exit_code(codes: dict[int, int]) -> int:
    """The run's exit code from the failed ranks' codes: rank 0's. But when another rank failed first (every rank
    runs the same command, so a bad recipe fails them all), the launcher stops rank 0 with a signal (negative code)
    before it exits by itself: then the lowest rank's own code keeps its meaning (2, 3, 4). Only when every failure
    is a signal is it a crash (1)."""
    if codes.get(0, 0) > 0:
        return codes[0]
    return next((c for _, c in sorted(codes.items()) if c > 0), 1)
