"""The training engine: where it trains (device by name and by ``auto``), what it reads, prints and caches."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from pipeline.stages.common import accuracy, train
from pipeline.stages.distill import DistillConfig
from pipeline.stages.loading import GlobalBatches, Indexed, is_deterministic, loader
from pipeline.stages.prune import PruneConfig
from pipeline.stages.train import CPU_SETTINGS, TrainConfig, fit, resolve_device, settings_for
from targets.errors import ConfigError

from . import stage_models
from .stage_models import make_recipe


class CountingReads(Dataset):
    """A dataset that counts how often each item is read (a file reader would pay for every read)."""

    def __init__(self, base: Any) -> None:
        self.base, self.reads = base, [0] * len(base)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> Any:
        self.reads[i] += 1
        return self.base[i]


class Augmented(CountingReads):
    """Random noise on every read, like a training transform: ``dataset[i]`` differs each time."""

    transform = "noise"

    def __getitem__(self, i: int) -> Any:
        x, y = super().__getitem__(i)
        return x + 0.05 * torch.randn_like(x), y


class CountingTeacher(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner, self.calls = inner, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.inner(x)


def test_train_device_cpu_by_name_and_auto_resolves_to_cpu_without_gpu() -> None:
    cfg = DistillConfig()
    assert settings_for(TrainConfig(device="cpu"), cfg).device == torch.device("cpu")
    auto = settings_for(TrainConfig(device="auto"), cfg).device
    assert auto.type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert settings_for(None, cfg).pin_memory is (auto.type == "cuda")  # pinned only when copying to a GPU


def test_train_device_auto_picks_cuda_when_present(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("LOCAL_RANK", "1")             # under torchrun: this process's GPU
    assert resolve_device("auto") == torch.device("cuda", 1)
    assert resolve_device("cuda:0") == torch.device("cuda", 0)
    with pytest.raises(ConfigError, match="only 2 CUDA"):
        resolve_device("cuda:5")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_train_device_cuda_without_gpu_is_a_config_error_naming_the_key() -> None:
    with pytest.raises(ConfigError, match=r"train\.device: 'cuda'.*no CUDA GPU"):
        settings_for(TrainConfig(device="cuda"), DistillConfig())


def test_stage_keys_override_the_train_section() -> None:
    train_cfg = TrainConfig(device="cpu", batch_size=128, amp="bf16")
    assert settings_for(train_cfg, PruneConfig()).batch_size == 128             # stage left it: the section's
    assert settings_for(train_cfg, PruneConfig(batch_size=32)).batch_size == 32  # stage set it: the stage's
    own = settings_for(train_cfg, DistillConfig(train={"amp": "none", "num_workers": 3}))
    assert (own.amp, own.num_workers, own.batch_size) == ("none", 3, 128)
    with pytest.raises(ValueError, match="device"):
        TrainConfig(device="gpu0")


def test_indexed_reads_each_sample_once() -> None:
    ds = CountingReads(TensorDataset(torch.randn(10, 3), torch.arange(10)))
    assert [Indexed(ds)[i][2] for i in range(10)] == list(range(10))
    assert ds.reads == [1] * 10


def test_global_batches_follow_the_seeded_dataloader_and_ranks_split_each_batch() -> None:
    ds = TensorDataset(torch.arange(150))
    ref = [b[0].tolist() for _ in range(2)
           for b in DataLoader(ds, batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(3),
                               drop_last=True)]
    gen = torch.Generator().manual_seed(3)
    ours = [b[0].tolist() for _ in range(2)
            for b in loader(ds, dataclasses.replace(CPU_SETTINGS, batch_size=64), shuffle=True, generator=gen,
                            drop_last=True)]
    assert ours[:2] == ref[:2] and len(ours) == 4
    whole = list(GlobalBatches(150, 64, True, torch.Generator().manual_seed(5)))
    parts = [list(GlobalBatches(150, 64, True, torch.Generator().manual_seed(5), rank=r, world=3)) for r in range(3)]
    for b, batch in enumerate(whole):
        assert sum((p[b] for p in parts), []) == batch          # the ranks' slices are exactly the global batch


def test_teacher_outputs_computed_once_only_when_data_is_deterministic(digits, teacher) -> None:
    small = torch.utils.data.Subset(digits["train"], range(128))
    fixed, augmented = CountingReads(small), Augmented(small)
    fixed.deterministic = True                        # what a file-reading dataset without augmentation declares
    assert is_deterministic(digits["train"]) and is_deterministic(small) and not is_deterministic(augmented)
    for ds, expected in ((fixed, 1), (augmented, 2 * 128 // 32)):
        counting = CountingTeacher(teacher)
        train(stage_models.student(), ds, epochs=2, lr=1e-3, batch_size=32, seed=0, teacher=counting, alpha=0.5)
        assert counting.calls == expected, (type(ds).__name__, counting.calls)
    assert fixed.reads == [3] * 128                   # once for the teacher, once per epoch


def test_fit_on_cpu_prints_one_progress_line_per_epoch_and_returns_model_on_cpu(digits, teacher) -> None:
    lines: list[str] = []
    student = stage_models.student()
    settings = dataclasses.replace(settings_for(TrainConfig(device="cpu"), DistillConfig()), batch_size=32)
    out = train(student, digits["train"], epochs=3, lr=1e-2, batch_size=32, seed=0, teacher=teacher, alpha=0.7,
                settings=settings, name="distill", log=lines.append)
    assert len(lines) == 3 and lines[0].startswith("distill epoch 1/3: loss ")
    assert all("samples/s" in ln and "left" in ln and "train top-1" in ln for ln in lines)
    assert all(p.device.type == "cpu" for p in out.parameters()) and not out.training
    assert accuracy(out, digits["eval"]) > 0.3


def test_fit_takes_a_loss_callable_and_named_inputs(digits) -> None:
    class TwoInputs(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(4, 3), nn.Linear(4, 3)

        def forward(self, left: torch.Tensor, right: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return self.a(left), self.b(right)

    torch.manual_seed(0)
    x = torch.randn(96, 4)
    ds = [({"left": x[i], "right": -x[i]}, (x[i, :3] * 2)) for i in range(96)]
    model = TwoInputs()

    def loss(outputs: Any, _teacher: Any, target: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(outputs[0], target) + F.mse_loss(outputs[1], -target)

    before = float(loss(model(x, -x), None, x[:, :3] * 2))
    fit(model, ds, loss, epochs=30, make_optimizer=lambda p: torch.optim.Adam(p, lr=5e-2),
        settings=dataclasses.replace(CPU_SETTINGS, batch_size=32))
    assert float(loss(model(x, -x), None, x[:, :3] * 2)) < before / 10


def test_stage_cache_is_reused_across_device_settings_but_not_amp(digits, teacher, tmp_path) -> None:
    from dataclasses import replace

    from pipeline.stages.chain import run_stages

    recipe = make_recipe({"distill": {"student": "stage_models:student", "epochs": 1, "batch_size": 32}})
    logs: list[str] = []
    first = run_stages(teacher, digits, replace(recipe, train=TrainConfig(device="cpu")), tmp_path, logs.append)
    assert first.records[0]["cached"] is False
    assert any(ln.startswith("distill epoch 1/1") for ln in logs)
    other = TrainConfig(device="auto", num_workers=1, pin_memory=True, progress=False)
    again = run_stages(teacher, digits, replace(recipe, train=other), tmp_path, logs.append)
    assert again.records[0]["cached"] is True
    assert again.records[0]["accuracy"] == first.records[0]["accuracy"]
    bf16 = run_stages(teacher, digits, replace(recipe, train=TrainConfig(device="cpu", amp="bf16")), tmp_path,
                      logs.append)
    assert bf16.records[0]["cached"] is False                       # AMP changes the result: its own entry
    assert bf16.records[0]["key"] != first.records[0]["key"]


def test_recipe_rejects_bad_train_keys_all_at_once_naming_key_paths() -> None:
    from pipeline.recipe.config import load_recipe

    from .stage_models import DIGITS_RECIPE

    with pytest.raises(ConfigError) as info:
        load_recipe(DIGITS_RECIPE, ["train.device=gpu", "train.amp=fp8", "stages.distill.train.workers=2"])
    text = str(info.value)
    for path in ("train.device", "train.amp", "stages.distill.train.workers"):
        assert path in text, (path, text)
    assert load_recipe(DIGITS_RECIPE, ["train.device=cpu", "train.batch_size=32"]).train.batch_size == 32


def _one_step_change(**kw: Any) -> float:
    """How far plain SGD moves a linear model's weights in one step of a huge-gradient loss."""
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    w0 = model.weight.detach().clone()
    x = torch.randn(8, 4)
    ds = [(x[i], torch.zeros(1)) for i in range(8)]

    def loss(outputs: Any, _teacher: Any, target: torch.Tensor) -> torch.Tensor:
        return 1e4 * F.mse_loss(outputs, target + 100.0)

    fit(model, ds, loss, epochs=1, make_optimizer=lambda p: torch.optim.SGD(p, lr=0.1),
        settings=dataclasses.replace(CPU_SETTINGS, batch_size=8), **kw)
    return float((model.weight.detach() - w0).norm())


