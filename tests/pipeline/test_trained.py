"""trained_once: a teacher factory trains on first use only, and never leaves a half-written cache."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from pipeline.recipe.trained import trained_once


def test_trains_on_first_use_then_loads_the_same_weights_without_training(tmp_path: Path) -> None:
    calls: list[int] = []

    def train(m: nn.Module) -> None:
        calls.append(1)
        with torch.no_grad():
            m.weight.fill_(0.5)

    path = tmp_path / "cache" / "teacher-v1.pt"
    first = trained_once(nn.Linear(3, 2), path, train, "a test teacher")
    second = trained_once(nn.Linear(3, 2), path, train, "a test teacher")
    assert calls == [1] and not first.training and not second.training
    assert torch.equal(first.weight, second.weight) and float(second.weight[0, 0]) == 0.5
    assert sorted(p.name for p in path.parent.iterdir()) == ["teacher-v1.pt"]    # no .part left behind


def test_an_interrupted_training_leaves_no_cache(tmp_path: Path) -> None:
    def broken(_m: nn.Module) -> None:
        raise KeyboardInterrupt

    path = tmp_path / "teacher.pt"
    try:
        trained_once(nn.Linear(3, 2), path, broken, "a test teacher")
    except KeyboardInterrupt:
        pass
    assert not path.exists() and not list(tmp_path.iterdir())


TRAIN_IN_A_PROCESS = """
import sys, time
from pathlib import Path
import torch
from torch import nn
from pipeline.recipe.trained import trained_once

def train(m):
    with open(sys.argv[2], "a") as log:
        log.write("trained\\n")
    time.sleep(1.0)                      # long enough for the other process to find the cache missing too
    with torch.no_grad():
        m.weight.fill_(0.25)

m = trained_once(nn.Linear(3, 2), Path(sys.argv[1]), train, "a test teacher")
assert float(m.weight[0, 0]) == 0.25
"""


def test_two_processes_needing_the_same_missing_cache_train_it_once(tmp_path: Path) -> None:
    """Parallel test workers (make test runs pytest -n 2) and two runs at once share examples/*/.cache."""
    import os
    import subprocess
    import sys

    script, log = tmp_path / "train.py", tmp_path / "calls.log"
    script.write_text(TRAIN_IN_A_PROCESS)
    path = tmp_path / "cache" / "teacher-v1.pt"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    procs = [subprocess.Popen([sys.executable, str(script), str(path), str(log)], env=env) for _ in range(2)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    assert log.read_text() == "trained\n"
    assert sorted(p.name for p in path.parent.iterdir()) == ["teacher-v1.pt"]
