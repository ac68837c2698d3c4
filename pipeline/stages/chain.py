"""The compression stages, run in the fixed order distill -> prune -> quantize; each may be left out.

``run_stages`` is the one entry the orchestrator calls; it returns the final model plus one record per stage for
``summary.json``. Every stage is cached in ``run_dir/stages/<name>/<key>/`` (see ``cache.py``), so changing a later
stage re-uses the earlier ones and an interrupted run resumes after the last finished stage.
"""

from __future__ import annotations

import copy
import hashlib
import inspect
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn


@dataclass
class StagesResult:
    model: nn.Module                       # what the exporters convert
    teacher: nn.Module                     # the recipe's original model
    calib: dict[str, np.ndarray]           # calibration inputs by input name, handed to every INT8 exporter
    records: list[dict[str, Any]] = field(default_factory=list)   # summary.json "stages"
    export_overrides: dict[str, Any] = field(default_factory=dict)  # extra ExportConfig fields (e.g. from QAT)
    qat_ranges: list[dict[str, Any]] | None = None  # QAT's learned activation ranges (also qat_ranges.json)


@dataclass
class StagePlan:
    """Everything the stages need, resolved by the orchestrator (no recipe in here): the stage configs, the
    student factory, an example batch-of-one from the data, the task's loss, how to score a model, and the timing
    function of the prune latency guard."""

    distill: Any = None
    prune: Any = None
    quantize: Any = None
    example: tuple[torch.Tensor, ...] = ()
    input_names: list[str] = field(default_factory=lambda: ["input"])
    objective: Any = None                                  # pipeline.stages.common.Objective
    evaluate: Callable[[Any], dict[str, Any]] | None = None  # model -> {"accuracy"?, "metric": {...}}
    student_factory: Callable[[], nn.Module] | None = None
    timing: Callable[..., dict[str, Any]] | None = None
    metric_label: str = "top-1"
    metric_key: dict[str, Any] | None = None               # the task metric's identity: a stage record holds its score
    train: Any = None                                      # pipeline.stages.train.TrainConfig (None = defaults)
    # the original model's metric record and the gate's allowed drop: a stage that falls past it stops the run at
    # once (GateError) instead of after every export; None = no check (``edgepipe search`` judges candidates itself)
    baseline_metric: dict[str, Any] | None = None
    max_metric_drop: float | None = None
    scale: float = 1.0                                      # recipe.scale: a shortened run goes on past the gate


def calibration_inputs(dataset: Any, n: int, names: list[str]) -> dict[str, np.ndarray]:
    """The first ``n`` calibration items as one array per input name (the dtype the data has)."""
    from pipeline.stages.common import as_args

    items = [as_args(dataset[i][0], names) for i in range(min(n, len(dataset)))]
    return {name: torch.stack([it[k] for it in items]).numpy() for k, name in enumerate(names)}


def _factory_fingerprint(factory: Callable[..., Any]) -> str:
    """The student's code is an input of the distill stage: a changed architecture must not hit the cache."""
    try:
        return hashlib.sha256(Path(inspect.getsourcefile(factory) or "").read_bytes()).hexdigest()
    except (OSError, TypeError):
        return getattr(factory, "__qualname__", repr(factory))


def _describe(rec: dict[str, Any], label: str = "top-1") -> str:
    metric = rec.get("metric") or {}
    if "accuracy" in rec and rec["accuracy"] is not None:
        head = f"{label} {rec['accuracy'] * 100:.2f}%"
    else:
        head = f"{label} {metric.get('value', float('nan')):.4g}"
    return (f"{head}, {rec['params'] / 1e3:.1f}k params, {rec['macs'] / 1e6:.2f}M MACs"
            + "".join(f", {k.replace('_accuracy', '')} {rec[k] * 100:.2f}%" for k in rec
                      if k.endswith("_accuracy") and rec[k] is not None)
            + "".join(f", {k.replace('_metric', '')} {rec[k]:.4g}" for k in rec
                      if k.endswith("_simulated_metric") and rec[k] is not None
                      and rec.get(k.replace("_metric", "_accuracy")) is None))


