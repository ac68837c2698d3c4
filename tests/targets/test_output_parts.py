"""The runner returns outputs in bounded parts (issue 21: a 95.3 MiB output set failed every bench after a full
evaluation, over a 64 MiB limit), the host fetches and reads them part by part, and a limit that is truly hit is
found on the host before any stage or export."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

from pipeline.phases.measure import read_outputs
from targets.device import _fetch_outputs
from targets.errors import ConfigError
from targets.runner import bench
from targets.transport import LocalTransport
from tests.conftest import ROOT


def _outputs(n: int = 50) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.standard_normal((n, 64)).astype(np.float32), rng.integers(0, 9, (n, 3, 2)).astype(np.int64)]


def test_outputs_are_written_in_bounded_parts_and_read_back_whole(tmp_path: Path) -> None:
    outs = _outputs()
    per_sample = 64 * 4 + 6 * 8
    raw, parts = bench.write_outputs(str(tmp_path / "o.npz"), outs, max_bytes=1 << 20, part_bytes=10 * per_sample)
    assert (raw, parts) == (50 * per_sample, 5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o-1.npz", "o-2.npz", "o-3.npz", "o-4.npz", "o.npz"]
    with np.load(tmp_path / "o-4.npz") as last:
        assert last["out0"].shape == (10, 64)                  # whole samples per part, none larger than asked
    back = read_outputs(tmp_path / "o.npz")
    for got, want in zip(back, outs, strict=True):
        np.testing.assert_array_equal(got, want)


def test_fetch_brings_every_part_over_the_transport(tmp_path: Path) -> None:
    job = tmp_path / "job"
    job.mkdir()
    outs = _outputs(30)
    _, parts = bench.write_outputs(str(job / "outputs.npz"), outs, 1 << 20, part_bytes=1000)
    assert parts > 1
    dest = tmp_path / "host" / "outputs" / "onnx-fp32.npz"
    _fetch_outputs(LocalTransport(), str(job), dest, parts, "the board")
    assert not list(dest.parent.glob("*.part"))
    np.testing.assert_array_equal(read_outputs(dest)[0], outs[0])


def test_a_single_part_file_from_an_older_runner_still_reads(tmp_path: Path) -> None:
    outs = _outputs(4)
    np.savez_compressed(tmp_path / "old.npz", out0=outs[0], out1=outs[1])
    np.testing.assert_array_equal(read_outputs(tmp_path / "old.npz")[1], outs[1])


def test_outputs_over_the_runners_limit_are_refused_on_the_host_before_any_work(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.phases import prepare
    from pipeline.recipe.config import load_recipe
    from pipeline.ui.progress import Progress

    recipe = load_recipe(str(ROOT / "tests" / "fixtures" / "seq_digits" / "recipe.yaml"))
    monkeypatch.setattr(bench, "MAX_OUTPUT_MB", 0.1)         # 300 samples x 160 bytes = 0.05 MiB fits ...
    prepare.load(recipe, Progress(stream=io.StringIO()))
    monkeypatch.setattr(bench, "MAX_OUTPUT_MB", 0.01)        # ... 0.01 MiB does not
    with pytest.raises(ConfigError) as info:
        prepare.load(recipe, Progress(stream=io.StringIO()))
    text = str(info.value)
    assert "data.eval_samples: the outputs of 300 eval samples are 0.0 MiB (160 bytes each)" in text
    assert text.endswith("set data.eval_samples to at most 65")
