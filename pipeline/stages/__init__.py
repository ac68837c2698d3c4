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
    train: Any = None                                      # pipeline.stages.train.TrainConfig (None = defaults)


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


def _loud(log: Callable[[str], None]) -> Callable[[str], None]:
    """Stage lines belong on the console, not only in run.log: use the logger's ``say``/``warn`` when it has them."""
    def emit(message: str) -> None:
        if message.startswith("WARNING: ") and callable(getattr(log, "warn", None)):
            log.warn(message[len("WARNING: "):])  # type: ignore[attr-defined]
        elif callable(getattr(log, "say", None)):
            log.say(message)  # type: ignore[attr-defined]
        else:
            log(message)
    return emit


def _simulated(prefix: str, scored: dict[str, Any]) -> dict[str, Any]:
    """``<prefix>_accuracy`` for classification (as before), ``<prefix>_metric`` (the task metric's value) always."""
    out = {f"{prefix}_metric": (scored.get("metric") or {}).get("value")}
    if scored.get("accuracy") is not None:
        out[f"{prefix}_accuracy"] = scored["accuracy"]
    return out


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
        if ranges is not None and not isinstance(ranges, dict):
            raise ValueError("qat_ranges.json is not a mapping")
    except Exception as exc:  # noqa: BLE001 - any unreadable entry is recomputed; the stage is the source of truth
        why = (str(exc).strip().splitlines() or [""])[0][:160]
        log(f"WARNING: stage {name}: cached entry {hit} is unreadable ({type(exc).__name__}: {why}); discarded, "
            "running the stage again")
        shutil.rmtree(hit, ignore_errors=True)
        return None
    record.update(cached=True, original_seconds=record["seconds"], seconds=round(time.perf_counter() - start, 2))
    return out, record, ranges