def _read_entry(hit: Path, base: Callable[[], nn.Module], log: Callable[[str], None],
                name: str) -> tuple[nn.Module, dict[str, Any], Any] | None:
    """A cached stage (model, record, QAT ranges), or None when the entry is malformed (a truncated model.pt, a
    record edited by hand, a file from another version): it is then discarded with one warning and the stage runs
    again, never a traceback from deep inside torch.load."""
    from pipeline.stages.cache import load_model

    start = time.perf_counter()
    try:
        out = load_model(base(), hit / "model.pt")
        record = json.loads((hit / "record.json").read_text())
        if not isinstance(record, dict) or not isinstance(record.get("seconds"), (int, float)) \
                or not isinstance(record.get("params"), int) or not isinstance(record.get("macs"), int):
            raise ValueError("record.json lacks its figures")
        ranges_file = hit / "qat_ranges.json"
        ranges = json.loads(ranges_file.read_text()) if ranges_file.is_file() else None
        if ranges is not None and not (isinstance(ranges, list) and all(isinstance(r, dict) for r in ranges)):
            raise ValueError("qat_ranges.json is not a list of ranges")
    except Exception as exc:  # noqa: BLE001 - any unreadable entry is recomputed; the stage is the source of truth
        why = (str(exc).strip().splitlines() or [""])[0][:160]
        log(f"WARNING: stage {name}: cached entry {hit} is unreadable ({type(exc).__name__}: {why}); discarded, "
            "running the stage again")
        shutil.rmtree(hit, ignore_errors=True)
        return None
    record.update(cached=True, original_seconds=record["seconds"], seconds=round(time.perf_counter() - start, 2))
    return out, record, ranges


def _loud(log: Callable[[str], None]) -> Callable[[str], None]:
    """Stage lines belong on the console, not only in run.log: use the logger's ``say``/``warn`` when it has them."""
    def emit(message: str) -> None:
        if message.startswith("WARNING: ") and callable(getattr(log, "warn", None)):
            log.warn(message[len("WARNING: "):])  # type: ignore[attr-defined]
        elif callable(getattr(log, "say", None)):
            log.say(message)  # type: ignore[attr-defined]
        else:
            log(message)
    emit.bar = getattr(log, "bar", None)  # type: ignore[attr-defined]  # training's live bar (pipeline/stages/train)
    return emit


def _simulated(prefix: str, scored: dict[str, Any]) -> dict[str, Any]:
    """``<prefix>_accuracy`` for classification (as before), ``<prefix>_metric`` (the task metric's value) always."""
    out = {f"{prefix}_metric": (scored.get("metric") or {}).get("value")}
    if scored.get("accuracy") is not None:
        out[f"{prefix}_accuracy"] = scored["accuracy"]
    return out


