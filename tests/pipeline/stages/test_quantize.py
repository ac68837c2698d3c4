from __future__ import annotations

import pytest
import torch

from pipeline.recipe.config import load_recipe
from pipeline.stages.common import accuracy
from pipeline.stages.quantize import QuantConfig, ptq_simulated, qat
from targets.errors import ConfigError
from targets.export_config import ExportConfig

from . import stage_models
from .stage_models import DIGITS_RECIPE


def _calib(digits) -> torch.Tensor:
    return torch.stack([digits["calib"][i][0] for i in range(len(digits["calib"]))])


def test_ptq_simulated_int8_stays_close_to_float(digits, teacher, example) -> None:
    sim = ptq_simulated(teacher, example, _calib(digits), QuantConfig())
    names = {str(n.target) for n in sim.graph.nodes}
    assert any("quantize_per_tensor" in n for n in names)       # really a Q/DQ graph, not the float model
    float_acc = accuracy(teacher, digits["eval"])
    assert abs(accuracy(sim, digits["eval"]) - float_acc) <= 0.05


def test_ptq_keep_float_leaves_named_layer_unquantized(digits, teacher, example) -> None:
    full = ptq_simulated(teacher, example, _calib(digits), QuantConfig())
    kept = ptq_simulated(teacher, example, _calib(digits), QuantConfig(keep_float=["classifier"]))
    count = lambda gm: sum("dequantize" in str(n.target) for n in gm.graph.nodes)  # noqa: E731
    assert count(kept) < count(full)


def test_quantize_keep_float_rejects_unknown_module(digits, teacher, example) -> None:
    with pytest.raises(ConfigError, match="nope"):
        ptq_simulated(teacher, example, _calib(digits), QuantConfig(keep_float=["nope"]))


def test_qat_returns_plain_module_with_trained_weights_and_learned_ranges(digits, teacher, example) -> None:
    cfg = QuantConfig(mode="qat", epochs=1, lr=1e-3, batch_size=32)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    trained, converted, ranges = qat(teacher, example, digits, _calib(digits), cfg, teacher=teacher)
    assert type(trained) is stage_models.TinyCNN
    assert not torch.equal(trained.features[0][0].weight, before["features.0.0.weight"])
    assert all(torch.equal(v, before[k]) for k, v in teacher.state_dict().items())   # parent untouched
    assert len(ranges) >= 4 and all(r["min"] <= r["max"] and r["scale"] > 0 for r in ranges)
    assert {r["module"] for r in ranges} & {"features.0.2", "features.1.2"}
    assert accuracy(converted, digits["eval"]) >= accuracy(teacher, digits["eval"]) - 0.05
    assert trained(example).shape == (1, 10)


def test_quantize_export_overrides_are_export_config_fields() -> None:
    cfg = QuantConfig(calibration="percentile", per_channel=False, keep_float=["classifier"], calib_samples=64,
                      bias_correction="full", ov_preset="mixed")
    export = ExportConfig(precision="int8", **cfg.export_overrides())
    assert (export.calibration, export.per_channel, export.keep_float, export.calib_samples,
            export.ov_bias_correction, export.ov_preset) == ("percentile", False, ["classifier"], 64, "full", "mixed")
    assert ExportConfig(precision="int8", **QuantConfig().export_overrides()).ov_preset == "performance"


@pytest.mark.parametrize("override,path", [("stages.quantize.mode=fp8", "stages.quantize.mode"),
                                           ("stages.quantize.calibration=kl", "stages.quantize.calibration"),
                                           ("stages.quantize.lr=0", "stages.quantize.lr"),
                                           ("stages.quantize.int8_scheme=fast", "stages.quantize.int8_scheme"),
                                           ("stages.quantize.ov_preset=asym", "stages.quantize.ov_preset")])
def test_recipe_rejects_bad_quantize_config_naming_key_path(override: str, path: str) -> None:
    with pytest.raises(ConfigError, match=path.replace(".", r"\.")):
        load_recipe(DIGITS_RECIPE, [override])


def test_run_stages_qat_records_ptq_and_qat_accuracy_and_keeps_ranges_when_cached(digits, teacher, tmp_path) -> None:
    from pipeline.stages.chain import run_stages

    from .stage_models import make_recipe

    recipe = make_recipe({"quantize": {"mode": "qat", "epochs": 1, "lr": 1e-3, "calib_samples": 32,
                                       "batch_size": 32}})
    first = run_stages(teacher, digits, recipe, tmp_path, lambda _m: None)
    (rec,) = first.records
    assert rec["mode"] == "qat" and not rec["cached"]
    for key in ("ptq_simulated_accuracy", "qat_simulated_accuracy", "qat_recalibrated_accuracy"):
        assert 0.5 < rec[key] <= 1.0
    assert first.qat_ranges and (tmp_path / "stages" / "quantize" / rec["key"] / "qat_ranges.json").is_file()
    second = run_stages(teacher, digits, recipe, tmp_path, lambda _m: None)
    assert second.records[0]["cached"] and second.qat_ranges == first.qat_ranges
    assert second.export_overrides == {"calibration": "minmax", "calib_samples": 32, "per_channel": True,
                                       "keep_float": [], "keep_float_ops": None, "ov_int8_from": "onnx-qdq",
                                       "ov_bias_correction": "fast", "ov_preset": "performance",
                                       "int8_scheme": "static"}
