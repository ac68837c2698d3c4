"""PTQ and QAT behind one config.

PTQ does not change the model: the backends quantize it themselves from the same calibration data
(``StagesResult.calib``) and the settings here (``export_overrides``). What this stage adds is an honest *simulated*
INT8 accuracy (torchao PT2E fake-quant, u8 activations / s8 weights like ORT QDQ and OpenVINO), so the summary shows
what quantization costs before any backend runs.

QAT fake-quantizes the model with torchao PT2E (``prepare_qat_pt2e``), fine-tunes it (KD from the teacher when there
is one), and hands back (a) the trained float weights, BN folded-in statistics included, loaded into a normal
``nn.Module`` so every exporter still works unchanged, and (b) the learned quantization parameters as JSON data
(``qat_ranges``): per activation observer its min/max/scale/zero point and the module it follows. The exporters
re-calibrate on the QAT weights; ``qat_recalibrated_accuracy`` in the record measures exactly that hand-off.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from typing import Any, Literal

import torch
from pydantic import Field
from torch import nn

from pipeline.stages.train import TrainOverride, TrainSettings
from targets.schema import StrictModel


class QuantConfig(StrictModel):
    mode: Literal["ptq", "qat"] = "ptq"
    calib_samples: int = Field(default=256, ge=1)
    calibration: Literal["minmax", "percentile", "entropy"] = "minmax"
    per_channel: bool = True
    # module paths left in float, and op types as "op:<ONNX op type>" (e.g. "op:Add", "op:Where"), which every INT8
    # exporter keeps in float; transformer-shaped graphs keep mask/residual arithmetic in float by default
    keep_float: list[str] = Field(default_factory=list)
    bias_correction: Literal["fast", "full", "none"] = "fast"      # openvino-int8 (NNCF) only; see ExportConfig
    # openvino-int8 (NNCF) only: "performance" = symmetric activations, "mixed" = asymmetric activations (suits SiLU
    # nets, whose activations reach down to -0.28 only: a symmetric range wastes half its codes); ExportConfig.ov_preset
    ov_preset: Literal["performance", "mixed"] = "performance"
    # how each INT8 exporter quantizes (ExportConfig.int8_scheme): "auto" picks by model family and backend --
    # static for convolutional nets; for attention onnx dynamic, openvino smoothquant, tflite static
    int8_scheme: Literal["auto", "static", "dynamic", "smoothquant", "weight_only"] = "auto"
    epochs: int = Field(default=2, ge=0)                           # qat only
    lr: float = Field(default=1e-4, gt=0)                          # qat only
    batch_size: int = Field(default=64, ge=1)
    seed: int = 0
    temperature: float = Field(default=4.0, gt=0)                  # qat: KD from the teacher
    alpha: float = Field(default=0.5, ge=0, le=1)
    bn_train: bool = False                                         # qat: False keeps BN on running statistics
    simulate: bool = True                                          # measure fake-quant accuracy in the stage record
    # Accuracy-aware mixed precision (targets/mixed_precision.py), per INT8 backend in its own runtime: revert the
    # most sensitive layer groups to float, greedily (neighbours first), until the metric is within max_drop of FP32.
    auto_keep_float: bool = False
    max_drop: float = Field(default=1.0, ge=0)                     # points below the FP32 parent (auto_keep_float)
    sensitivity_samples: int = Field(default=300, ge=16)           # eval inputs the search measures on
    max_groups: int = Field(default=12, ge=1)                      # layer groups ranked by sensitivity
    train: TrainOverride | None = None                             # qat: device/workers/... (always fp32, no AMP)
    allow_gate_miss: bool = False    # go on (loud warning) when this stage's metric falls past the gate

    def export_overrides(self) -> dict[str, Any]:
        """The ExportConfig fields (targets/export_config.py) this stage decides for every INT8 exporter."""
        return {"calibration": self.calibration, "calib_samples": self.calib_samples, "per_channel": self.per_channel,
                "keep_float": [k for k in self.keep_float if not k.startswith("op:")],
                # None (not []) when no op is named: the exporters then apply their transformer default
                "keep_float_ops": [k[3:] for k in self.keep_float if k.startswith("op:")] or None,
                # QAT weights: NNCF re-quantization loses what QAT learned; OpenVINO reads the QDQ ONNX instead
                "ov_int8_from": "onnx-qdq" if self.mode == "qat" else "model",
                "ov_bias_correction": self.bias_correction, "ov_preset": self.ov_preset,
                # QAT learned static scales: "auto" keeps them (static QDQ, which openvino-int8 then reads)
                "int8_scheme": "static" if self.mode == "qat" and self.int8_scheme == "auto" else self.int8_scheme}

    def mixed_precision(self) -> dict[str, Any] | None:
        """targets.mixed_precision.MixedPrecisionConfig fields, or None when auto_keep_float is off."""
        if not self.auto_keep_float:
            return None
        return {"max_drop": self.max_drop, "samples": self.sensitivity_samples, "max_groups": self.max_groups}


# ------------------------------------------------------------------------------------------------ PT2E helpers
def _quantizer(cfg: QuantConfig, is_qat: bool, model: nn.Module) -> Any:
    from torchao.quantization.pt2e import (
        FusedMovingAvgObsFakeQuantize,
        HistogramObserver,
        MinMaxObserver,
        MovingAverageMinMaxObserver,
    )
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
        X86InductorQuantizer,
        get_default_x86_inductor_quantization_config,
    )

    qc = get_default_x86_inductor_quantization_config(is_qat=is_qat)
    if not is_qat:
        obs = MinMaxObserver if cfg.calibration == "minmax" else HistogramObserver
        act = dataclasses.replace(qc.input_activation, observer_or_fake_quant_ctr=obs.with_args(eps=2**-12))
        qc = dataclasses.replace(qc, input_activation=act, output_activation=act)
    if not cfg.per_channel:
        ctr = (FusedMovingAvgObsFakeQuantize.with_args(observer=MovingAverageMinMaxObserver, eps=2**-12) if is_qat
               else MinMaxObserver.with_args(eps=2**-12))
        w = dataclasses.replace(qc.weight, qscheme=torch.per_tensor_symmetric, ch_axis=None,
                                observer_or_fake_quant_ctr=ctr)
        qc = dataclasses.replace(qc, weight=w)
    q = X86InductorQuantizer().set_global(qc)
    names = dict(model.named_modules())
    for name in (k for k in cfg.keep_float if not k.startswith("op:")):  # op types: the exporters' business
        if name not in names:
            from targets.errors import ConfigError

            raise ConfigError(f"stages.quantize.keep_float: no module named {name!r} in the model",
                              hint=f"use names from model.named_modules(), e.g. {list(names)[1:5]}")
        q.set_module_name_qconfig(name, None)
    return q


def _tuple(x: torch.Tensor | tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    return x if isinstance(x, tuple) else (x,)


def _export(model: nn.Module, example_inputs: torch.Tensor | tuple[torch.Tensor, ...],
            dynamic: bool = True) -> torch.fx.GraphModule:
    """Export with a dynamic batch dimension (shared by every input), so calibration, training and evaluation run
    in batches."""
    xs = tuple(t[:1].expand(2, *t.shape[1:]).contiguous() for t in _tuple(example_inputs))
    batch = torch.export.Dim("batch", min=1, max=65536)
    shapes = tuple({0: batch} for _ in xs) if dynamic else None
    return torch.export.export(copy.deepcopy(model).eval(), xs, dynamic_shapes=shapes).module()


def _calibrate(gm: Any, calib: torch.Tensor | tuple[torch.Tensor, ...], batch_size: int = 64) -> None:
    inputs = _tuple(calib)
    with torch.no_grad():
        for i in range(0, len(inputs[0]), batch_size):
            gm(*(t[i:i + batch_size] for t in inputs))


def ptq_simulated(model: nn.Module, example_inputs: torch.Tensor | tuple[torch.Tensor, ...],
                  calib: torch.Tensor | tuple[torch.Tensor, ...], cfg: QuantConfig) -> Any:
    """Calibrated fake-quant copy of ``model`` (a converted PT2E graph: Q/DQ around every quantized op)."""
    from torchao.quantization.pt2e import allow_exported_model_train_eval
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    prepared = prepare_pt2e(_export(model, example_inputs), _quantizer(cfg, False, model))
    _calibrate(prepared, calib)
    return allow_exported_model_train_eval(convert_pt2e(prepared))


def learned_ranges(prepared: Any) -> list[dict[str, Any]]:
    """Every activation fake-quantizer's learned range, named by the op and module whose output it quantizes."""
    out = []
    for node in prepared.graph.nodes:
        if node.op != "call_module" or not node.target.startswith("activation_post_process_"):
            continue
        src = node.args[0]
        if any(len(u.args) > 1 and u.args[1] is node for u in node.users):
            continue  # a weight fake-quantizer: its scales follow from the weights the model already carries
        fq = getattr(prepared, node.target)
        obs = getattr(fq, "activation_post_process", fq)
        stack = (getattr(src, "meta", {}) or {}).get("nn_module_stack") or {}
        module = list(stack.values())[-1][0] if stack else ""
        out.append({"quantizer": node.target, "after": getattr(src, "name", str(src)), "module": module,
                    "min": float(obs.min_val), "max": float(obs.max_val),
                    "scale": float(fq.scale.flatten()[0]), "zero_point": int(fq.zero_point.flatten()[0]),
                    "dtype": str(getattr(fq, "dtype", "torch.uint8"))})
    return out


