"""Ctrl-C in the middle of a search keeps what was measured; a re-run resumes from the caches."""

from __future__ import annotations

import io
import json

import pytest
import yaml

from pipeline.search.engine import search

pytestmark = [pytest.mark.onnx]

MODELS = """
    import torch
    from torch import nn

    def tiny():
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
                             nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10)).eval()

    def data():
        g = torch.Generator().manual_seed(0)
        ds = torch.utils.data.TensorDataset(torch.randn(48, 1, 8, 8, generator=g), torch.randint(0, 10, (48,),
                                            generator=g))
        return {"train": ds, "calib": torch.utils.data.Subset(ds, range(16)), "eval": ds}
"""
RECIPE = """
    name: tiny
    model: {factory: "models:tiny", input_shape: [1, 1, 8, 8]}
    data: {factory: "models:data"}
    stages:
      prune: {ratio: 0.5, finetune_epochs: 0, latency_guard: false}
    backends: [onnx-fp32]
    gate: {max_accuracy_drop: 100}
    search:
      space: {prune.ratio: [0, 0.25, 0.5]}
      strategy: exhaustive
      confirm_rounds: 0
"""


class InterruptAfter(io.StringIO):
    """A console that presses Ctrl-C when the search reports its ``n``-th candidate."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = n

    def write(self, text: str) -> int:
        if f"] {self.n:>2} " in text:
            raise KeyboardInterrupt
        return super().write(text)


def test_interrupted_search_keeps_its_measurements_and_a_rerun_resumes(write_recipe, tmp_path):
    recipe = write_recipe(RECIPE, {"models.py": MODELS})
    profile = tmp_path / "fast.yaml"
    profile.write_text(yaml.safe_dump({
        "name": "fast", "connection": {"transport": "local"}, "python": "current", "workdir": str(tmp_path / "w"),
        "backends": ["onnx-fp32"], "bench": {"warmup": 2, "min_iterations": 20, "min_seconds": 0.05}}))
    cache, out = tmp_path / "cache", tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        search(recipe, [str(profile)], out, cache=cache, stream=InterruptAfter(2))
    partial = json.loads((out / "search.json").read_text())
    assert partial["status"] == "interrupted"
    assert [c["status"] for c in partial["candidates"]] == ["measured", "measured"]
    assert not (tmp_path / "recipe.fast.yaml").exists() or partial["chosen"]

    [done] = search(recipe, [str(profile)], out, cache=cache, stream=io.StringIO())
    assert done["status"] == "complete"
    assert done["counts"]["exhaustive"] == 3 and len(done["candidates"]) == 3
    assert done["counts"]["from_cache"] == 2 and done["counts"]["measured_now"] == 1
    assert [c["id"] for c in done["candidates"][:2]] == [c["id"] for c in partial["candidates"]]
    assert (tmp_path / "recipe.fast.yaml").is_file()
