"""Models other than a one-input classifier: check reports everything at once, a broken model never passes."""

from __future__ import annotations

import json

from tests.conftest import run_cli

MODELS = """
    import torch
    from torch import nn

    class Embedder(nn.Module):
        '''Two int64 inputs (ids + mask) -> an 8-d embedding and a second 4-d head.'''
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.embed = nn.Embedding(12, 16)
            self.mid = nn.Linear(16, 32)
            self.proj = nn.Linear(32, 8)
            self.aux = nn.Linear(32, 4)

        def forward(self, input_ids, attention_mask):
            keep = attention_mask.float()[..., None]
            h = (self.embed(input_ids) * keep).sum(1) / keep.sum(1).clamp(min=1)
            h = torch.relu(self.mid(h))
            return self.proj(h), self.aux(h)

    def embedder():
        return Embedder().eval()
"""
DATA = """
    import torch

    class Items(torch.utils.data.Dataset):
        def __init__(self, n, seed, names=("input_ids", "attention_mask"), mask_dtype=torch.int64):
            g = torch.Generator().manual_seed(seed)
            self.ids = torch.randint(0, 12, (n, 6), generator=g)
            self.mask = torch.ones(n, 6, dtype=mask_dtype)
            self.names = names
        def __len__(self):
            return len(self.ids)
        def __getitem__(self, i):
            return {self.names[0]: self.ids[i], self.names[1]: self.mask[i]}, 0

    def splits():
        return {"train": Items(64, 0), "calib": Items(16, 1), "eval": Items(32, 2)}

    def wrong():
        d = Items(8, 3, names=("ids", "attention_mask"), mask_dtype=torch.float32)
        return {"train": d, "calib": d, "eval": d}
"""
RECIPE = """
    name: embed
    model:
      factory: models:embedder
      inputs:
        - {{name: input_ids, shape: [1, 6], dtype: int64}}
        - {{name: attention_mask, shape: [1, 6], dtype: int64}}
      outputs: [embedding, aux]
    data: {{factory: "data:{data}", eval_samples: 32}}
    task: {{metric: "{metric}"}}
    stages:
      prune: {{ratio: 0.5, round_to: null, finetune_epochs: 0, latency_guard: false}}
    backends: [onnx-fp32]
    gate: {{max_metric_drop: 0.01}}
"""


def test_check_reports_wrong_input_names_dtypes_and_an_unimportable_metric_at_once(write_recipe):
    path = write_recipe(RECIPE.format(data="wrong", metric="nosuch:Metric"), {"models.py": MODELS, "data.py": DATA})
    proc = run_cli("check", str(path))
    assert proc.returncode == 2, proc.stderr
    err = proc.stderr
    assert "task.metric: cannot import module 'nosuch'" in err
    assert "['ids'] are not in model.inputs" in err and "['input_ids'] of model.inputs are missing" in err
    assert "model.inputs[1] (attention_mask): dtype is int64 in the recipe but the data gives float32" in err
    assert "Traceback" not in err


def test_check_runs_one_eval_sample_and_names_the_outputs(write_recipe):
    path = write_recipe(RECIPE.format(data="splits", metric="cosine"), {"models.py": MODELS, "data.py": DATA})
    proc = run_cli("check", str(path))
    assert proc.returncode == 0, proc.stderr
    assert "input_ids int64[1, 6]" in proc.stdout and "[[1, 8], [1, 4]]" in proc.stdout


def test_a_model_broken_by_pruning_never_passes_its_gate(write_recipe, tmp_path):
    # pruning half the hidden units without fine-tuning breaks the embedding: cosine to the original drops far
    # more than 0.01, so the run stops at the stage (exit 3) with the metric named -- never a pass
    path = write_recipe(RECIPE.format(data="splits", metric="cosine"), {"models.py": MODELS, "data.py": DATA})
    out = tmp_path / "run"
    proc = run_cli("run", str(path), "--device", "local", "--out", str(out),
                   "--set", "stages.prune.ratio=0.5")
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert "stage prune: cosine " in proc.stderr and "past the gate's max_metric_drop 0.01" in proc.stderr
    assert not (out / "summary.json").exists()               # stopped before any export
    # asked to go on, it warns, exports, and the gate fails at the end with the figures stored
    proc = run_cli("run", str(path), "--device", "local", "--out", str(out),
                   "--set", "stages.prune.ratio=0.5", "--set", "stages.prune.allow_gate_miss=true")
    assert proc.returncode == 3, proc.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert any("allow_gate_miss" in w for w in summary["stages"][0]["warnings"])
    assert summary["baseline"]["metric"]["name"] == "cosine" and "accuracy" not in summary["baseline"]
    stage = summary["stages"][0]
    assert stage["metric"]["value"] < 0.99 and summary["gate"]["passed"] is False
    assert "cosine" in summary["gate"]["failures"][0]
    # both heads were kept whole: the pruned model still returns an 8-d and a 4-d output
    art = summary["artifacts"][0]
    assert art["validation"]["per_output"] and len(art["validation"]["per_output"]) == 2