def test_grad_clip_caps_the_step_and_warmup_starts_the_learning_rate_low() -> None:
    free = _one_step_change()
    assert free > 100                                           # one unclipped step of this loss is enormous
    # clipped to norm 1: weight and bias share that norm, so the weights move at most lr * 1
    assert _one_step_change(grad_clip=1.0) <= 0.1 + 1e-6
    # 80 samples in batches of 8: 10 steps, the first 3 ramp up
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    ds = [(torch.randn(4), torch.zeros(1)) for _ in range(80)]
    lrs: list[float] = []

    class Recording(torch.optim.SGD):
        def step(self, closure: Any = None) -> Any:
            lrs.append(self.param_groups[0]["lr"])
            return super().step(closure)

    fit(model, ds, lambda o, _t, y: F.mse_loss(o, y), epochs=1, make_optimizer=lambda p: Recording(p, lr=0.1),
        settings=dataclasses.replace(CPU_SETTINGS, batch_size=8), warmup=0.3)
    assert len(lrs) == 10 and lrs[0] < 0.1 / 3 and lrs[1] > lrs[0] and max(lrs) == pytest.approx(0.1)
    assert lrs[-1] < lrs[4]                                     # then the cosine decay


def test_distill_config_takes_warmup_and_grad_clip_and_rejects_bad_values() -> None:
    cfg = DistillConfig(warmup=0.15, grad_clip=10.0)
    assert (cfg.warmup, cfg.grad_clip) == (0.15, 10.0)
    for bad in ({"warmup": 1.0}, {"warmup": -0.1}, {"grad_clip": 0}):
        with pytest.raises(ValueError):
            DistillConfig(**bad)