def run_stages(model: nn.Module, data: dict[str, Any], plan: StagePlan, run_dir: Path,
               log: Callable[[str], None]) -> StagesResult:
    """Run the configured stages on ``model`` (the teacher), each cached by the hash of its inputs.

    ``plan.train`` is the recipe's ``train:`` section (TrainConfig): where and how the stages train. Under torchrun
    every rank runs this together; rank 0 alone reads and writes the cache and hands cached models to the others.
    """
    log = _loud(log)
    from pipeline import distributed
    from pipeline.stages.cache import StageCache, data_fingerprint, model_hash, restore_model, stage_key
    from pipeline.stages.common import Objective, example_from, footprint, seed_everything
    from pipeline.stages.train import settings_for

    main = distributed.is_main()
    train = plan.train

    teacher = model.eval()
    names = plan.input_names
    example = plan.example or example_from(data["calib"], names)
    objective = plan.objective or Objective("logits", names)
    evaluate = plan.evaluate or _top1_evaluator(data["eval"], names)
    calib_n = plan.quantize.calib_samples if plan.quantize else 256
    calib = calibration_inputs(data["calib"], calib_n, names)
    result = StagesResult(model=teacher, teacher=teacher, calib=calib)
    if plan.distill is None and plan.prune is None and plan.quantize is None:
        return result
    data_fp = data_fingerprint(data)
    current, parent_hash = teacher, model_hash(teacher)
    task_key = {"objective": objective.kind, "output_loss": objective.output_loss,
                "weights": objective.output_weights}

    def run_one(name: str, cfg: Any, compute: Callable[[], tuple[nn.Module, dict[str, Any], dict[str, Any]]],
                base: Callable[[], nn.Module], extra_key: dict[str, Any] | None = None) -> None:
        nonlocal current, parent_hash
        cache = StageCache(run_dir, name)
        # the device and the loader's workers are not part of the key: a stage trained on a GPU is reused on a CPU
        key_extra = {**(extra_key or {}), **({"task": task_key} if objective.kind != "logits" else {}),
                     "train": settings_for(train, cfg).cache_fields()}
        key = stage_key(name, parent_hash, cfg.model_dump(mode="json", exclude={"train"}), data_fp, key_extra)
        hit = cache.lookup(key) if main else None
        cached = _read_entry(hit, base, log, name) if hit is not None else None
        hit = hit if cached is not None else None   # a malformed entry was discarded: the stage runs again
        if distributed.world_size() > 1:   # rank 0's cache decides; the others get the cached model from it
            shared = distributed.broadcast_object(
                (hit is not None, torch.load(hit / "model.pt", weights_only=True) if hit is not None else None))
            if not main and shared[0]:
                out = restore_model(base(), shared[1])
                result.records.append({"name": name, "cached": True})
                current, parent_hash = out.eval(), model_hash(out)
                return
        if cached is not None:
            out, record, ranges = cached
            if ranges is not None:
                result.qat_ranges = ranges
            log(f"stage {name}: cached ({hit}) - {_describe(record, plan.metric_label)}")
        else:
            log(f"stage {name}: running ...")
            start = time.perf_counter()
            out, extra, files = compute()
            if not main:   # rank 0 measures, records and caches; this rank only carries the model on
                result.records.append({"name": name, "cached": False})
                current, parent_hash = out.eval(), model_hash(out)
                return
            params, macs = footprint(out, example)
            record = {"name": name, **evaluate(out), "params": params, "macs": macs,
                      "seconds": 0.0, "key": key, **extra}
            record["seconds"] = round(time.perf_counter() - start, 2)
            cache.store(key, out, record, files)
            record["cached"] = False
            if "qat_ranges.json" in files:
                result.qat_ranges = files["qat_ranges.json"]
            log(f"stage {name}: ran in {record['seconds']:.1f}s - {_describe(record, plan.metric_label)}")
        for warning in record.get("warnings", []) if record.get("cached") else []:
            log(f"WARNING: {name}: {warning}")
        result.records.append(record)
        current, parent_hash = out.eval(), model_hash(out)

    if plan.distill is not None:
        from pipeline.stages.distill import distill, make_student

        dcfg = plan.distill
        factory = plan.student_factory

        def do_distill() -> tuple[nn.Module, dict[str, Any], dict[str, Any]]:
            seed_everything(dcfg.seed)   # the student's initial weights are part of what the seed fixes
            student = make_student(teacher, example, dcfg, factory)
            return distill(teacher, student, data, dcfg, example, settings_for(train, dcfg), log,
                           objective=objective), {}, {}

        run_one("distill", dcfg, do_distill, base=lambda: factory() if factory else copy.deepcopy(teacher),
                extra_key={"student_code": _factory_fingerprint(factory) if factory else None})

    if plan.prune is not None:
        from pipeline.stages.prune import prune

        pcfg = plan.prune
        parent = current

        def do_prune() -> tuple[nn.Module, dict[str, Any], dict[str, Any]]:
            pruned, extra = prune(parent, example, data, pcfg, teacher=teacher, log=log, objective=objective,
                                  timing=plan.timing, settings=settings_for(train, pcfg))
            return pruned, extra, {}

        run_one("prune", pcfg, do_prune, base=lambda: copy.deepcopy(parent),
                extra_key={"teacher": model_hash(teacher)})

    if plan.quantize is not None:
        from pipeline.stages.quantize import ptq_simulated, qat

        qcfg = plan.quantize
        parent = current
        calib_t = tuple(torch.from_numpy(calib[n]) for n in names)

        def do_quantize() -> tuple[nn.Module, dict[str, Any], dict[str, Any]]:
            extra: dict[str, Any] = {"mode": qcfg.mode,
                                     "simulated_with": "torchao PT2E X86InductorQuantizer (u8 activations, s8 weights)"}
            files: dict[str, Any] = {}
            if main and (qcfg.simulate or qcfg.mode == "ptq"):   # measurements: rank 0 records them
                extra.update(_simulated("ptq_simulated", evaluate(ptq_simulated(parent, example, calib_t, qcfg))))
            out = copy.deepcopy(parent)
            if qcfg.mode == "qat":
                out, converted, ranges = qat(parent, example, data, calib_t, qcfg, teacher=teacher,
                                             objective=objective, settings=settings_for(train, qcfg), log=log)
                if main:
                    extra.update(_simulated("qat_simulated", evaluate(converted)))
                    # what the exporters will do with the QAT weights: calibrate them afresh on the same data
                    extra.update(_simulated("qat_recalibrated", evaluate(ptq_simulated(out, example, calib_t, qcfg))))
                files["qat_ranges.json"] = ranges
            return out, extra, files

        run_one("quantize", qcfg, do_quantize, base=lambda: copy.deepcopy(parent),
                extra_key={"teacher": model_hash(teacher) if qcfg.mode == "qat" else None})
        result.export_overrides = qcfg.export_overrides()

    result.model = current
    return result


def _top1_evaluator(dataset: Any, names: list[str]) -> Callable[[Any], dict[str, Any]]:
    """Without a task metric handed in: top-1 on the eval split (the classifier default)."""
    from pipeline.stages.common import accuracy

    def evaluate(model: Any) -> dict[str, Any]:
        acc = accuracy(model, dataset, input_names=names)
        return {"accuracy": acc, "metric": {"name": "top1", "value": acc, "higher_is_better": True,
                                            "unit": "fraction"}}
    return evaluate