def qat(model: nn.Module, example_inputs: torch.Tensor | tuple[torch.Tensor, ...], data: dict[str, Any],
        calib: torch.Tensor | tuple[torch.Tensor, ...], cfg: QuantConfig, teacher: nn.Module | None = None,
        objective: Any = None, settings: TrainSettings | None = None,
        log: Callable[[str], None] | None = None) -> tuple[nn.Module, Any, list[dict[str, Any]]]:
    """Fake-quantize, fine-tune, and return (float model with QAT weights, frozen fake-quant graph, ranges).

    The fake-quant graph (observers frozen, BN in eval) is the simulated-INT8 model; ``convert_pt2e`` is not run
    because its conv-BN folding re-traces ~130 patterns (tens of seconds) and gives the same numbers.
    """
    from torchao.quantization.pt2e import allow_exported_model_train_eval, disable_observer
    from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e

    from pipeline.stages.common import train

    prepared = allow_exported_model_train_eval(prepare_qat_pt2e(_export(model, example_inputs),
                                                                 _quantizer(cfg, True, model)))
    prepared.eval()
    _calibrate(prepared, calib)   # initialise the ranges from calibration data before the first gradient step
    if settings is not None and settings.amp != "none":   # fake-quant scales and rounding need float32
        settings = dataclasses.replace(settings, amp="none")
    train(prepared, data["train"], epochs=cfg.epochs, lr=cfg.lr, batch_size=cfg.batch_size, seed=cfg.seed,
          teacher=teacher, temperature=cfg.temperature, alpha=cfg.alpha if teacher is not None else 0.0,
          weight_decay=0.0, train_mode=cfg.bn_train, objective=objective, settings=settings, name="qat", log=log)
    prepared.apply(disable_observer)
    prepared.eval()
    ranges = learned_ranges(prepared)
    trained = copy.deepcopy(model)
    own = trained.state_dict()
    state = {k: v for k, v in prepared.state_dict().items() if k in own}
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    if missing:
        raise RuntimeError(f"QAT: could not map trained weights back to the model: {missing[:5]}")
    trained.load_state_dict(state, strict=False)
    return trained.eval(), prepared, ranges