class _Chain:
    """The state the stages hand on: the current model and its hash, and the result being built. ``step`` is the one
    cached-step loop every stage runs through (cache lookup, compute, record, cache store, log)."""

    def __init__(self, model: nn.Module, data: dict[str, Any], plan: StagePlan, run_dir: Path,
                 log: Callable[[str], None]) -> None:
        from pipeline.stages import distributed
        from pipeline.stages.cache import data_fingerprint, model_hash
        from pipeline.stages.common import Objective, example_from

        self.plan, self.data, self.run_dir, self.log = plan, data, run_dir, _loud(log)
        self.main = distributed.is_main()
        self.teacher = model.eval()
        self.names = plan.input_names
        self.example = plan.example or example_from(data["calib"], self.names)
        self.objective = plan.objective or Objective("logits", self.names)
        self.evaluate = plan.evaluate or _top1_evaluator(data["eval"], self.names)
        calib_n = plan.quantize.calib_samples if plan.quantize else 256
        self.calib = calibration_inputs(data["calib"], calib_n, self.names)
        self.result = StagesResult(model=self.teacher, teacher=self.teacher, calib=self.calib)
        self.current, self.parent_hash = self.teacher, model_hash(self.teacher)
        self.data_fp = data_fingerprint(data) if (plan.distill or plan.prune or plan.quantize) else ""
        self.task_key = {"objective": self.objective.kind, "output_loss": self.objective.output_loss,
                         "weights": self.objective.output_weights}

    def settings(self, cfg: Any) -> Any:
        from pipeline.stages.train import settings_for

        return settings_for(self.plan.train, cfg)

    def step(self, name: str, cfg: Any, compute: Callable[[], tuple[nn.Module, dict[str, Any], dict[str, Any]]],
             base: Callable[[], nn.Module], extra_key: dict[str, Any] | None = None) -> None:
        from pipeline.stages import distributed
        from pipeline.stages.cache import StageCache, model_hash, restore_model, stage_key
        from pipeline.stages.common import footprint

        cache = StageCache(self.run_dir, name)
        # the device and the loader's workers are not part of the key: a stage trained on a GPU is reused on a CPU
        key_extra = {**(extra_key or {}), **({"task": self.task_key} if self.objective.kind != "logits" else {}),
                     "train": self.settings(cfg).cache_fields(), "metric": self.plan.metric_key}
        key = stage_key(name, self.parent_hash, cfg.model_dump(mode="json", exclude={"train", "allow_gate_miss"}),
                        self.data_fp, key_extra)
        hit = cache.lookup(key) if self.main else None
        cached = _read_entry(hit, base, self.log, name) if hit is not None else None
        hit = hit if cached is not None else None   # a malformed entry was discarded: the stage runs again
        if distributed.world_size() > 1:   # rank 0's cache decides; the others get the cached model from it
            shared = distributed.broadcast_object(
                (hit is not None, torch.load(hit / "model.pt", weights_only=True) if hit is not None else None))
            if not self.main and shared[0]:
                out = restore_model(base(), shared[1])
                self.result.records.append({"name": name, "cached": True})
                self.current, self.parent_hash = out.eval(), model_hash(out)
                return
        label = self.plan.metric_label
        if cached is not None:
            out, record, ranges = cached
            if ranges is not None:
                self.result.qat_ranges = ranges
            self.log(f"stage {name}: cached ({hit}) - {_describe(record, label)}")
        else:
            self.log(f"stage {name}: running ...")
            start = time.perf_counter()
            out, extra, files = compute()
            if not self.main:   # rank 0 measures, records and caches; this rank only carries the model on
                self.result.records.append({"name": name, "cached": False})
                self.current, self.parent_hash = out.eval(), model_hash(out)
                return
            params, macs = footprint(out, self.example)
            record = {"name": name, **self.evaluate(out), "params": params, "macs": macs,
                      "seconds": 0.0, "key": key, **extra}
            record["seconds"] = round(time.perf_counter() - start, 2)
            cache.store(key, out, record, files)
            record["cached"] = False
            if "qat_ranges.json" in files:
                self.result.qat_ranges = files["qat_ranges.json"]
            self.log(f"stage {name}: ran in {record['seconds']:.1f}s - {_describe(record, label)}")
        for warning in record.get("warnings", []) if record.get("cached") else []:
            self.log(f"WARNING: {name}: {warning}")
        self.result.records.append(record)
        self.current, self.parent_hash = out.eval(), model_hash(out)
        self.check_gate(name, cfg, record)

    def check_gate(self, name: str, cfg: Any, record: dict[str, Any]) -> None:
        """A stage whose metric already falls past the gate (in gate units, ``targets/units.py``) stops the run now:
        every artifact made from it would fail the gate after all the exports (issue 21: a pruned detector at mAP 0
        went on to be exported, checked and measured on six backends). ``stages.<name>.allow_gate_miss`` goes on
        with a loud warning (stored in the stage's ``warnings``), and so does a run at ``--scale`` below 1: it exists
        to exercise every stage and backend in less time, and its gate still judges at the end (exit 3)."""
        from targets import units
        from targets.errors import GateError

        base, limit = self.plan.baseline_metric, self.plan.max_metric_drop
        value = (record.get("metric") or {}).get("value")
        if not base or limit is None or not isinstance(value, (int, float)) \
                or not isinstance(base.get("value"), (int, float)):
            return
        drop = units.drop(float(base["value"]), float(value), base, limit)
        if units.within(drop, limit):
            return
        unit = units.unit_word(base, limit)
        side = "below" if base.get("higher_is_better", True) else "worse than"
        what = (f"stage {name}: {self.plan.metric_label} {value:.4g} is {drop:.2f}{unit} {side} the original's "
                f"{base['value']:.4g}, past the gate's max_metric_drop {limit:g}")
        if getattr(cfg, "allow_gate_miss", False) or self.plan.scale < 1.0:
            why = f"stages.{name}.allow_gate_miss" if getattr(cfg, "allow_gate_miss", False) else \
                f"a run at scale {self.plan.scale:g} runs every stage and backend"
            note = f"{what}; going on ({why}), every artifact of it will fail the gate"
            record.setdefault("warnings", []).append(note)
            self.log(f"WARNING: {note}")
            return
        raise GateError(what, hint=f"{_GATE_FIX[name]}, or set stages.{name}.allow_gate_miss: true to go on")


#: What to change when a stage falls past the gate (GateError's hint).
_GATE_FIX = {"distill": "raise stages.distill.epochs or use a wider student",
             "prune": "lower stages.prune.ratio or raise stages.prune.finetune_epochs",
             "quantize": "for QAT raise stages.quantize.epochs or lower its lr"}


