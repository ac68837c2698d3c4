"""Accuracy-aware mixed precision (targets/mixed_precision.py): groups, ranking in the backend's runtime, the search."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from targets.errors import ExportError
from targets.export_config import ExportConfig
from targets.mixed_precision import MixedPrecisionConfig, _revert_until_met, layer_groups, search, top1_scorer
from tests.fixtures.se_digits.models import SEDepthConcat
from tests.targets._models import blobs, example, reference, tiny_cnn, with_outlier_channel


def test_layer_groups_cover_every_weighted_layer_within_the_budget() -> None:
    model = SEDepthConcat()
    groups = layer_groups(model, 12)
    assert len(groups) <= 12 and groups[0] == "stem" and groups[-1] == "fc"
    covered = {name for name, m in model.named_modules() if hasattr(m, "weight") and m.weight is not None
               and m.weight.dim() > 1}
    assert all(any(n == g or n.startswith(g + ".") for g in groups) for n in covered)
    assert not any(a != b and b.startswith(a + ".") for a in groups for b in groups)   # no group inside another
    assert layer_groups(model, 1) == ["stem", "block1", "block2", "branches", "block3", "block4", "fc"]


def test_top1_scorer_uses_labels_else_agreement_with_the_parent() -> None:
    ref = np.eye(4, dtype=np.float32)
    name, fn = top1_scorer([ref], np.array([0, 1, 2, 0]))
    assert name == "top1" and fn([ref]) == 75.0
    name, fn = top1_scorer([ref])
    assert name == "top1_agreement" and fn([ref]) == 100.0 and fn([ref[::-1].copy()]) == 0.0


def test_search_says_so_when_no_number_of_float_groups_meets_the_limit() -> None:
    class Trial:
        count = 0

        def __call__(self, keep: list[str]) -> float:
            self.count += 1
            return 90.0 + len(keep)   # every group helps a little, never enough

    ranking = [{"group": g, "score": 91.0, "gain": 1.0} for g in ("a", "b", "c")]
    msg = r"no number of float layer groups meets max_drop 1: .*\(3 of 3 groups float: a, b, c\) still drops 6.00"
    with pytest.raises(ExportError, match=msg):
        _revert_until_met(Trial(), ranking, ["a", "b", "c"], 90.0, 99.0, MixedPrecisionConfig(max_drop=1.0), "top1",
                          "onnx-int8", lambda _: None)


def test_search_finds_a_pair_that_only_helps_together_within_its_try_budget() -> None:
    """An outlier between ``stem`` and ``block1``: either alone gains nothing, both float recover it. Walking the
    ranking one group at a time would add the noise-ranked ``fc`` and ``block3`` first; the neighbour step finds the
    pair."""
    order = ["stem", "block1", "block2", "block3", "fc"]

    class Trial:
        count = 0
        tried: list[list[str]] = []

        def __call__(self, keep: list[str]) -> float:
            self.count += 1
            self.tried.append(list(keep))
            return 99.0 if {"stem", "block1"} <= set(keep) else 90.0 + 0.1 * len(keep)

    ranking = [{"group": g, "score": s, "gain": s - 90.0}
               for g, s in (("block1", 90.2), ("fc", 90.1), ("block3", 90.05), ("stem", 90.0), ("block2", 90.0))]
    trial = Trial()
    trial.count = len(ranking) + 1
    chosen = _revert_until_met(trial, ranking, order, 90.0, 99.0, MixedPrecisionConfig(max_drop=1.0), "top1",
                               "onnx-int8", lambda _: None)
    assert chosen == ["block1", "stem"]
    assert len(trial.tried) <= 3


@pytest.mark.parametrize("family", [pytest.param("onnx", marks=pytest.mark.onnx),
                                    pytest.param("openvino", marks=pytest.mark.openvino),
                                    pytest.param("tflite", marks=pytest.mark.tflite)])
def test_int8_search_reverts_the_sensitive_group_and_records_it(family, tmp_path) -> None:
    """The revert path on every INT8 backend, in its own runtime, with a tiny model (seconds; the SE model end to end
    is tests/pipeline/test_mixed_precision_run.py, opt-in)."""
    from targets import get_exporter, get_simulator

    model = with_outlier_channel(tiny_cnn())
    calib = blobs(64, seed=1)[0]
    x, y = blobs(200, seed=5)
    ref = reference(model, x)
    lines: list[str] = []
    art = search(family, get_exporter(family), model, example(), calib,
                 ExportConfig(name="t", precision="int8", calib_samples=64), tmp_path, x, ref,
                 MixedPrecisionConfig(max_drop=1.0, samples=200), labels=y, log=lines.append,
                 simulate=get_simulator(family))
    mp = art.metadata["mixed_precision"]
    assert mp["fp32_score"] - mp["int8_score"] > 5          # all-INT8 really collapses on the outlier channel
    assert mp["reverted"] and mp["drop"] <= 1.0 and mp["met"] is True
    assert [r["group"] for r in mp["ranking"]][0] in mp["reverted"] or len(mp["reverted"]) > 1
    assert art.backend == family and Path(art.path).parent == tmp_path
    assert set(mp["reverted"]) <= set(art.metadata["keep_float"])
    assert any("sensitivity" in ln for ln in lines) and any("kept in float" in ln for ln in lines)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".mixed-")]   # trials cleaned up


@pytest.mark.onnx
def test_int8_search_creates_its_output_folder_when_it_does_not_exist_yet(tmp_path) -> None:
    """A fresh ``--out``: the run's artifacts/ does not exist when the first INT8 search starts (issue 22: the detector
    example died with FileNotFoundError on .mixed-XXXX after 40 epochs)."""
    from targets import get_exporter

    model = tiny_cnn()
    x, y = blobs(64, seed=5)
    out = tmp_path / "run" / "artifacts"
    art = search("onnx", get_exporter("onnx"), model, example(), blobs(32, seed=1)[0],
                 ExportConfig(name="t", precision="int8", calib_samples=32), out, x, reference(model, x),
                 MixedPrecisionConfig(max_drop=100.0, samples=64), labels=y, log=lambda _: None)
    assert Path(art.path).parent == out and Path(art.path).is_file()
    assert not [p for p in out.iterdir() if p.name.startswith(".mixed-")]