def _distill(c: _Chain) -> None:
    from pipeline.stages.distill import distill, make_student
    from pipeline.stages.loading import seed_everything

    dcfg, factory = c.plan.distill, c.plan.student_factory

    def compute() -> tuple[nn.Module, dict[str, Any], dict[str, Any]]:
        seed_everything(dcfg.seed)   # the student's initial weights are part of what the seed fixes
        student = make_student(c.teacher, c.example, dcfg, factory)
        return distill(c.teacher, student, c.data, dcfg, c.example, c.settings(dcfg), c.log,
                       objective=c.objective), {}, {}

    c.step("distill", dcfg, compute, base=lambda: factory() if factory else copy.deepcopy(c.teacher),
           extra_key={"student_code": _factory_fingerprint(factory) if factory else None})


def _prune(c: _Chain) -> None:
    from pipeline.stages.cache import model_hash
    from pipeline.stages.prune import prune

    pcfg, parent = c.plan.prune, c.current

    def compute() -> tuple[nn.Module, dict[str, Any], dict[str, Any]]:
        pruned, extra = prune(parent, c.example, c.data, pcfg, teacher=c.teacher, log=c.log, objective=c.objective,
                              timing=c.plan.timing, settings=c.settings(pcfg))
        return pruned, extra, {}

    c.step("prune", pcfg, compute, base=lambda: copy.deepcopy(parent), extra_key={"teacher": model_hash(c.teacher)})


def _quantize(c: _Chain) -> None:
    from pipeline.stages.cache import model_hash
    from pipeline.stages.quantize import ptq_simulated, qat

    qcfg, parent = c.plan.quantize, c.current
    calib_t = tuple(torch.from_numpy(c.calib[n]) for n in c.names)

    def compute() -> tuple[nn.Module, dict[str, Any], dict[str, Any]]:
        extra: dict[str, Any] = {"mode": qcfg.mode,
                                 "simulated_with": "torchao PT2E X86InductorQuantizer (u8 activations, s8 weights)"}
        files: dict[str, Any] = {}
        if c.main and (qcfg.simulate or qcfg.mode == "ptq"):   # measurements: rank 0 records them
            extra.update(_simulated("ptq_simulated", c.evaluate(ptq_simulated(parent, c.example, calib_t, qcfg))))
        out = copy.deepcopy(parent)
        if qcfg.mode == "qat":
            out, converted, ranges = qat(parent, c.example, c.data, calib_t, qcfg, teacher=c.teacher,
                                         objective=c.objective, settings=c.settings(qcfg), log=c.log)
            if c.main:
                extra.update(_simulated("qat_simulated", c.evaluate(converted)))
                # what the exporters will do with the QAT weights: calibrate them afresh on the same data
                extra.update(_simulated("qat_recalibrated", c.evaluate(ptq_simulated(out, c.example, calib_t, qcfg))))
            files["qat_ranges.json"] = ranges
        return out, extra, files

    c.step("quantize", qcfg, compute, base=lambda: copy.deepcopy(parent),
           extra_key={"teacher": model_hash(c.teacher) if qcfg.mode == "qat" else None})
    c.result.export_overrides = qcfg.export_overrides()


#: The fixed order (DESIGN §1): each stage is one function over the one cached-step loop (``_Chain.step``).
STAGES: tuple[tuple[str, Callable[[_Chain], None]], ...] = (("distill", _distill), ("prune", _prune),
                                                             ("quantize", _quantize))


def run_stages(model: nn.Module, data: dict[str, Any], plan: StagePlan, run_dir: Path,
               log: Callable[[str], None]) -> StagesResult:
    """Run the configured stages on ``model`` (the teacher), each cached by the hash of its inputs.

    ``plan.train`` is the recipe's ``train:`` section (TrainConfig): where and how the stages train. Under torchrun
    every rank runs this together; rank 0 alone reads and writes the cache and hands cached models to the others.
    """
    chain = _Chain(model, data, plan, run_dir, log)
    for name, stage in STAGES:
        if getattr(plan, name) is not None:
            stage(chain)
    chain.result.model = chain.current
    return chain.result


def _top1_evaluator(dataset: Any, names: list[str]) -> Callable[[Any], dict[str, Any]]:
    """Without a task metric handed in: top-1 on the eval split (the classifier default)."""
    from pipeline.stages.common import accuracy

    def evaluate(model: Any) -> dict[str, Any]:
        acc = accuracy(model, dataset, input_names=names)
        return {"accuracy": acc, "metric": {"name": "top1", "value": acc, "higher_is_better": True,
                                            "unit": "fraction"}}
    return evaluate
